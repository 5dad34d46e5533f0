"""The paper's general full-reference measure (Eq. 1-4) for image pairs: per-network U_i and combined U.

Classification: phi_i is network i's probability of the reference class on the distorted image,
phi'_i the same on the pristine one. The reference class is the ground truth when given, else the
network's own pristine prediction (the paper's assumption that the pristine decision is correct).

Detection: the reference objects are the given annotations, else each network's own confident
pristine detections (score >= ``reference_score``); phi is the confidence-weighted recall of those
objects (:func:`imutility.utility.detection_utility`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imutility.errors import InvalidInputError
from imutility.images import list_images, load_image
from imutility.tasks import get_task
from imutility.utility import PAPER_DET_IOU, combine
from imutility.zoo import Labeler


@dataclass
class PairUtility:
    """Utility of one distorted image against its pristine version."""

    pristine: str
    distorted: str
    per_labeler: dict[str, float]
    combined: float
    details: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"pristine": self.pristine, "distorted": self.distorted, "per_labeler": self.per_labeler,
                "combined": self.combined, "details": self.details}


def measure_pairs(pristine: Sequence[Image.Image], distorted: Sequence[Image.Image], labelers: Sequence[Labeler],
                  op: str = "mean", phi_rec: float = 0.5, targets: Sequence[int] | None = None,
                  annotations: Sequence[dict] | None = None, reference_score: float = 0.5,
                  iou_threshold: float = PAPER_DET_IOU, names: Sequence[tuple[str, str]] | None = None,
                  normalised: bool = False) -> list[PairUtility]:
    """Per-labeler U_i (Eq. 2) and combined U (Eq. 3-4) for parallel lists of images.

    ``normalised`` replaces Eq. 2 as printed (which is below 1, even negative, at no loss) by
    :func:`~imutility.utility.normalised_confidence_utility`, 1 at no loss, from the same phi and phi'.
    """
    if len(pristine) != len(distorted):
        raise InvalidInputError(f"{len(pristine)} pristine images but {len(distorted)} distorted ones")
    if not labelers:
        raise InvalidInputError("need at least one labeler")
    tasks = {lab.task for lab in labelers}
    if len(tasks) != 1:
        raise InvalidInputError(f"labelers of one task only, got {sorted(tasks)}")
    n = len(pristine)
    names = names or [(str(i), str(i)) for i in range(n)]
    per: dict[str, np.ndarray] = {}
    details: list[dict[str, dict[str, float]]] = [{} for _ in range(n)]
    task = get_task(next(iter(tasks)))  # the task decides what a network's utility is, once
    for lab in labelers:
        values, info = task.measure(lab, list(pristine), list(distorted), targets=targets, annotations=annotations,
                                    phi_rec=phi_rec, reference_score=reference_score, iou_threshold=iou_threshold,
                                    normalised=normalised)
        per[lab.name] = np.asarray(values, dtype=np.float64)
        for i in range(n):
            details[i][lab.name] = info[i]
    matrix = np.stack([per[lab.name] for lab in labelers], axis=1)
    combined = combine(matrix, op)
    return [PairUtility(names[i][0], names[i][1], {k: float(v[i]) for k, v in per.items()}, float(combined[i]),
                        details[i]) for i in range(n)]


def pair_paths(pristine: str | Path, distorted: str | Path) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """Two files, or two folders paired file by file; returns (pairs, unpaired distorted files with the reason).

    A distorted file ``R`` (its path relative to DISTORTED) pairs with the pristine file of the same relative
    path, else with the one whose relative path is ``R`` without its last suffix (``imutility distort`` names
    outputs ``a.png.jpg`` for ``a.png``), else with the ONE pristine file of the same relative path up to the
    suffix (``a.webp`` ~ ``a.png``).
    A distorted file with no counterpart, or with several (``a.jpg`` and ``a.png`` both in PRISTINE), is
    returned as unpaired with the reason, never guessed.
    """
    p, d = Path(pristine), Path(distorted)
    if p.is_file() and d.is_file():
        return [(p, d)], []
    if not (p.is_dir() and d.is_dir()):
        raise InvalidInputError("PRISTINE and DISTORTED must both be files or both be folders")
    ref = {f.relative_to(p).as_posix(): f for f in list_images(p)}
    by_stem: dict[str, list[Path]] = {}
    for rel, f in ref.items():
        by_stem.setdefault(Path(rel).with_suffix("").as_posix(), []).append(f)
    pairs, unpaired = [], []
    for f in list_images(d):
        rel = f.relative_to(d)
        exact = ref.get(rel.as_posix()) or ref.get(rel.with_suffix("").as_posix())
        if exact is not None:
            pairs.append((exact, f))
            continue
        same = by_stem.get(rel.with_suffix("").as_posix(), [])
        if len(same) == 1:
            pairs.append((same[0], f))
        elif same:
            unpaired.append((str(f), "several pristine counterparts (" + ", ".join(x.name for x in same)
                             + "): cannot tell which one it was made from"))
        else:
            unpaired.append((str(f), f"no pristine counterpart in {p}"))
    if not pairs:
        raise InvalidInputError(f"no file in {d} has a counterpart in {p} (paired by relative path, see "
                         "`imutility measure --help`)")
    return pairs, unpaired


def measure_paths(pristine: str | Path, distorted: str | Path, labelers: Sequence[Labeler], op: str = "mean",
                  phi_rec: float = 0.5, batch: int = 16, targets: dict[str, int] | None = None,
                  annotations: dict[str, dict] | None = None, normalised: bool = False
                  ) -> tuple[list[PairUtility], list[tuple[str, str]]]:
    """:func:`measure_pairs` over files or parallel folders; unreadable pairs are returned as errors.

    ``targets`` (classification) and ``annotations`` (detection, ``{"boxes", "labels"}``) are keyed by the
    pristine file's name; given one, a pair without ground truth is reported as an error, not guessed.
    """
    from imutility.images import ImageLoadError

    results = []
    pairs, errors = pair_paths(pristine, distorted)
    for i in range(0, len(pairs), batch):
        ok, a, b, t, ann = [], [], [], [], []
        for pp, dp in pairs[i:i + batch]:
            truth = targets if targets is not None else annotations
            if truth is not None and pp.name not in truth:
                errors.append((str(pp), "no ground truth for this file"))
                continue
            try:
                img_a, img_b = load_image(pp), load_image(dp)
            except ImageLoadError as e:
                errors.append((e.path or str(dp), e.reason))
                continue
            a.append(img_a)
            b.append(img_b)
            ok.append((str(pp), str(dp)))
            if targets is not None:
                t.append(targets[pp.name])
            if annotations is not None:
                ann.append(annotations[pp.name])
        if ok:
            results += measure_pairs(a, b, labelers, op=op, phi_rec=phi_rec, names=ok, normalised=normalised,
                                     targets=t if targets is not None else None,
                                     annotations=ann if annotations is not None else None)
    return results, errors


def coco_annotations_by_file(annotation_file: str | Path) -> dict[str, dict]:
    """``{file_name: {"boxes", "labels"}}`` for every image of a COCO json (crowd regions excluded)."""
    from imutility.datasets import coco_ground_truth, read_coco

    coco = read_coco(annotation_file)
    out = {}
    for img_id in coco.getImgIds():
        boxes, labels, _ = coco_ground_truth(coco, img_id)
        out[Path(coco.loadImgs(img_id)[0]["file_name"]).name] = {"boxes": boxes, "labels": labels}
    return out


def utility_of(distorted, pristine, network: str | Sequence[str] | Labeler | Sequence[Labeler] = "efficientnet_lite0",
               op: str = "mean", normalised: bool = True, phi_rec: float = 0.5, models=None, device: str = "cpu"):
    """Full-reference utility of ``distorted`` against ``pristine`` in one call (``imutility.utility(d, p)``):
    each a path, PIL image or uint8 array, or two equally long lists of them; ``network``: a zoo name (or your
    registered labeler's), several, or labelers already built, combined with ``op`` (Eq. 3). Normalised by default
    (1 when nothing was lost, 0 at the rejection threshold); ``normalised=False`` gives Eq. 2 as the paper prints
    it. NaN where a network's confidence in its own pristine decision is below the rejection threshold ``phi_rec``
    (it would reject the pristine image itself: the paper leaves such images out). Returns a float for one pair, a
    list for lists."""
    from imutility import zoo
    from imutility.predictor.runtime.predictor import _rgb, _single

    single = _single(distorted)
    if single != _single(pristine):
        raise InvalidInputError("give one distorted and one pristine image, or two lists of them")
    d, p = ([distorted], [pristine]) if single else (list(distorted), list(pristine))
    nets = [network] if isinstance(network, str | Labeler) else list(network)
    labelers = [n if isinstance(n, Labeler) else zoo.get_labeler(n, models=models, device=device) for n in nets]
    out = measure_pairs([_rgb(x) for x in p], [_rgb(x) for x in d], labelers, op=op, phi_rec=phi_rec,
                        normalised=normalised)
    values = [r.combined for r in out]
    return values[0] if single else values
