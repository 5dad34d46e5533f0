"""CPU throughput of every available labeler, and the ONNX Runtime path against PyTorch eager.

    python benchmarks/bench_labelers.py [--n 64] [--names a,b,c]

Images are decoded once up front (the figures are the labelers' preprocessing + inference, batch
32, all cores). Each figure is also printed as a ratio to the first labeler measured (the
baseline, mobilenet_v2 by default), so runs on different machines compare by ratio. For PyTorch
classifiers that the zoo runs through ONNX Runtime, the eager PyTorch path is measured too, with
the largest probability difference between the two.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from imutility import zoo
from imutility.images import list_images, load_image
from imutility.paths import shared_data


def throughput(fn, images, repeats: int = 2) -> float:
    fn(images[:2])  # warm-up (session creation, lazy init)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(images)
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="images per measurement")
    ap.add_argument("--names", default=None, help="comma-separated labelers [default: all available]")
    args = ap.parse_args()

    files = list_images(shared_data("imagenet-sample"))[: args.n]
    images = [load_image(f) for f in files]
    names = args.names.split(",") if args.names else ["mobilenet_v2"] + [
        n for n in zoo.list_labelers() if n != "mobilenet_v2" and zoo.availability(n).ok]
    base = None
    print(f"{len(images)} ImageNet photos, batch 32, decoded in memory")
    print(f"{'labeler':26s} {'backend':26s} {'img/s':>8s} {'vs ' + names[0]:>16s}")
    for name in names:
        lab = zoo.get_labeler(name)
        ips = throughput(lab, images)
        base = base or ips
        print(f"{name:26s} {lab.spec.backend:26s} {ips:8.1f} {ips / base:15.2f}x")
        if type(lab).__name__ == "OnnxClassifier":
            eager = zoo.get_labeler(name, runtime="torch")
            e_ips = throughput(eager, images)
            diff = float(np.abs(eager(images[:16]) - lab(images[:16])).max())
            print(f"{'  same, PyTorch eager':26s} {'torch':26s} {e_ips:8.1f} {e_ips / base:15.2f}x"
                  f"   (ONNX Runtime {ips / e_ips:.2f}x eager; max |dp| {diff:.1e})")


if __name__ == "__main__":
    main()
