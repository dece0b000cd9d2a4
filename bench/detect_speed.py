"""Detector speed, side by side with its anchor, in one run.

Ours: the shipped ONNX model through `layerfleet.detection` (JPEG decoded in draft mode,
letterboxed). Anchor: the reference network (YOLOv2 / Darknet-19 layout of
shared/reference/obico-detection.md, random weights, speed only) built here as ONNX, fed the
way the reference feeds it (full decode, resize to 416×416, scale to 0–1). Both in ONNX
Runtime on 1 and 2 threads, timing per frame including JPEG decode, for 640×480 and 1280×720.

    python bench/detect_speed.py [--repeats 30] [--model PATH [--second-opinion PATH]]

The shipped detector asks its second opinion only on frames the first network finds suspicious;
the table gives one network's time and both networks' (a suspicious frame's) side by side.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from layerfleet.detection import Detector
from layerfleet.detection.runtime import second_opinion_path, shipped_model_path
from layerfleet.simulator.render import Scene, render_frame

# (filters, kernel) convolutions and "M" max-pools, as the reference lists them.
DARKNET19: list[tuple[int, int] | str] = [
    (32, 3), "M", (64, 3), "M", (128, 3), (64, 1), (128, 3), "M", (256, 3), (128, 1), (256, 3), "M",
    (512, 3), (256, 1), (512, 3), (256, 1), (512, 3), "M",
    (1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3), (1024, 3), (1024, 3),
]


def build_reference(path: Path, seed: int = 0) -> int:
    """Write the reference network to ``path``; returns its multiply-adds per 416×416 frame."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    macs = 0

    def conv(name: str, x: str, cin: int, cout: int, k: int, size: int, activation: bool = True) -> str:
        nonlocal macs
        w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * (2 / (cin * k * k)) ** 0.5)
                                    .astype(np.float32), f"{name}_w")
        b = numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b")  # batch norm folded in
        inits.extend([w, b])
        nodes.append(helper.make_node("Conv", [x, w.name, b.name], [f"{name}_c"], pads=[k // 2] * 4))
        macs += cin * cout * k * k * size * size
        if not activation:
            return f"{name}_c"
        nodes.append(helper.make_node("LeakyRelu", [f"{name}_c"], [name], alpha=0.1))
        return name

    x, channels, size, layer16 = "input", 3, 416, ""
    for index, spec in enumerate(DARKNET19):
        if isinstance(spec, str):  # "M": max-pool
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{index}"], kernel_shape=[2, 2], strides=[2, 2]))
            x, size = f"pool{index}", size // 2
        else:
            filters, kernel = spec
            x = conv(f"conv{index}", x, channels, filters, kernel, size)
            channels = filters
            if index == 16:
                layer16 = x
    passthrough = conv("route", layer16, 512, 64, 1, 26)
    nodes.append(helper.make_node("SpaceToDepth", [passthrough], ["reorg"], blocksize=2))
    nodes.append(helper.make_node("Concat", ["reorg", x], ["concat"], axis=1))
    x = conv("conv_final", "concat", 256 + 1024, 1024, 3, 13)
    conv("region", x, 1024, 30, 1, 13, activation=False)
    graph = helper.make_graph(
        nodes, "reference_yolov2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 416, 416])],
        [helper.make_tensor_value_info("region_c", TensorProto.FLOAT, [1, 30, 13, 13])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return macs


def jpeg(width: int, height: int, seed: int) -> bytes:
    scene = Scene.random(__import__("random").Random(seed))
    image, _ = render_frame(scene, 0.6, spaghetti=0.7 if seed % 2 else 0.0, seed=seed, width=width, height=height)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def time_per_frame(work, frames: list[bytes], repeats: int) -> float:  # type: ignore[no-untyped-def]
    for frame in frames[:3]:
        work(frame)
    samples = []
    for i in range(repeats):
        frame = frames[i % len(frames)]
        started = time.perf_counter()
        work(frame)
        samples.append(time.perf_counter() - started)
    return 1000 * statistics.median(samples)


def reference_runner(path: Path, threads: int):  # type: ignore[no-untyped-def]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(data: bytes) -> None:
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((416, 416), Image.Resampling.BILINEAR)
        pixels = (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]
        session.run(None, {"input": pixels})

    return run


def ours_runner(model: Path, threads: int, second_opinion: Path | None = None):  # type: ignore[no-untyped-def]
    # Asked on every frame: what a frame the first network finds suspicious costs.
    detector = Detector(model, threads=threads, second_opinion=second_opinion, second_opinion_from=0.0)
    return detector.detect_one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--second-opinion", type=Path, default=None,
                        help="default: the shipped second opinion when --model is not given")
    args = parser.parse_args()
    model = args.model or shipped_model_path()
    second = args.second_opinion or (second_opinion_path() if args.model is None else None)
    sizes = {"640×480": (640, 480), "1280×720": (1280, 720)}
    frames = {name: [jpeg(w, h, seed) for seed in range(6)] for name, (w, h) in sizes.items()}
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference.onnx"
        macs = build_reference(reference)
        print(f"# detect_speed — {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
              f"onnxruntime {ort.__version__}")
        print(f"reference network: {macs / 1e9:.2f} G multiply-adds per frame; ours: {model.name} "
              f"({model.stat().st_size / 1e6:.1f} MB)" + (f", second opinion {second.name}" if second else "") + "\n")
        # A frame the first network finds unremarkable costs one network; a suspicious one (a score
        # from the gate, 0.1 by default) both: the second column.
        print("| frame | threads | ours ms | with the second opinion ms | reference ms | ours faster by |")
        print("|---|---|---|---|---|---|")
        for threads in (1, 2):
            ours = ours_runner(model, threads)
            both = ours_runner(model, threads, second) if second else None
            ref = reference_runner(reference, threads)
            for name, jpegs in frames.items():
                ours_ms = time_per_frame(ours, jpegs, args.repeats)
                both_ms = time_per_frame(both, jpegs, args.repeats) if both else float("nan")
                ref_ms = time_per_frame(ref, jpegs, max(5, args.repeats // 5))
                faster = f"{ref_ms / ours_ms:.1f}×" + (f" ({ref_ms / both_ms:.1f}× with it)" if both else "")
                print(f"| {name} | {threads} | {ours_ms:.1f} | {both_ms:.1f} | {ref_ms:.1f} | {faster} |", flush=True)


if __name__ == "__main__":
    main()
