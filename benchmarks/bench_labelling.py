"""Labelling pipeline throughput against the labelers' bare inference on the same images.

    python benchmarks/bench_labelling.py [--n 24] [--task classification] [--labelers a,b,c]
                                         [--engines local,ray] [--ray-actors 1] [--paper-networks]

Baseline (measured in this run): the images are distorted and decoded up front, then only the
labelers run on them (pristine + every level), batch 32. Pipeline: ``run_labelling`` from the
files on disk, including reading, distorting, writing every distorted file, caching raw outputs and
building the table. Overhead = pipeline time / baseline time - 1 (goal: at most 20 %). The table,
counts and plot written at the end are a fixed cost (timed again through ``relabel``), so the
per-image overhead without them is printed too.

``--engines local,ray``: the same run through each engine (``imutility label --engine``), into fresh
folders; Ray's start (a local instance, ``ray.init``) is timed apart from the run, since a cluster is
started once for many runs. ``--paper-networks``: the per-image CPU cost of the paper's three
classifiers (Inception-v3, VGG-19, DenseNet-121; random weights: the same arithmetic as the trained
ones), what docs/scale.md's estimate for ImageNet val at the paper's scale starts from.
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
    ap.add_argument("--engines", default="local", help="comma-separated: local, ray")
    ap.add_argument("--ray-actors", type=int, default=1, help="ray: actors per labeler")
    ap.add_argument("--paper-networks", action="store_true", help="also time the paper's classifiers (random weights)")
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

    n = len(images)
    print(f"{len(sources)} sources x (pristine + {len(distortions)} levels) = {n} images x {len(labelers)} labelers "
          f"({', '.join(lab.name for lab in labelers)})")
    print(f"{'what':44s} {'seconds':>8s} {'img/s':>8s} {'vs bare':>8s}")
    print(f"{'bare inference (baseline, images in memory)':44s} {bare:8.2f} {n / bare:8.1f} {1.0:7.2f}x")
    for engine_name in args.engines.split(","):
        engine, start = engine_for(engine_name, args.ray_actors, len(labelers))
        out = Path(tempfile.mkdtemp(prefix="imutility-bench-label-"))
        try:
            t0 = time.perf_counter()
            run_labelling(args.task, sources, distortions, labelers, out, progress=False, engine=engine)
            pipe = time.perf_counter() - t0
            t0 = time.perf_counter()
            relabel(out)
            fixed = time.perf_counter() - t0
        finally:
            shutil.rmtree(out, ignore_errors=True)
        what = f"pipeline, {engine_name} engine (files, distort, cache)"
        print(f"{what:44s} {pipe:8.2f} {n / pipe:8.1f} {bare / pipe:7.2f}x")
        if start is not None:
            print(f"{'  + starting a local Ray instance (once)':44s} {start:8.2f}")
        print(f"{'  of which table + counts + plot (fixed)':44s} {fixed:8.2f}")
        print(f"  overhead: {100 * (pipe / bare - 1):.1f} % end to end, {100 * ((pipe - fixed) / bare - 1):.1f} % "
              "per image (without the fixed end cost)")
    if args.paper_networks:
        paper_networks(images[:16])


def engine_for(name: str, actors: int, n_labelers: int):
    """The engine object and, for Ray, the seconds its local instance took to start (timed apart)."""
    if name == "local":
        return None, None
    import logging
    import math
    import os

    import ray

    from imutility.labelling.ray_engine import RayEngine

    if ray.is_initialized():
        ray.shutdown()
    t0 = time.perf_counter()
    ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(n_labelers * actors) + 1), include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    return RayEngine(actors=actors), time.perf_counter() - t0


def paper_networks(images) -> None:
    """Per-image CPU cost of the paper's classifiers, through the zoo's own preprocessing (random weights)."""
    print(f"paper classifiers on this CPU ({len(images)} images, batch 16, random weights, all cores):")
    for name in ("inception_v3", "vgg19", "densenet121"):
        lab = zoo.get_labeler(name, pretrained=False)
        lab(images[:2])
        t0 = time.perf_counter()
        lab(images)
        dt = time.perf_counter() - t0
        print(f"  {name:14s} {1000 * dt / len(images):7.1f} ms/img  {len(images) / dt:6.1f} img/s")


if __name__ == "__main__":
    main()
