"""Timelapse compilation: time and peak memory per hour of print, side by side in one run with
the reference's way, Debian's `ffmpeg` command line, on the same frames.

Ours: `layerfleet.timelapses.video.compile_videos` (PyAV, libx264 from its wheel), which writes
the plain video, the tagged video (boxes and gauge drawn on every frame) and the poster in one
streaming pass. Reference: `ffmpeg -y -r 30 -pattern_type glob -i '*.jpg' -c:v libx264
-pix_fmt yuv420p -vf pad=ceil(iw/2)*2:ceil(ih/2)*2 out.mp4`, the command the reference server
runs for the plain video (it runs it again for the tagged one, over frames it has drawn the
boxes on: that second run is not counted here). Each side runs in a process of its own; peak
memory is that process's largest resident set (sampled every 10 ms with psutil).

Frames are simulator pictures (a growing part, spaghetti in the last third), at one frame per
10 s and one per 2 s of print, 640×480 and 1280×720. `--hours` sets the print length (the
figures are scaled to one hour of print).

    python bench/timelapse.py [--hours 1] [--install-ffmpeg]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from layerfleet.simulator.render import Scene, render_frame

RATES = (10, 2)  # seconds of print per frame
SIZES = ((640, 480), (1280, 720))
DISTINCT_FRAMES = 48  # rendered pictures; longer prints reuse them in order, each a file of its own

OURS = """
import json, sys
from pathlib import Path
from layerfleet.timelapses.video import Tag, compile_videos
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
frames = sorted(folder.glob("*.jpg"))
tags = [Tag([[0.5 * 640, 0.6 * 480, 120, 90, 0.8]], i / len(frames)) if i > 2 * len(frames) // 3 else None
        for i in range(len(frames))]
compile_videos(frames, tags, video=out / "video.mp4", tagged_video=out / "tagged.mp4", poster=out / "poster.jpg",
               poster_index=None)
"""


def make_frames(folder: Path, count: int, size: tuple[int, int]) -> None:
    scene = Scene.random(random.Random(5))
    rendered = []
    for n in range(min(count, DISTINCT_FRAMES)):
        progress = n / max(1, min(count, DISTINCT_FRAMES) - 1)
        image, _ = render_frame(scene, progress, spaghetti=1.0 if progress > 2 / 3 else 0.0, seed=n,
                                width=size[0], height=size[1])
        path = folder / f"r{n:03d}.tmp"
        image.save(path, "JPEG", quality=85)
        rendered.append(path)
    for n in range(count):
        source = rendered[n * len(rendered) // count]
        shutil.copyfile(source, folder / f"{n:06d}.jpg")
    for path in rendered:
        path.unlink()


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of a command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.01)
    _, error = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {error.decode(errors='replace')[-800:]}")
    return time.perf_counter() - started, peak / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=1.0, help="print length (default 1 hour)")
    parser.add_argument("--install-ffmpeg", action="store_true",
                        help="install Debian's ffmpeg first (scripts/install-debian-packages)")
    args = parser.parse_args()
    if args.install_ffmpeg or shutil.which("ffmpeg") is None:
        script = Path(__file__).resolve().parent.parent / "scripts" / "install-debian-packages"
        subprocess.run([str(script), "ffmpeg"], check=True)
    ffmpeg = shutil.which("ffmpeg")
    version = subprocess.run([ffmpeg or "ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
          f"{version}; print of {args.hours:g} h, figures per hour of print")
    print()
    print("| frames | size | ours: both videos + poster, s/h | ours: peak MB | ffmpeg: plain video, s/h "
          "| ffmpeg: peak MB | ours MB/h (both videos) | ffmpeg MB/h |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in RATES:
        count = max(2, round(args.hours * 3600 / rate))
        for size in SIZES:
            with tempfile.TemporaryDirectory(prefix="timelapse-bench-") as work:
                folder, out = Path(work) / "frames", Path(work) / "out"
                folder.mkdir()
                out.mkdir()
                make_frames(folder, count, size)
                ours_s, ours_mb = measure([sys.executable, "-c", OURS, str(folder), str(out)])
                reference = [ffmpeg or "ffmpeg", "-y", "-loglevel", "error", "-r", "30", "-pattern_type", "glob",
                             "-i", str(folder / "*.jpg"), "-c:v", "libx264", "-pix_fmt", "yuv420p",
                             "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", str(out / "reference.mp4")]
                theirs_s, theirs_mb = measure(reference)
                ours_size = ((out / "video.mp4").stat().st_size + (out / "tagged.mp4").stat().st_size) / 1024**2
                theirs_size = (out / "reference.mp4").stat().st_size / 1024**2
                per_hour = 1 / args.hours
                print(f"| {count} (1 per {rate} s) | {size[0]}×{size[1]} | {ours_s * per_hour:.1f} | {ours_mb:.0f} "
                      f"| {theirs_s * per_hour:.1f} | {theirs_mb:.0f} | {ours_size * per_hour:.1f} "
                      f"| {theirs_size * per_hour:.1f} |", flush=True)


if __name__ == "__main__":
    main()
