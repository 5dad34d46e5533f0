"""Semantic segmentation (PASCAL VOC's 21 classes): an extension of the paper's protocol to a third task.

**The utility** (docs/segmentation.md). Every mask lives on one grid: the whole image stretched to
:data:`GRID` x :data:`GRID` (a class index per cell, nearest-neighbour), so masks of any network and of the ground
truth compare cell by cell; IoU is unchanged by stretching an axis. The per-image quality of a mask ``M`` against a
reference ``R`` is its mean IoU over the classes that cover at least :data:`MIN_AREA` of the image in ``R`` or in
``M`` (background included; cells where ``R`` is :data:`IGNORE` count for nothing). A network's utility on a
distorted image is the share of its pristine quality it keeps::

    U = min(1, q(M_distorted, R) / q(M_pristine, R))

with ``R`` the ground truth (COCO polygons mapped to VOC) or, reference-free (``--reference pristine``), the
network's own pristine mask (then ``q(M_pristine, R) = 1`` and ``U`` is the mIoU between the two masks). The label,
as Eq. 5-6 do for classification and detection: 1 (useful) when ``U >= seg_th``, 0 when ``U < seg_tl``, excluded
(NaN) between, and excluded when the network does not segment the pristine image itself (``q(M_pristine, GT) <
seg_min``: only what the distortion did is labelled). The ensemble combines the labelers' labels as for the other
tasks (unanimous by default).

**Edge cases.** A photo where the network finds nothing (all background) on the pristine image: reference-free, the
reference is "background only", so a distorted mask that stays background keeps U = 1 and one that hallucinates an
object covering >= 1 % loses half its mIoU (two classes, one at IoU 0). Objects outside VOC's classes: with the
ground truth, the pixels of COCO objects of the other 60 classes are IGNORED (neither right nor wrong: a VOC network
has no class for a giraffe), as are crowd regions; reference-free, whatever the network calls them on the pristine
image is the reference.
"""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imutility.errors import InvalidInputError
from imutility.tasks.base import (
    GROUND_TRUTH,
    PRISTINE,
    NetworkColumns,
    Source,
    Task,
    Thresholds,
    pair,
    sources_from_folder,
)
from imutility.zoo.base import VOC_CLASSES

#: the side of the common mask grid (the whole image stretched to GRID x GRID)
GRID = 128
#: a ground-truth cell that counts for nothing (crowd regions, objects of classes outside VOC)
IGNORE = 255
#: the share of the image a class must cover (in the reference or the mask) to enter an image's mean IoU
MIN_AREA = 0.01
#: COCO category names -> PASCAL VOC class index (the other COCO classes have none: ignored in the ground truth)
COCO_TO_VOC = {"airplane": 1, "bicycle": 2, "bird": 3, "boat": 4, "bottle": 5, "bus": 6, "car": 7, "cat": 8,
               "chair": 9, "cow": 10, "dining table": 11, "dog": 12, "horse": 13, "motorcycle": 14, "person": 15,
               "potted plant": 16, "sheep": 17, "couch": 18, "train": 19, "tv": 20}


# ---------------------------------------------------------------------------------------------- the functional core
def to_grid(mask: np.ndarray, side: int = GRID) -> np.ndarray:
    """A class map of any size -> the ``side`` x ``side`` grid (nearest neighbour: no class is invented)."""
    from PIL import Image

    m = np.asarray(mask, dtype=np.uint8)
    if m.shape == (side, side):
        return m
    return np.asarray(Image.fromarray(m).resize((side, side), Image.Resampling.NEAREST))


