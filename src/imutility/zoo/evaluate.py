"""Pristine accuracy of labelers: top-1/top-5 on an ImageNet-style set, COCO mAP through pycocotools.

These are the sanity floors of the zoo: a broken preprocessing or decoder cannot reach them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from imutility.datasets import ClassificationDataset, CocoDetectionDataset
from imutility.errors import InvalidInputError
from imutility.images import ImageLoadError, load_image
from imutility.zoo.base import Classifier, Detections, Detector


@dataclass
class ClassificationScore:
    n: int
    top1: float
    top5: float
    skipped: list[tuple[str, str]]


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _load_batch(samples: Sequence) -> tuple[list, list, list[tuple[str, str]]]:
    """(readable samples, their images, (key, reason) of the unreadable ones)."""
    ok, imgs, skipped = [], [], []
    for s in samples:
        try:
            imgs.append(load_image(s.path))
            ok.append(s)
        except ImageLoadError as e:
            skipped.append((s.key, e.reason))
    return ok, imgs, skipped


def classification_accuracy(classifier: Classifier, dataset: ClassificationDataset, batch_size: int = 32,
                            progress: bool = False) -> ClassificationScore:
    """Top-1 / top-5 of a classifier on a labelled folder; unreadable images are skipped and listed."""
    from tqdm.auto import tqdm

    if classifier.spec.label_space is not None:
        raise InvalidInputError(f"{classifier.name} answers in its own {classifier.spec.num_classes} classes, not the "
                         "ImageNet-1k classes this folder is labelled with: no top-1 to measure here")

    hits1 = hits5 = n = 0
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=len(dataset), disable=not progress, desc=classifier.name, unit="img")
    for chunk in _batches(dataset.samples, batch_size):
        ok, imgs, bad = _load_batch(chunk)
        skipped += bad
        if imgs:
            probs = classifier(imgs)
            top5 = np.argsort(-probs, axis=1)[:, :5]
            t = np.asarray([s.target for s in ok])
            hits1 += int((top5[:, 0] == t).sum())
            hits5 += int((top5 == t[:, None]).any(1).sum())
            n += len(t)
        bar.update(len(chunk))
    bar.close()
    return ClassificationScore(n=n, top1=hits1 / max(n, 1), top5=hits5 / max(n, 1), skipped=skipped)


def detections_to_coco(image_id: int, det: Detections) -> list[dict]:
    """One image's detections as COCO result records (xywh boxes)."""
    return [{"image_id": int(image_id), "category_id": int(c),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
            for b, c, s in zip(det.boxes, det.labels, det.scores, strict=True)]


def coco_map(dataset: CocoDetectionDataset, results: dict[int, Detections]) -> dict[str, float]:
    """COCO bbox metrics of detections keyed by image id, over exactly those images (pycocotools)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    records = [r for img_id, det in results.items() for r in detections_to_coco(img_id, det)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(dataset.annotation_file))
        if not records:
            return {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0}
        dt = gt.loadRes(records)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(results)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"mAP": float(ev.stats[0]), "mAP50": float(ev.stats[1]), "mAP75": float(ev.stats[2])}


def detection_map(detector: Detector, dataset: CocoDetectionDataset, batch_size: int = 8,
                  progress: bool = False) -> dict[str, float]:
    """Run a detector over a COCO set and score it; unreadable images are skipped (and not scored)."""
    from tqdm.auto import tqdm

    results: dict[int, Detections] = {}
    bar = tqdm(total=len(dataset), disable=not progress, desc=detector.name, unit="img")
    for chunk in _batches(dataset.samples, batch_size):
        ok, imgs, _ = _load_batch(chunk)
        for s, det in zip(ok, detector(imgs), strict=True):
            results[s.image_id] = det
        bar.update(len(chunk))
    bar.close()
    out = coco_map(dataset, results)
    out["n"] = float(len(results))
    return out
