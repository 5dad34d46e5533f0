"""Labelling pipeline throughput against the labelers' bare inference on the same images.

    python benchmarks/bench_labelling.py [--n 24] [--task classification] [--labelers a,b,c]

Baseline (measured in this run): the images are distorted and decoded up front, then only the
labelers run on them (pristine + every level), batch 32. Pipeline: ``run_labelling`` from the
files on disk, including reading, distorting, writing every distorted file, caching raw outputs and
building the table. Overhead = pipeline time / baseline time - 1 (goal: at most 20 %). The table,
counts and plot written at the end are a fixed cost (timed again through ``relabel``), so the
per-image overhead without them is printed too.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from imutility import zoo
from imutility.distort import get_preset
from imutility.images import load_image
from imutility.labelling import relabel, run_labelling
from imutility.paths import shared_data
from imutility.tasks import TASK_NAMES, get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="source photos")
    ap.add_argument("--task", choices=TASK_NAMES, default="classification")
    ap.add_argument("--labelers", default=None)
    ap.add_argument("--preset", default="paper-jpeg9")
    args = ap.parse_args()

    task = get_task(args.task)
    sources, _ = task.sources([shared_data(task.default_data[0])], limit=args.n)
    distortions = get_preset(args.preset).distortions
    labelers = [zoo.get_labeler(n) for n in (args.labelers or ",".join(task.default_labelers)).split(",")]
    for lab in labelers:  # warm-up: sessions, ONNX export, lazy init
        lab([load_image(sources[0].path)])

    images = []
    for s in sources:
        img = load_image(s.path)
        images.append(img)
        images += [d(img).image for d in distortions]
    t0 = time.perf_counter()
    for lab in labelers:
        lab(images)
    bare = time.perf_counter() - t0

    out = Path(tempfile.mkdtemp(prefix="imutility-bench-label-"))
    try:
        t0 = time.perf_counter()
        run_labelling(args.task, sources, distortions, labelers, out, progress=False)
        pipe = time.perf_counter() - t0
        t0 = time.perf_counter()
        relabel(out)
        fixed = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)

    n = len(images)
    print(f"{len(sources)} sources x (pristine + {len(distortions)} levels) = {n} images x {len(labelers)} labelers "
          f"({', '.join(lab.name for lab in labelers)})")
    print(f"{'what':44s} {'seconds':>8s} {'img/s':>8s} {'vs bare':>8s}")
    print(f"{'bare inference (baseline, images in memory)':44s} {bare:8.2f} {n / bare:8.1f} {1.0:7.2f}x")
    print(f"{'labelling pipeline (files, distort, cache)':44s} {pipe:8.2f} {n / pipe:8.1f} {bare / pipe:7.2f}x")
    print(f"{'  of which table + counts + plot (fixed)':44s} {fixed:8.2f}")
    print(f"overhead: {100 * (pipe / bare - 1):.1f} % end to end, {100 * ((pipe - fixed) / bare - 1):.1f} % per image "
          "(without the fixed end cost)")


if __name__ == "__main__":
    main()