def encode_mask(mask: np.ndarray) -> str:
    """A grid mask as text for the caches (zlib, base64): about 0.2-2 KB."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    return f"{m.shape[0]}x{m.shape[1]}:" + base64.b64encode(zlib.compress(m.tobytes(), 6)).decode("ascii")


def decode_mask(text: str) -> np.ndarray:
    shape, data = text.split(":", 1)
    h, w = (int(v) for v in shape.split("x"))
    return np.frombuffer(zlib.decompress(base64.b64decode(data)), dtype=np.uint8).reshape(h, w)


def mask_quality(mask: np.ndarray, reference: np.ndarray, min_area: float = MIN_AREA) -> float:
    """Per-image mean IoU of ``mask`` against ``reference`` (same shape) over the classes covering at least
    ``min_area`` of the valid cells in either (background included); cells where the reference is :data:`IGNORE`
    are left out. 1.0 for identical masks; NaN when no cell is valid."""
    m, r = np.asarray(mask).ravel(), np.asarray(reference).ravel()
    if m.shape != r.shape:
        raise ValueError(f"mask and reference differ in shape: {np.shape(mask)} vs {np.shape(reference)}")
    valid = r != IGNORE
    n = int(valid.sum())
    if n == 0:
        return float("nan")
    m, r = m[valid].astype(np.int64), r[valid].astype(np.int64)
    k = int(max(m.max(), r.max())) + 1
    conf = np.bincount(r * k + m, minlength=k * k).reshape(k, k)
    inter = np.diag(conf).astype(np.float64)
    area_r, area_m = conf.sum(1), conf.sum(0)
    union = area_r + area_m - inter
    keep = (np.maximum(area_r, area_m) >= min_area * n) & (union > 0)
    if not keep.any():  # every class is tiny: fall back to all present ones
        keep = union > 0
    return float((inter[keep] / union[keep]).mean())


def retained_quality(q: float, q_ref: float) -> float:
    """``min(1, q / q_ref)``: the share of its pristine quality a mask keeps (NaN when the pristine one has none)."""
    if not np.isfinite(q) or not np.isfinite(q_ref) or q_ref <= 0:
        return float("nan")
    return float(min(1.0, q / q_ref))


def segmentation_label(utility: float, q_ref: float, th: float, tl: float, minimum: float) -> float:
    """Eq. 5-6's analogue: 1 when ``utility >= th``, 0 when ``utility < tl``, NaN between, and NaN when the
    pristine quality ``q_ref`` is below ``minimum`` (the network does not segment the pristine photo)."""
    if not np.isfinite(utility) or not np.isfinite(q_ref) or q_ref < minimum:
        return float("nan")
    return 1.0 if utility >= th else 0.0 if utility < tl else float("nan")


class Confusion:
    """Dataset mIoU, as PASCAL VOC scores it: intersections and unions of every class summed over images, then
    averaged over the classes that occur (in a reference or a mask)."""

    def __init__(self, classes: int = 21):
        self.k = classes
        self.m = np.zeros((classes, classes), dtype=np.int64)

    def add(self, mask: np.ndarray, reference: np.ndarray) -> None:
        m, r = np.asarray(mask).ravel().astype(np.int64), np.asarray(reference).ravel().astype(np.int64)
        ok = (r != IGNORE) & (r < self.k) & (m < self.k)
        self.m += np.bincount(r[ok] * self.k + m[ok], minlength=self.k * self.k).reshape(self.k, self.k)

    def miou(self) -> float:
        return confusion_miou(self.m)

    def pixel_accuracy(self) -> float:
        total = self.m.sum()
        return float(np.trace(self.m) / total) if total else float("nan")


def confusion_miou(m: np.ndarray) -> float:
    """Dataset mIoU of a (reference x mask) confusion matrix: over the classes that occur in either."""
    inter = np.diag(m).astype(np.float64)
    union = m.sum(0) + m.sum(1) - inter
    return float((inter[union > 0] / union[union > 0]).mean()) if (union > 0).any() else float("nan")


def coco_voc_mask(annotations: Sequence[dict], height: int, width: int, categories: dict[int, str]) -> np.ndarray:
    """The VOC class map of one COCO image from its polygon / RLE annotations: VOC classes drawn largest first (a
    small object on top of a large one stays visible), crowd regions and objects of non-VOC classes
    :data:`IGNORE` where no VOC object covers them."""
    from pycocotools import mask as coco_mask

    def raster(seg) -> np.ndarray:
        if isinstance(seg, list):
            rles = coco_mask.frPyObjects(seg, height, width)
            rle = coco_mask.merge(rles)
        elif isinstance(seg.get("counts"), list):
            rle = coco_mask.frPyObjects(seg, height, width)
        else:
            rle = seg
        return coco_mask.decode(rle).astype(bool)

    out = np.zeros((height, width), dtype=np.uint8)
    voc = []
    for a in annotations:
        seg = a.get("segmentation")
        if not seg:
            continue
        cls = COCO_TO_VOC.get(categories.get(a["category_id"], ""))
        if a.get("iscrowd") or cls is None:
            out[raster(seg)] = IGNORE
        else:
            voc.append((float(a.get("area", 0.0)), cls, seg))
    for _, cls, seg in sorted(voc, key=lambda t: -t[0]):
        out[raster(seg)] = cls
    return out


def mask_features(mask: np.ndarray, confidence: float | None) -> np.ndarray:
    """What a rate plan reads of a network's pristine mask: foreground share, how many classes cover >= 1 %,
    the share of cells on a class boundary (thin, busy structures break first), the largest object class's
    share, and the network's mean pixel confidence (0 for class-map networks)."""
    m = np.asarray(mask)
    fg = m != 0
    ids, counts = np.unique(m[fg], return_counts=True) if fg.any() else (np.zeros(0), np.zeros(0))
    edge = np.zeros_like(fg)
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[1:, :] |= m[1:, :] != m[:-1, :]
    return np.array([fg.mean(), float((counts >= MIN_AREA * m.size).sum()), edge.mean(),
                     counts.max() / m.size if len(counts) else 0.0, confidence or 0.0], dtype=np.float64)


