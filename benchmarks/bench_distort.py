"""Distortion throughput: `imutility distort` over both cores vs bare single-process Pillow encoding.

    python benchmarks/bench_distort.py [--src ../shared/data/imagenet-sample] [--n 200] [--preset paper-jpeg9]

The baseline encodes already-decoded images with plain ``PIL.Image.save(..., "JPEG")`` in one
process: the least work a JPEG sweep can do. The pipeline does more per output (decode the source,
EXIF/mode handling, atomic write, manifest, journal), so the ratio says what that costs and what
the worker processes win back. Every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from imutility.distort import get_preset
from imutility.images import list_images, load_image
from imutility.jobs.distort import distort_folder
from imutility.paths import shared_data


def bare_pillow(images, distortions) -> float:
    """Images/s of single-process in-memory encoding (the baseline)."""
    t0 = time.perf_counter()
    for img in images:
        for d in distortions:
            d.encode(img) if hasattr(d, "encode") else d(img)
    return len(images) * len(distortions) / (time.perf_counter() - t0)


def pipeline(src: Path, distortions, workers: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="imutility-bench-"))
    try:
        t0 = time.perf_counter()
        rep = distort_folder(src, out, distortions, workers=workers, progress=False)
        return rep.n_images / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=shared_data("imagenet-sample"))
    ap.add_argument("--n", type=int, default=200, help="number of source photos")
    ap.add_argument("--preset", default="paper-jpeg9")
    args = ap.parse_args()

    files = list_images(args.src)[: args.n]
    tmp = Path(tempfile.mkdtemp(prefix="imutility-bench-src-"))
    try:
        for f in files:  # a private copy so both runs read the same bytes from the same disk
            shutil.copy(f, tmp / f.name)
        distortions = get_preset(args.preset).distortions
        images = [load_image(f) for f in files]
        base = bare_pillow(images, distortions)
        one = pipeline(tmp, distortions, workers=1)
        cores = os.cpu_count() or 1
        par = pipeline(tmp, distortions, workers=cores)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{len(files)} photos x {len(distortions)} levels ({args.preset}), {cores} cores")
    print(f"{'what':48s} {'img/s':>8s} {'vs baseline':>12s}")
    print(f"{'baseline: Pillow encode, 1 process, in memory':48s} {base:8.1f} {1.0:11.2f}x")
    print(f"{'imutility distort, 1 worker (decode+encode+write)':48s} {one:8.1f} {one / base:11.2f}x")
    print(f"{f'imutility distort, {cores} workers':48s} {par:8.1f} {par / base:11.2f}x")


if __name__ == "__main__":
    main()
