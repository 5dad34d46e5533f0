"""Filtering by predicted utility and what it does to other networks (the paper's Section V-B/C, Fig. 2, Tables III/IV).

Classification: images predicted non-useful are dropped; the top-1 accuracy of a network is taken over
the images kept. Detection: dropped images are replaced by their pristine versions (the paper's rule,
so that mAP stays defined over the same images). Baselines at the SAME rejection count keep the
comparison honest: dropping the lowest-bit-rate images (a predictor that only spots heavy compression
would match it) and, for detection, replacing images at random.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FilterOutcome:
    metric: float  # top-1 (classification) or mAP@[.5:.95] (detection)
    kept: float  # share of distorted images kept (not filtered / not replaced)
    metric50: float | None = None  # detection: mAP@0.5

    def as_dict(self) -> dict:
        d = {"metric": self.metric, "kept": self.kept}
        if self.metric50 is not None:
            d["metric50"] = self.metric50
        return d


def top1_correct(table, network: str) -> tuple[np.ndarray, np.ndarray]:
    """(valid, correct) of a classifier over a labels table: ``valid`` marks rows with an output (a failed
    output is ``<NA>``: left out, never a wrong answer), ``correct`` is top-1 == target over the valid rows."""
    pred = table[f"{network}.pred"]
    valid = pred.notna().to_numpy()
    correct = (pred == table["target"]).to_numpy(dtype=bool, na_value=False)[valid]
    return valid, correct


def filtered_top1(correct: np.ndarray, keep: np.ndarray) -> FilterOutcome:
    """Top-1 over the kept images (NaN when nothing is kept)."""
    correct = np.asarray(correct, dtype=float)
    keep = np.asarray(keep, dtype=bool)
    acc = float(correct[keep].mean()) if keep.any() else float("nan")
    return FilterOutcome(metric=acc, kept=float(keep.mean()) if len(keep) else float("nan"))


def lowest_rate_keep(bpp: np.ndarray, n_reject: int) -> np.ndarray:
    """Keep-mask that rejects the ``n_reject`` images with the fewest bits per pixel (ties by order)."""
    keep = np.ones(len(bpp), dtype=bool)
    if n_reject > 0:
        keep[np.argsort(np.asarray(bpp), kind="stable")[:n_reject]] = False
    return keep


def random_keep(n: int, n_reject: int, rng: np.random.Generator) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[rng.choice(n, size=min(n_reject, n), replace=False)] = False
    return keep


def random_same_count(outcome, n: int, n_reject: int, seed: int, draws: int) -> dict:
    """The mean outcome of ``draws`` seeded random rejections of ``n_reject`` of ``n`` images (``outcome(keep)`` ->
    :class:`FilterOutcome`): the random baseline of Fig. 2, with the spread of its metric."""
    rng = np.random.default_rng(seed)
    runs = [outcome(random_keep(n, n_reject, rng)) for _ in range(draws)]
    out = {"metric": float(np.mean([r.metric for r in runs])), "kept": runs[0].kept if runs else float("nan"),
           "metric_std": float(np.std([r.metric for r in runs]))}
    if runs and runs[0].metric50 is not None:
        out["metric50"] = float(np.mean([r.metric50 for r in runs]))
    return out


class CocoScorer:
    """COCO bbox evaluation (pycocotools) of many detection sets over one fixed list of (image, version) items.

    Ground truth comes from the labelling sources (xyxy boxes with COCO category ids); each item is one
    image id, so the same photo at several levels counts as several images, as in the paper's subsets.
    """

    def __init__(self, ground_truth: Sequence[tuple[np.ndarray, np.ndarray]]):
        from pycocotools.coco import COCO

        images, anns, cats = [], [], set()
        for i, (boxes, labels) in enumerate(ground_truth):
            images.append({"id": i + 1})  # bbox evaluation never reads the image size
            for b, c in zip(np.asarray(boxes, dtype=float).reshape(-1, 4), labels, strict=True):
                bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c), "iscrowd": 0,
                             "bbox": [float(b[0]), float(b[1]), bw, bh], "area": bw * bh})
                cats.add(int(c))
        from imutility.zoo.base import COCO80_IDS

        self.n = len(images)
        with contextlib.redirect_stdout(io.StringIO()):
            self.gt = COCO()
            self.gt.dataset = {"images": images, "annotations": anns,
                               "categories": [{"id": c} for c in sorted(set(COCO80_IDS) | cats)]}
            self.gt.createIndex()

    def score(self, detections: Sequence[Mapping[str, list]]) -> tuple[float, float]:
        """(mAP@[.5:.95], mAP@0.5) of one detection set: per item a dict with ``b`` (xyxy), ``l``, ``s``."""
        from pycocotools.cocoeval import COCOeval

        records = []
        for i, d in enumerate(detections):
            for b, c, s in zip(d["b"], d["l"], d["s"], strict=True):
                records.append({"image_id": i + 1, "category_id": int(c), "score": float(s),
                                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
        if not records:
            return 0.0, 0.0
        with contextlib.redirect_stdout(io.StringIO()):
            dt = self.gt.loadRes(records)
            ev = COCOeval(self.gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return float(ev.stats[0]), float(ev.stats[1])

    def filtered(self, distorted: Sequence[Mapping], pristine: Sequence[Mapping], keep: np.ndarray) -> FilterOutcome:
        """mAP with every image not kept replaced by its pristine version."""
        keep = np.asarray(keep, dtype=bool)
        dets = [d if k else p for d, p, k in zip(distorted, pristine, keep, strict=True)]
        m, m50 = self.score(dets)
        return FilterOutcome(metric=m, kept=float(keep.mean()) if len(keep) else float("nan"), metric50=m50)