# ---------------------------------------------------------------------------------------------- the task
class SegmentationTask(Task):
    name = "segmentation"
    other = "classification"
    default_labelers = ("deeplabv3_mnv2_voc", "deeplabv3_257_voc")
    default_data = ("coco2017-train128/instances.json",)
    one_data_folder = False
    class_probabilities = False
    metric_name = "mIoU"
    metric_percent = False
    filter_rule = "filtered images are replaced by their pristine versions (as for detection); dataset mIoU"
    confidence_columns = ("miou", "miou_ref")  # a network's quality on the distorted and on the pristine image
    success_name = "success (its own segmentation label: U >= seg_th)"
    # not in the paper: an extension (docs/segmentation.md); its study tables are named as such
    paper_tables = ("Segmentation predictors (extension)", "Segmentation inter-task (extension)",
                    "Fig. 2(c) (extension)")
    paper_predictors: list = []
    paper_inter_task: list = []

    # ------------------------------------------------------------------ data
    def sources(self, data: Sequence[str | os.PathLike], labels_file: str | os.PathLike | None = None,
                limit: int | None = None, reference: str = GROUND_TRUTH,
                log: Callable[[str], None] | None = None) -> tuple[list[Source], str]:
        """COCO json file(s) with polygons (the VOC ground-truth mask of each photo on the grid); with the pristine
        reference, the images of folders (or of COCO jsons), without ground truth."""
        paths = [Path(d) for d in data]
        sources: list[Source] = []
        for p in paths:
            if p.suffix == ".json":
                srcs = _coco_sources(p, with_masks=reference == GROUND_TRUTH, log=log)
            elif reference == GROUND_TRUTH:
                raise InvalidInputError(f"{p}: segmentation ground truth comes from a COCO json with polygons; for a "
                                        "folder of photos use --reference pristine")
            else:
                srcs = sources_from_folder(p, log)
            srcs = srcs[:limit]
            if len(paths) > 1:
                prefix = (p.parent if p.suffix == ".json" else p).name
                srcs = [Source(key=f"{prefix}/{s.key}", path=s.path, mask=s.mask) for s in srcs]
            sources += srcs
        return sources, ";".join(map(str, paths))

    def check_sources(self, sources: Sequence[Source], reference: str) -> None:
        if reference == GROUND_TRUTH:
            missing = [s.key for s in sources if s.mask is None]
            if missing:
                raise ValueError(f"{len(missing)} photos have no ground-truth mask (e.g. {missing[0]}); use "
                                 "--reference pristine")

    def check_labelers(self, labelers: Sequence, reference: str) -> None:
        """Against ground truth (VOC classes from COCO polygons) every segmenter must answer in VOC's 21 classes; a
        network with its own classes is judged reference-free (``--reference pristine``)."""
        if reference == GROUND_TRUTH:
            own = [lab.name for lab in labelers if tuple(lab.spec.classes or ()) != VOC_CLASSES]
            if own:
                raise ValueError(f"{', '.join(own)} answer(s) in their own classes, not PASCAL VOC's 21: the COCO "
                                 "ground truth does not apply; label with --reference pristine")

    # ------------------------------------------------------------------ the labeler's raw outputs
    def records(self, items, outputs, failed, targets) -> list[dict]:
        """``m``: the mask on the grid (:func:`encode_mask`); ``c``: the mean pixel confidence (score outputs)."""
        recs = []
        for i, (key, dist) in enumerate(items):
            if i in failed:
                recs.append({"k": key, "d": dist, "error": failed[i]})
                continue
            out = outputs[i]
            rec = {"k": key, "d": dist, "m": encode_mask(to_grid(out.mask))}
            if out.confidence is not None:
                rec["c"] = round(float(out.confidence), 5)
            recs.append(rec)
        return recs

    # ------------------------------------------------------------------ the labels table
    def table_reference(self, rows, meta, sources, labeler_caches, reference):
        """``gt_fg``: the ground truth's foreground share (NaN without ground truth); returns the decoded masks."""
        if reference != GROUND_TRUTH:
            rows["gt_fg"] = [np.nan] * len(meta)
            return None
        masks = {k: decode_mask(s.mask) for k, s in sources.items() if s.mask is not None}
        rows["gt_fg"] = [float(((masks[r["k"]] != 0) & (masks[r["k"]] != IGNORE)).mean()) for r in meta]
        return masks

    def columns(self, rows, name, meta, sources, cache, thresholds: Thresholds, reference, ref_data
                ) -> NetworkColumns:
        """``N.miou`` / ``N.miou_ref`` (the quality of the distorted / pristine mask against the reference),
        ``N.fg`` (the distorted mask's foreground share), ``N.p5`` / ``N.pristine_p5`` (score networks: the mean
        pixel confidence, a network's own-confidence baseline), ``N.utility`` (U) and ``N.label``."""
        th = thresholds
        m = len(meta)
        q, q0, fg, util, label = (np.full(m, np.nan) for _ in range(5))
        conf: list = [None] * m
        conf0: list = [None] * m
        for i, r in enumerate(meta):
            r0, r1 = pair(cache, r["k"], r["d"])
            if r0 is None:
                continue
            m0, m1 = decode_mask(r0["m"]), decode_mask(r1["m"])
            ref = m0 if reference != GROUND_TRUTH else ref_data[r["k"]]
            q0[i], q[i] = mask_quality(m0, ref), mask_quality(m1, ref)
            fg[i] = float((m1 != 0).mean())
            util[i] = retained_quality(q[i], q0[i])
            minimum = th.seg_min if reference == GROUND_TRUTH else 0.0
            label[i] = segmentation_label(util[i], q0[i], th.seg_th, th.seg_tl, minimum)
            if "c" in r1:
                conf[i], conf0[i] = [r1["c"]], [r0.get("c")]
        rows[f"{name}.miou"], rows[f"{name}.miou_ref"], rows[f"{name}.fg"] = q, q0, fg
        if any(c is not None for c in conf):
            rows[f"{name}.p5"], rows[f"{name}.pristine_p5"] = conf, conf0
        rows[f"{name}.utility"] = util.copy()
        rows[f"{name}.label"] = label.copy()
        return NetworkColumns(label=label, utility=util, confidence=q, confidence_ref=q0)

    plan_feature_names = ("fg_share", "n_classes", "boundary", "largest_object", "confidence")
    plan_retention = 0.9

    def plan_features(self, pristine: dict) -> np.ndarray:
        return mask_features(decode_mask(pristine["m"]), pristine.get("c"))

    def retention(self, pristine: dict, distorted: dict, score_threshold: float = 0.5) -> float:
        """The mIoU of the distorted mask against the network's own pristine mask (:func:`mask_quality`)."""
        return mask_quality(decode_mask(distorted["m"]), decode_mask(pristine["m"]))

    # ------------------------------------------------------------------ full reference, on images
    def measure(self, labeler, pristine, distorted, *, targets=None, annotations=None, phi_rec=0.5,
                reference_score=0.5, iou_threshold=0.5, normalised=False):
        """U against the network's own pristine mask: the mIoU of the two masks on the grid (1 when nothing was
        lost, already normalised; ground truth is not taken here: label a COCO json for that)."""
        if targets is not None or annotations is not None:
            raise InvalidInputError("segmentation is measured against each network's own pristine mask; ground "
                                    "truth applies to labelling a COCO json (imutility label --task segmentation)")
        m0, m1 = labeler(list(pristine)), labeler(list(distorted))
        values, info = [], []
        for a, b in zip(m0, m1, strict=True):
            g0, g1 = to_grid(a.mask), to_grid(b.mask)
            u = mask_quality(g1, g0)
            values.append(u)
            info.append({"miou": u, "fg_pristine": float((g0 != 0).mean()), "fg": float((g1 != 0).mean()),
                         **({"confidence": b.confidence, "confidence_ref": a.confidence}
                            if a.confidence is not None else {})})
        return np.asarray(values, dtype=np.float64), info

    # ------------------------------------------------------------------ judging
    def success(self, table, network: str) -> np.ndarray:
        """The network's own segmentation label (U >= seg_th: useful; U < seg_tl: not; between: unknown)."""
        return table[f"{network}.label"].to_numpy(dtype=np.float64)

    def _references(self, keys: Sequence[str], sources: dict[str, Source], cache: dict) -> list[np.ndarray | None]:
        """Per photo the ground-truth grid, else the network's own pristine mask (reference-free folders)."""
        out = []
        for k in keys:
            s = sources[k]
            if s.mask is not None:
                out.append(decode_mask(s.mask))
            else:
                r = cache.get((k, PRISTINE))
                out.append(decode_mask(r["m"]) if r is not None and "error" not in r else None)
        return out

    def _dataset_miou(self, keys, dists, cache, refs) -> float:
        conf = Confusion()
        for k, d, ref in zip(keys, dists, refs, strict=True):
            r = cache.get((k, d))
            if ref is None or r is None or "error" in r:
                continue
            conf.add(decode_mask(r["m"]), ref)
        return conf.miou()

    def fig2(self, held, keeps, networks, outputs, sources, reference_filter, seed, draws, levels=()) -> dict:
        from imutility.filtering import FilterOutcome, lowest_rate_keep, random_same_count

        keys, dists = list(held["key"]), list(held["distortion"])
        out = {}
        for net in networks:
            cache = outputs(net)
            refs = self._references(keys, sources, cache)

            def filtered(keep, cache=cache, refs=refs) -> FilterOutcome:
                chosen = [d if kp else PRISTINE for d, kp in zip(dists, keep, strict=True)]
                return FilterOutcome(metric=self._dataset_miou(keys, chosen, cache, refs),
                                     kept=float(np.mean(keep)) if len(keep) else float("nan"))

            res = {f: filtered(keep).as_dict() for f, keep in keeps.items()}
            res["all pristine"] = filtered(np.zeros(len(held), dtype=bool)).as_dict()
            if reference_filter in keeps:
                n_rej = int((~keeps[reference_filter]).sum())
                res["lowest bit rate (same count)"] = filtered(
                    lowest_rate_keep(held["bpp"].to_numpy(), n_rej)).as_dict()
                res["random (same count)"] = random_same_count(filtered, len(held), n_rej, seed, draws)
            out[net] = res
        return {"images": int(len(held)), "photos": int(held["key"].nunique()), "networks": out}

    def selection_metric(self, rows, network, outputs, sources, pristine=False) -> float:
        """Dataset mIoU of the network's masks on the rows' images (or their pristine versions) against the ground
        truth, or, reference-free, against its own pristine masks."""
        cache = outputs(network)
        keys = list(rows["key"])
        dists = [PRISTINE] * len(keys) if pristine else list(rows["distortion"])
        return self._dataset_miou(keys, dists, cache, self._references(keys, sources, cache))

    def selection_parts(self, rows, network, outputs, sources, pristine=False) -> np.ndarray:
        """Per row, the flattened confusion matrix of its mask against its reference (all zeros where the network
        failed): dataset mIoU is additive in them."""
        cache = outputs(network)
        keys = list(rows["key"])
        dists = [PRISTINE] * len(keys) if pristine else list(rows["distortion"])
        refs = self._references(keys, sources, cache)
        k = len(VOC_CLASSES)
        out = np.zeros((len(keys), k * k), dtype=np.int64)
        for i, (key, d, ref) in enumerate(zip(keys, dists, refs, strict=True)):
            r = cache.get((key, d))
            if ref is None or r is None or "error" in r:
                continue
            c = Confusion(k)
            c.add(decode_mask(r["m"]), ref)
            out[i] = c.m.ravel()
        return out

    def metric_of_parts(self, total: np.ndarray) -> float:
        k = len(VOC_CLASSES)
        return confusion_miou(np.asarray(total).reshape(k, k))

    def evaluate_labeler(self, labeler, data, progress: bool = True) -> str:
        from tqdm.auto import tqdm

        from imutility.images import load_image
        from imutility.paths import shared_data

        srcs = _coco_sources(Path(data or shared_data(self.default_data[0])), with_masks=True)
        conf = Confusion(labeler.spec.num_classes)
        for s in tqdm(srcs, disable=not progress, desc=labeler.name, unit="img"):
            conf.add(to_grid(labeler([load_image(s.path)])[0].mask), decode_mask(s.mask))
        return (f"{labeler.name}: mIoU {conf.miou():.4f} pixel accuracy {conf.pixel_accuracy():.4f} on {len(srcs)} "
                f"images ({GRID}x{GRID} grid; non-VOC objects and crowds ignored)")


