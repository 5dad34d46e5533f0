"""Predictor throughput on CPU per backbone, and its cost against running the labeler ensemble.

    python benchmarks/bench_predictor.py [--n 64]

Every figure reads the same JPEG files from disk (decode included), batch 32, both cores, in this
run. Baselines: the three default classification labelers, and the paper's three classifiers
(random weights: the cost does not depend on the values); cost ratio = predictor seconds / ensemble
seconds (goal: at most 0.1). Backbones other
than the shipped default are measured with random weights: the cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from imutility import zoo
from imutility.cli import DEFAULT_LABELERS
from imutility.images import list_images, load_image
from imutility.paths import shared_data
from imutility.predictor import Predictor, list_backbones
from imutility.predictor.backbones import create_backbone, get_backbone_spec
from imutility.predictor.data import InputSpec


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

    labelers = [zoo.get_labeler(n) for n in DEFAULT_LABELERS["classification"].split(",")]
    ensemble = timed(lambda: [lab([load_image(f) for f in files]) for lab in labelers])
    print(f"{len(files)} JPEG files; ensemble baseline ({', '.join(lab.name for lab in labelers)}): "
          f"{ensemble:.2f} s = {len(files) / ensemble:.1f} img/s")
    # The paper's ensemble costs the same with random weights (their files cannot be downloaded here).
    paper = [zoo.get_labeler(n, pretrained=False) for n in ("inception_v3", "vgg19", "densenet121")]
    paper_s = timed(lambda: [lab([load_image(f) for f in files]) for lab in paper],
                    warm=lambda: [lab([load_image(files[0])]) for lab in paper])
    print(f"paper's ensemble (inception_v3, vgg19, densenet121; PyTorch, random weights, same cost): "
          f"{paper_s:.2f} s = {len(files) / paper_s:.1f} img/s")
    print(f"{'predictor':40s} {'img/s':>8s} {'cost vs ensemble':>17s} {'vs paper ensemble':>18s}")

    default = Predictor.load("default")
    rows = [("default (" + default.card["backbone"] + ", PyTorch)", default)]
    onnx = Predictor.load("default").use_onnx_runtime()
    rows.append(("default (" + default.card["backbone"] + ", ONNX Runtime)", onnx))
    for name in list_backbones():
        if name == default.card["backbone"]:
            continue
        b = get_backbone_spec(name)
        model, _ = create_backbone(name, 2, pretrained=False)
        card = {**default.card, "backbone": name,
                "input": InputSpec(geometry="crop", channels=b.channels, scale=b.scale, mean=b.mean,
                                   std=b.std).as_dict()}
        p = Predictor(model, card, Path(tempfile.gettempdir()))
        rows.append((f"{name} (PyTorch)", p))
        rows.append((f"{name} (ONNX Runtime)", _onnx(p, name)))
    for label, pred in rows:
        t = timed(lambda pred=pred: list(pred.predict_paths(files, 32)))
        print(f"{label:40s} {len(files) / t:8.1f} {t / ensemble:16.3f}x {t / paper_s:17.3f}x")


def _onnx(p: Predictor, name: str) -> Predictor:
    q = Predictor(p.model, p.card, p.source)
    return q.use_onnx_runtime(q.export_onnx(Path(tempfile.mkdtemp()) / f"{name}.onnx"))


if __name__ == "__main__":
    main()
