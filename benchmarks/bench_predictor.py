"""Predictor throughput on CPU, and its cost against the labeler ensemble and against decoding alone.

    python benchmarks/bench_predictor.py [--n 64]

Every figure reads the same JPEG files from disk (decode included), in this run, on all cores.
Ceiling: decoding the files alone (``imutility.images.load_image``). Baselines: the three default
classification labelers, and the paper's three classifiers (random weights: the cost does not depend
on the values). Cost ratio = predictor seconds / ensemble seconds (goal: at most 0.1).
"""

from __future__ import annotations

import argparse
import time

from imutility import zoo
from imutility.images import list_images, load_image
from imutility.paths import shared_data
from imutility.predictor import Predictor
from imutility.predictor.builtin import BUILTIN
from imutility.tasks import get_task


def timed(fn, warm=None) -> float:
    (warm or fn)()  # warm-up
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    files = list_images(shared_data("imagenet-sample"))[: args.n]

    decode = timed(lambda: [load_image(f) for f in files])
    print(f"{len(files)} JPEG files; decode only: {len(files) / decode:.1f} img/s (the ceiling)")
    labelers = [zoo.get_labeler(n) for n in get_task("classification").default_labelers]
    ensemble = timed(lambda: [lab([load_image(f) for f in files]) for lab in labelers])
    print(f"ensemble baseline ({', '.join(lab.name for lab in labelers)}): "
          f"{ensemble:.2f} s = {len(files) / ensemble:.1f} img/s")
    paper = [zoo.get_labeler(n, pretrained=False) for n in ("inception_v3", "vgg19", "densenet121")]
    paper_s = timed(lambda: [lab([load_image(f) for f in files]) for lab in paper],
                    warm=lambda: [lab([load_image(files[0])]) for lab in paper])
    print(f"paper's ensemble (inception_v3, vgg19, densenet121; PyTorch, random weights, same cost): "
          f"{paper_s:.2f} s = {len(files) / paper_s:.1f} img/s")
    print(f"{'predictor':64s} {'img/s':>8s} {'vs decode':>10s} {'cost vs ensemble':>17s} {'vs paper ensemble':>18s}")
    for name in sorted(set(BUILTIN.values())):
        for runtime, precision in (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")):
            try:
                pred = Predictor.load(name, runtime=runtime, precision=precision)
            except ValueError:  # int8 is for content predictors
                continue
            t = timed(lambda pred=pred: list(pred.predict_paths(files, 32)))
            label = f"{name} ({pred.architecture}, {pred.card.backbone}, {runtime} {precision})"
            print(f"{label:64s} {len(files) / t:8.1f} {decode / t:9.2f}x {t / ensemble:16.3f}x {t / paper_s:17.3f}x")


if __name__ == "__main__":
    main()