def _coco_sources(js: Path, with_masks: bool, log: Callable[[str], None] | None = None) -> list[Source]:
    """A COCO json's photos that are on disk; with ``with_masks`` each with its VOC ground-truth grid (a json
    without polygons is refused: its photos can only be labelled reference-free)."""
    import json

    try:
        d = json.loads(js.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{js}: cannot read a COCO json ({e})") from e
    cats = {c["id"]: c["name"] for c in d.get("categories", [])}
    by_image: dict[int, list[dict]] = {}
    for a in d.get("annotations", []):
        by_image.setdefault(a["image_id"], []).append(a)
    if with_masks and not any(a.get("segmentation") for a in d.get("annotations", [])):
        raise InvalidInputError(f"{js} holds no polygons (boxes only): label its photos with --reference pristine")
    root = js.parent / "images" if (js.parent / "images").is_dir() else js.parent
    out = []
    for im in d.get("images", []):
        path = root / im["file_name"]
        if not path.is_file():
            if log is not None:
                log(f"skipped {path}: listed in {js} but not on disk")
            continue
        mask = None
        if with_masks:
            full = coco_voc_mask(by_image.get(im["id"], []), int(im["height"]), int(im["width"]), cats)
            mask = encode_mask(to_grid(full))
        out.append(Source(key=im["file_name"], path=str(path), mask=mask))
    return out
