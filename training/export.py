"""Export a trained checkpoint to ONNX (one file), and to static INT8 calibrated on real frames."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from training.model import FailureDetector

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "print-failures"
INPUT_NAME = "images"
OUTPUT_NAMES = ["scores", "boxes", "image_score", "defect_scores", "defect_score"]


def load_checkpoint(path: Path, image_size: int | None = None) -> FailureDetector:
    """The network is fully convolutional: it can be exported for another input size than
    the one it was trained at."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = FailureDetector(image_size=image_size or checkpoint["image_size"], pretrained=False)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def export_onnx(model: FailureDetector, out: Path) -> Path:
    model = model.eval()
    example = torch.rand(1, 3, model.image_size, model.image_size) * 255
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (example,), str(out), input_names=[INPUT_NAME], output_names=OUTPUT_NAMES,
        dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
        opset_version=17, dynamo=False,
    )
    return out


def quantize_int8(fp32: Path, out: Path, calibration: list[Path], size: int) -> Path:
    """Static INT8 (QDQ, per-channel weights), activations calibrated on real frames."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from layerfleet.detection.imaging import prepare

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.paths = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self.paths, None)
            if path is None:
                return None
            boxed = prepare(path.read_bytes(), size)
            return {INPUT_NAME: boxed.pixels.astype(np.float32).transpose(2, 0, 1)[None]}

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared), str(out), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        # The decoded outputs (exp, box corners, sigmoids) stay in float: they need the range.
        nodes_to_exclude=[], op_types_to_quantize=["Conv", "MatMul", "Gemm", "Add", "Mul"],
    )
    prepared.unlink(missing_ok=True)
    return out


def calibration_frames(data: Path, count: int, seed: int = 0) -> list[Path]:
    frames = sorted((data / "images" / "train").glob("*.jpg"))
    return random.Random(seed).sample(frames, min(count, len(frames)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="FP32 ONNX file to write")
    parser.add_argument("--int8", type=Path, help="also write a static INT8 model here")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--calibration-frames", type=int, default=200)
    parser.add_argument("--size", type=int, help="input size of the exported model (default: as trained)")
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint, args.size)
    export_onnx(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    if args.int8:
        quantize_int8(args.out, args.int8, calibration_frames(args.data, args.calibration_frames), model.image_size)
        print(f"wrote {args.int8} ({args.int8.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
