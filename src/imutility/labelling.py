"""Labelling pipeline: pristine dataset x distortions x labeler ensemble -> a labels table.

Layout of ``OUT``::

    OUT/config.json            task, dataset, labelers, distortions, seed (a rerun with others is refused)
    OUT/sources.jsonl          the pristine sources and their ground truth (augmented ones appended)
    OUT/images/<slug>/<key><codec suffix>   every distorted image, the codec's own bytes; the path is
                               derived from the source key made safe (:func:`imutility.paths.output_relpath`),
                               so it is always inside OUT and never shared by two sources
    OUT/cache/_images.jsonl    per chunk: distorted-image metadata and unreadable sources
    OUT/cache/<labeler>.jsonl  per chunk: the labeler's raw outputs for every (source, distortion)
    OUT/labels.parquet         one row per (source, distortion): see :func:`build_table`
    OUT/counts.csv, OUT/utility_by_level.png, OUT/stats.json

Work goes in chunks of a few sources. A chunk's raw outputs are appended to a labeler's cache as one
journal line once the whole chunk is done, so after ``kill -9`` a rerun redoes at most the chunk
in flight, with the same batches, and ends with the same table. Labels are computed from the caches
alone, so new thresholds or operators relabel in seconds (:func:`relabel`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imutility import atomic
from imutility.distort import Distortion, parse_distortion, seeded_rng
from imutility.images import ImageLoadError, load_image
from imutility.paths import check_unique_outputs, output_relpath
from imutility.utility import (
    COMBINE_OPS,
    PAPER_DET_IOU,
    PAPER_DET_SCORE,
    PAPER_TH,
    PAPER_TL,
    classification_label,
    combine,
    confidence_utility,
    detection_label,
    detection_utility,
)

PRISTINE = "pristine"
TOPK = 5
#: what a distorted image is judged against: the dataset's ground truth, or the pristine decisions
GROUND_TRUTH, PRISTINE_REFERENCE = "ground-truth", "pristine"
REFERENCES = (GROUND_TRUTH, PRISTINE_REFERENCE)


LabellingConfigError = atomic.ConfigMismatchError  # OUT holds a labelling run with other settings


@dataclass(frozen=True)
class Source:
    """One pristine image and its ground truth; ``augment`` makes it a virtual, augmented copy."""

    key: str
    path: str
    target: int | None = None  # classification
    boxes: tuple[tuple[float, float, float, float], ...] | None = None  # detection, xyxy
    labels: tuple[int, ...] | None = None
    augment: str | None = None
    distortions: tuple[str, ...] | None = None  # a subset of the run's (balancing); None = all

    def as_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> Source:
        d = dict(d)
        for k in ("boxes", "labels", "distortions"):
            if k in d:
                d[k] = tuple(tuple(x) if isinstance(x, list) else x for x in d[k])
        return cls(**d)


@dataclass(frozen=True)
class Thresholds:
    """Everything a relabel may change without running a model."""

    th: float = PAPER_TH
    tl: float = PAPER_TL
    phi_rec: float = 0.5
    det_score: float = PAPER_DET_SCORE
    det_iou: float = PAPER_DET_IOU
    require_pristine_hit: bool = False


def sources_from_classification(dataset) -> list[Source]:
    return [Source(key=s.key, path=str(s.path), target=int(s.target)) for s in dataset]


def sources_from_folder(folder: str | os.PathLike) -> list[Source]:
    """Every image under a folder, without ground truth (for ``reference="pristine"``)."""
    from imutility.images import list_images

    root = Path(folder)
    files = list_images(root)
    if not files:
        raise ValueError(f"no image files found in {root}")
    return [Source(key=p.relative_to(root).as_posix() if p != root else p.name, path=str(p)) for p in files]


def sources_from_coco(dataset) -> list[Source]:
    return [Source(key=s.key, path=str(s.path), boxes=tuple(map(tuple, np.round(s.boxes, 2).tolist())),
                   labels=tuple(int(x) for x in s.labels)) for s in dataset]


def sources_from_coco_files(annotation_files: Sequence[str | os.PathLike], limit: int | None = None
                            ) -> tuple[list[Source], list[str]]:
    """Sources of one or more COCO sets (keys prefixed by the set's folder when several) and what was skipped."""
    from imutility.datasets import CocoDetectionDataset

    sources: list[Source] = []
    skipped: list[str] = []
    for js in annotation_files:
        ds = CocoDetectionDataset.from_json(js)
        skipped += [f"{p}: listed in {js} but not on disk" for p in ds.missing]
        skipped += [f"{p}: not in the annotations of {js}" for p in ds.unannotated]
        srcs = sources_from_coco(ds)[:limit]
        if len(annotation_files) > 1:
            prefix = Path(js).parent.name
            srcs = [Source(key=f"{prefix}/{s.key}", path=s.path, boxes=s.boxes, labels=s.labels) for s in srcs]
        sources += srcs
    return sources, skipped


# --------------------------------------------------------------------------------------------- augmentation
def apply_augment(img: Image.Image, boxes: np.ndarray | None, spec: str | None
                  ) -> tuple[Image.Image, np.ndarray | None]:
    """``flip``, ``crop:<scale>:<seed>`` or both joined by ``+``; boxes follow the image."""
    if not spec:
        return img, boxes
    b = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    for step in spec.split("+"):
        if step == "flip":
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if b is not None:
                b[:, [0, 2]] = img.width - b[:, [2, 0]]
        elif step.startswith("crop:"):
            _, scale, seed = step.split(":")
            rng = np.random.default_rng(int(seed))
            w, h = max(1, round(img.width * float(scale))), max(1, round(img.height * float(scale)))
            x0, y0 = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
            img = img.crop((x0, y0, x0 + w, y0 + h))  # native resolution: no resampling
            if b is not None:
                b = b - [x0, y0, x0, y0]
                b = np.clip(b, 0, [w, h, w, h])
        else:
            raise ValueError(f"unknown augmentation {step!r} in {spec!r}")
    return img, b


def _augment_specs(i: int) -> str:
    """The i-th augmentation applied to a non-useful sample when balancing."""
    return ["flip", f"crop:0.85:{i}", f"flip+crop:0.85:{i}", f"crop:0.7:{i}", f"flip+crop:0.7:{i}"][i % 5]


# --------------------------------------------------------------------------------------------- the run
@dataclass
class LabelReport:
    out: Path
    n_sources: int
    n_rows: int
    errors: list[tuple[str, str]] = field(default_factory=list)
    labeler_errors: int = 0
    n_augmented: int = 0

    @property
    def table(self) -> Path:
        return self.out / "labels.parquet"


class _Chunk:
    """Loaded and distorted images of a few sources, ready for the labelers."""

    def __init__(self, sources: list[Source], images: list[Image.Image], items: list[tuple[str, str]],
                 meta: list[dict], errors: list[dict]):
        self.sources, self.images, self.items, self.meta, self.errors = sources, images, items, meta, errors


def _prepare_chunk(sources: list[Source], distortions: dict[str, Distortion], out: Path, seed: int) -> _Chunk:
    images, items, meta, errors, ok = [], [], [], [], []
    for src in sources:
        try:
            img = load_image(src.path)
        except ImageLoadError as e:
            errors.append({"k": src.key, "error": e.reason})
            continue
        img, _ = apply_augment(img, None, src.augment)
        ok.append(src)
        images.append(img)
        items.append((src.key, PRISTINE))
        for spec in src.distortions or distortions:
            d = distortions[spec]
            res = d(img, seeded_rng(seed, src.key, spec) if d.random else None)
            rel = Path("images") / d.slug / output_relpath(src.key, res.suffix)
            atomic.write_bytes(out / rel, res.data, durable=False)  # always: never trust a file left there
            images.append(res.image)
            items.append((src.key, spec))
            meta.append({"k": src.key, "d": spec, "path": rel.as_posix(), "bytes": len(res.data),
                         "bpp": round(res.bpp, 6), "w": img.width, "h": img.height})
    return _Chunk(ok, images, items, meta, errors)


def _records(labeler, chunk: _Chunk, targets: dict[str, int | None]) -> tuple[list[dict], int]:
    """Run one labeler on a chunk; on failure retry image by image so one bad image loses only itself."""
    try:
        outputs = labeler(chunk.images)
        failed: dict[int, str] = {}
    except Exception:  # noqa: BLE001 - a labeler may fail on one odd image; isolate it below
        outputs, failed = [], {}
        for i, img in enumerate(chunk.images):
            try:
                outputs.append(labeler([img])[0])
            except Exception as e:  # noqa: BLE001
                outputs.append(None)
                failed[i] = f"{type(e).__name__}: {e}"
    recs = []
    own_top1: dict[str, int] = {}  # the labeler's pristine decision per source (pristine comes first in a chunk)
    for i, (key, dist) in enumerate(chunk.items):
        if i in failed:
            recs.append({"k": key, "d": dist, "error": failed[i]})
            continue
        out = outputs[i]
        if labeler.task == "classification":
            p = np.asarray(out, dtype=np.float64)
            top = np.argsort(-p)[:TOPK]
            if dist == PRISTINE:
                own_top1[key] = int(top[0])
            t, r = targets.get(key), own_top1.get(key)
            recs.append({"k": key, "d": dist, "top": top.tolist(), "p": np.round(p[top], 6).tolist(),
                         "pt": None if t is None else round(float(p[t]), 6),
                         "pr": None if r is None else round(float(p[r]), 6)})
        else:
            recs.append({"k": key, "d": dist, "b": np.round(out.boxes, 1).tolist(),
                         "l": out.labels.astype(int).tolist(), "s": np.round(out.scores, 5).tolist()})
    return recs, len(failed)


def read_outputs(out: str | os.PathLike, labeler: str) -> dict[tuple[str, str], dict]:
    """A labeler's cached raw outputs in a labelling folder, by (source key, distortion spec or PRISTINE).

    Classification records hold ``top``/``p`` (top-5 classes and probabilities) and ``pt`` (probability
    of the target); detection records ``b`` (xyxy boxes), ``l`` (COCO ids), ``s`` (scores); failures ``error``.
    """
    return _read_cache(Path(out) / "cache" / f"{labeler}.jsonl")


def _read_cache(path: Path, strict: bool = False) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for line in atomic.Journal(path).read(strict=strict):
        for r in line.get("records", []):
            out[(r["k"], r["d"])] = r
    return out


def run_labelling(task: str, sources: Sequence[Source], distortions: Sequence[Distortion], labelers: Sequence,
                  out: str | os.PathLike, dataset: str = "", seed: int = 0, thresholds: Thresholds = Thresholds(),
                  chunk_size: int = 8, balance: bool = False, progress: bool = True,
                  on_error: Callable[[str, str], None] | None = None, held_out: Sequence = (),
                  reference: str = GROUND_TRUTH) -> LabelReport:
    """Distort, run every labeler, cache raw outputs, then build the table and statistics.

    ``held_out`` networks run on every image like the labelers and get the same columns, but take no
    part in the combined label (the unseen networks a predictor is judged on). ``reference``:
    ``"ground-truth"`` (the dataset's classes or boxes) or ``"pristine"`` (no ground truth needed: the
    reference class is the labelers' agreed pristine top-1, images where they disagree are excluded;
    for detection each network's confident pristine detections are its reference objects).
    """
    out = Path(out)
    if task not in ("classification", "detection"):
        raise ValueError(f"task must be classification or detection, got {task!r}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    wrong = [lab.name for lab in (*labelers, *held_out) if lab.task != task]
    if wrong:
        raise ValueError(f"labelers {wrong} are not {task} labelers")
    both = {lab.name for lab in labelers} & {lab.name for lab in held_out}
    if both:
        raise ValueError(f"{sorted(both)} cannot both label and be held out")
    if reference == GROUND_TRUTH and task == "classification" and any(s.target is None for s in sources):
        raise ValueError("some sources have no class label: use reference='pristine' (`--reference pristine`) "
                         "to label photos without ground truth")
    specs = {d.spec: d for d in distortions}
    config = {"task": task, "dataset": dataset, "labelers": [lab.name for lab in labelers],
              "distortions": list(specs), "seed": seed}
    if held_out:  # only when used: runs made before these settings existed resume unchanged
        config["held_out"] = [lab.name for lab in held_out]
    if reference != GROUND_TRUTH:
        config["reference"] = reference
    atomic.check_or_write_config(out / "config.json", config)
    atomic.remove_stale_temps(out)  # what a killed run was writing
    labelers = [*labelers, *held_out]
    sources = list(sources)
    check_unique_outputs(s.key for s in sources)
    _write_sources(out, sources)

    errors, lab_err = _process(sources, specs, labelers, out, seed, chunk_size, progress, "label", on_error)
    n_aug = 0
    if balance:
        table = build_table(out, thresholds)
        aug = balancing_sources(table, sources)
        if aug:
            _write_sources(out, sources + aug)
            e2, l2 = _process(aug, specs, labelers, out, seed, chunk_size, progress, "balance", on_error)
            errors += e2
            lab_err += l2
            n_aug = len(aug)
    table = build_table(out, thresholds)
    write_outputs(out, table, config["labelers"] + config.get("held_out", []))
    return LabelReport(out=out, n_sources=len(sources), n_rows=len(table), errors=errors,
                       labeler_errors=lab_err, n_augmented=n_aug)


def _process(sources: list[Source], specs: dict[str, Distortion], labelers: Sequence, out: Path, seed: int,
             chunk_size: int, progress: bool, desc: str, on_error) -> tuple[list[tuple[str, str]], int]:
    from tqdm.auto import tqdm

    cache_dir = out / "cache"
    meta_journal = atomic.Journal(cache_dir / "_images.jsonl")
    journals = {lab.name: atomic.Journal(cache_dir / f"{lab.name}.jsonl") for lab in labelers}
    done_meta = {r["k"] for line in meta_journal.read() for r in line.get("records", [])}
    done_err = {r["k"]: r["error"] for line in meta_journal.read() for r in line.get("errors", [])}
    cached = {name: _read_cache(j.path) for name, j in journals.items()}
    targets = {s.key: s.target for s in sources}

    def needed(src: Source) -> list[tuple[str, str]]:
        return [(src.key, PRISTINE)] + [(src.key, d) for d in (src.distortions or specs)]

    def complete(chunk_sources: list[Source], name: str) -> bool:
        return all(item in cached[name] for s in chunk_sources if s.key not in done_err for item in needed(s))

    chunks = [sources[i:i + chunk_size] for i in range(0, len(sources), chunk_size)]
    todo = [c for c in chunks if not all(s.key in done_meta or s.key in done_err for s in c)
            or not all(complete(c, lab.name) for lab in labelers)]
    errors = [(k, e) for k, e in done_err.items() if k in targets]
    lab_err = 0
    bar = tqdm(total=len(sources), initial=len(sources) - sum(len(c) for c in todo), unit="src", desc=desc,
               disable=not progress, dynamic_ncols=True)
    # Images for chunk k+1 are read and distorted in a thread while the labelers run on chunk k
    # (Pillow releases the GIL in its codecs, the labelers use both cores).
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pending: Future | None = pool.submit(_prepare_chunk, todo[0], specs, out, seed) if todo else None
        for i, chunk_sources in enumerate(todo):
            chunk = pending.result()
            pending = pool.submit(_prepare_chunk, todo[i + 1], specs, out, seed) if i + 1 < len(todo) else None
            for lab in labelers:
                if complete(chunk.sources, lab.name) and chunk.sources:
                    continue
                recs, n_failed = _records(lab, chunk, targets)
                lab_err += n_failed
                journals[lab.name].append({"records": recs})
                cached[lab.name].update({(r["k"], r["d"]): r for r in recs})
            meta_journal.append({"records": chunk.meta, "errors": chunk.errors})
            for e in chunk.errors:
                errors.append((e["k"], e["error"]))
                if on_error is not None:
                    on_error(e["k"], e["error"])
            bar.update(len(chunk_sources))
    finally:
        pool.shutdown(wait=True)
        bar.close()
        for j in (meta_journal, *journals.values()):
            j.close()
    for j in (meta_journal, *journals.values()):  # damaged lines' work was redone above: drop the lines
        j.compact()
    return errors, lab_err


def _write_sources(out: Path, sources: Sequence[Source]) -> None:
    atomic.write_text(out / "sources.jsonl", "".join(json.dumps(s.as_json()) + "\n" for s in sources))


def read_sources(out: Path) -> list[Source]:
    return [Source.from_json(json.loads(line)) for line in (out / "sources.jsonl").read_text().splitlines() if line]


def balancing_sources(table, sources: Sequence[Source], max_per_sample: int = 5) -> list[Source]:
    """Augmented copies of non-useful samples until the combined classes would balance (the paper's recipe).

    Each copy augments the PRISTINE image (flip / native-resolution crop), is distorted at the same
    level and is relabelled by the ensemble, so its label is measured, not assumed.
    """
    by_key = {s.key: s for s in sources}
    zeros = table[(table["label"] == 0) & table["augment"].isna()][["key", "distortion"]].values.tolist()
    deficit = int((table["label"] == 1).sum() - (table["label"] == 0).sum())
    if deficit <= 0 or not zeros:
        return []
    out: list[Source] = []
    sizes: dict[str, tuple[int, int]] = {}  # each photo is decoded once, however many copies it gets
    for rnd in range(max_per_sample):
        for key, dist in zeros:
            if len(out) >= deficit:
                return out
            src = by_key[key]
            aug = _augment_specs(rnd)
            boxes = src.boxes
            if boxes is not None and src.labels is not None:
                if key not in sizes:
                    sizes[key] = load_image(src.path).size  # EXIF-oriented, as the pipeline sees it
                size = sizes[key]
                boxes = tuple(map(tuple, _augment_boxes(np.asarray(boxes), aug, size).round(2).tolist()))
            out.append(Source(key=f"{key}#{aug}@{dist}", path=src.path, target=src.target, boxes=boxes,
                              labels=src.labels, augment=aug, distortions=(dist,)))
    return out


def _augment_boxes(boxes: np.ndarray, aug: str, size: tuple[int, int]) -> np.ndarray:
    """Boxes through :func:`apply_augment`, on a blank stand-in of the image's size."""
    dummy = Image.new("L", size)
    _, b = apply_augment(dummy, boxes, aug)
    return b


# --------------------------------------------------------------------------------------------- the table
def build_table(out: str | os.PathLike, thresholds: Thresholds = Thresholds()):
    """Labels from the caches alone. One row per (source, distortion) with, for every labeler ``L``:

    classification: ``L.pristine_top5``/``L.pristine_p5``, ``L.top5``/``L.p5``, ``L.pristine_pred``,
    ``L.pred`` (nullable integers: ``<NA>`` where the labeler failed), ``L.phi_ref`` (pristine
    probability of the true class), ``L.ccsp`` (= phi, distorted),
    ``L.utility`` (Eq. 2), ``L.label`` (Eq. 5);
    detection: ``L.phi_g_ref``/``L.phi_g`` (per ground-truth object, best same-label score at IoU >=
    det_iou), ``L.iou_g`` (per object, best IoU of a same-label detection scoring >= det_score on the
    distorted image), ``L.phi_ref``/``L.phi`` (their means), ``L.found`` (share found), ``L.utility``,
    ``L.label`` (Eq. 6);
    and the combined ``utility_mean|max|min``, ``label_unanimous|majority`` (``label`` = unanimous,
    the paper's rule), ``confidence_mean`` (the labelers' mean ``ccsp`` / ``phi`` on the distorted
    image) and ``retained_mean`` (their mean share of the pristine confidence kept, ``min(1, phi / phi')``):
    dense targets that, unlike the label, nearly every image has. Held-out networks get the same
    per-network columns and take no part in the combined ones. Missing outputs (a labeler failed on
    that image) are NaN. With ``reference = "pristine"`` the ``target`` is the labelers' agreed pristine
    top-1 class (``<NA>`` where they disagree: those rows are excluded).
    """
    import pandas as pd

    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    task, names = config["task"], config["labelers"]
    everyone = names + config.get("held_out", [])
    reference = config.get("reference", GROUND_TRUTH)
    sources = {s.key: s for s in read_sources(out)}
    meta = [r for line in atomic.Journal(out / "cache" / "_images.jsonl").read(strict=True)
            for r in line.get("records", [])]
    meta = list({(r["k"], r["d"]): r for r in meta if r["k"] in sources}.values())
    order = {d: i for i, d in enumerate(config["distortions"])}
    key_order = {k: i for i, k in enumerate(sources)}
    meta.sort(key=lambda r: (key_order[r["k"]], order.get(r["d"], 1 << 30)))
    caches = {n: _read_cache(out / "cache" / f"{n}.jsonl", strict=True) for n in everyone}

    rows: dict[str, list] = {
        "key": [r["k"] for r in meta],
        "source": [sources[r["k"]].path for r in meta],
        "augment": [sources[r["k"]].augment for r in meta],
        "distortion": [r["d"] for r in meta],
        "level": [parse_distortion(r["d"]).level for r in meta],
        "path": [r["path"] for r in meta],
        "bytes": [r["bytes"] for r in meta],
        "bpp": [r["bpp"] for r in meta],
    }
    labels = np.full((len(meta), len(everyone)), np.nan)
    utils = np.full((len(meta), len(everyone)), np.nan)
    conf = np.full((len(meta), len(everyone)), np.nan)
    kept = np.full((len(meta), len(everyone)), np.nan)
    if task == "classification":
        if reference == PRISTINE_REFERENCE:
            agreed = _agreed_pristine_class([caches[n] for n in names], list(sources))
            rows["target"] = pd.array([agreed.get(r["k"]) for r in meta], dtype="Int64")
        else:
            rows["target"] = [sources[r["k"]].target for r in meta]
        targets = np.asarray(pd.array(rows["target"], dtype="Int64").to_numpy(dtype=np.float64, na_value=np.nan))
        for j, n in enumerate(everyone):
            _classification_columns(rows, n, meta, caches[n], targets, thresholds, labels, utils, j,
                                    ground_truth=reference == GROUND_TRUTH)
            conf[:, j] = rows[f"{n}.ccsp"]
            kept[:, j] = _retained(rows[f"{n}.ccsp"], rows[f"{n}.phi_ref"])
    else:
        rows["n_gt"] = [len(sources[r["k"]].labels or ()) for r in meta]
        for j, n in enumerate(everyone):
            _detection_columns(rows, n, meta, sources, caches[n], thresholds, labels, utils, j,
                               pristine_reference=reference == PRISTINE_REFERENCE)
            conf[:, j] = rows[f"{n}.phi"]
            kept[:, j] = _retained(rows[f"{n}.phi"], rows[f"{n}.phi_ref"])
    labels, utils, conf, kept = (a[:, :len(names)] for a in (labels, utils, conf, kept))  # labelers only
    rows["confidence_mean"] = combine(conf, "mean") if len(meta) else []
    rows["retained_mean"] = combine(kept, "mean") if len(meta) else []
    for op in ("mean", "max", "min"):
        rows[f"utility_{op}"] = combine(utils, op) if len(meta) else []
    for op in ("unanimous", "majority"):
        rows[f"label_{op}"] = combine(labels, op) if len(meta) else []
    rows["label"] = rows["label_unanimous"]
    return pd.DataFrame(rows)


def _pair(cache: dict, key: str, dist: str) -> tuple[dict | None, dict | None]:
    r0, r1 = cache.get((key, PRISTINE)), cache.get((key, dist))
    if r0 is None or r1 is None or "error" in r0 or "error" in r1:
        return None, None
    return r0, r1


def _retained(phi, phi_ref) -> np.ndarray:
    """``min(1, phi / phi')``: the share of its pristine confidence a network keeps (NaN where phi' = 0)."""
    phi, phi_ref = np.asarray(phi, dtype=np.float64), np.asarray(phi_ref, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(phi_ref > 0, np.clip(phi / phi_ref, 0.0, 1.0), np.nan)


def _agreed_pristine_class(caches: list[dict], keys: list[str]) -> dict[str, int]:
    """Per source, the pristine top-1 class all labelers agree on (sources where they disagree are absent)."""
    out = {}
    for k in keys:
        tops = {c.get((k, PRISTINE), {}).get("top", [None])[0] for c in caches}
        if len(tops) == 1 and None not in tops:
            out[k] = int(tops.pop())
    return out


def _class_probability(record: dict, cls: int, own_pristine_top1: int, is_ground_truth: bool) -> float | None:
    """A network's probability of ``cls`` from its cached record: exact when ``cls`` is the ground truth
    (``pt``) or the network's own pristine top-1 (``pr``), else read from its top-5; None when unknown."""
    if is_ground_truth:
        return None if record.get("pt") is None else float(record["pt"])
    if cls == own_pristine_top1 and record.get("pr") is not None:
        return float(record["pr"])
    if cls in record["top"]:
        return float(record["p"][record["top"].index(cls)])
    return None


def _classification_columns(rows, n, meta, cache, targets, th: Thresholds, labels, utils, j,
                            ground_truth: bool = True) -> None:
    import pandas as pd

    m = len(meta)
    cols = {c: [None] * m for c in ("pristine_top5", "pristine_p5", "top5", "p5")}
    p0 = np.full(m, -1)
    p1 = np.full(m, -2)
    phi = np.full(m, np.nan)
    phi_ref = np.full(m, np.nan)
    ok = np.zeros(m, dtype=bool)
    for i, r in enumerate(meta):
        r0, r1 = _pair(cache, r["k"], r["d"])
        if r0 is None or not np.isfinite(targets[i]):
            continue
        t = int(targets[i])
        f1 = _class_probability(r1, t, r0["top"][0], ground_truth)
        f0 = _class_probability(r0, t, r0["top"][0], ground_truth)
        if f1 is None or f0 is None:
            continue
        ok[i] = True
        cols["pristine_top5"][i], cols["pristine_p5"][i] = r0["top"], r0["p"]
        cols["top5"][i], cols["p5"][i] = r1["top"], r1["p"]
        p0[i], p1[i] = r0["top"][0], r1["top"][0]
        phi[i], phi_ref[i] = f1, f0
    for c, v in cols.items():
        rows[f"{n}.{c}"] = v
    # a failed output is missing (<NA>), never a class index: it must not count as a wrong answer
    rows[f"{n}.pristine_pred"] = pd.arrays.IntegerArray(np.where(ok, p0, 0).astype(np.int64), mask=~ok)
    rows[f"{n}.pred"] = pd.arrays.IntegerArray(np.where(ok, p1, 0).astype(np.int64), mask=~ok)
    rows[f"{n}.phi_ref"] = phi_ref
    rows[f"{n}.ccsp"] = phi
    if m:
        lab = classification_label(p0, p1, np.nan_to_num(targets, nan=-3).astype(np.int64), np.where(ok, phi, 0.0),
                                   th.th, th.tl)
        util = confidence_utility(np.where(ok, phi, 0.0), np.where(ok, phi_ref, 0.0), th.phi_rec)
        labels[:, j] = np.where(ok, lab, np.nan)
        utils[:, j] = np.where(ok, util, np.nan)
    rows[f"{n}.utility"] = utils[:, j].copy()
    rows[f"{n}.label"] = labels[:, j].copy()


def _detection_columns(rows, n, meta, sources, cache, th: Thresholds, labels, utils, j,
                       pristine_reference: bool = False) -> None:
    import torch
    from torchvision.ops import box_iou

    from imutility.utility import match_scores

    m = len(meta)
    cols = {c: [None] * m for c in ("phi_g_ref", "phi_g", "iou_g")}
    num = {c: np.full(m, np.nan) for c in ("phi_ref", "phi", "found")}
    for i, r in enumerate(meta):
        r0, r1 = _pair(cache, r["k"], r["d"])
        if r0 is None:
            continue
        src = sources[r["k"]]
        d0 = {"boxes": np.asarray(r0["b"], np.float64).reshape(-1, 4), "labels": np.asarray(r0["l"], np.int64),
              "scores": np.asarray(r0["s"], np.float64)}
        if pristine_reference:  # the network's own confident pristine detections are the reference objects
            confident = d0["scores"] >= th.det_score
            gt_b, gt_l = d0["boxes"][confident], d0["labels"][confident]
        else:
            gt_b = np.asarray(src.boxes or (), dtype=np.float64).reshape(-1, 4)
            gt_l = np.asarray(src.labels or (), dtype=np.int64)
        d1 = {"boxes": np.asarray(r1["b"], np.float64).reshape(-1, 4), "labels": np.asarray(r1["l"], np.int64),
              "scores": np.asarray(r1["s"], np.float64)}
        labels[i, j] = detection_label(gt_b, gt_l, d0, d1, th.det_score, th.det_iou, th.require_pristine_hit)
        u = detection_utility(gt_b, gt_l, d0, d1, th.det_iou, th.phi_rec)
        utils[i, j] = u["utility"]
        for c in num:
            num[c][i] = u[c]
        cols["phi_g_ref"][i] = np.round(match_scores(gt_b, gt_l, **d0, iou_threshold=th.det_iou), 5).tolist()
        cols["phi_g"][i] = np.round(match_scores(gt_b, gt_l, **d1, iou_threshold=th.det_iou), 5).tolist()
        keep = d1["scores"] >= th.det_score
        if len(gt_b) and keep.any():
            iou = box_iou(torch.from_numpy(gt_b), torch.from_numpy(d1["boxes"][keep])).numpy()
            same = gt_l[:, None] == d1["labels"][keep][None, :]
            cols["iou_g"][i] = np.round(np.where(same, iou, 0.0).max(1), 4).tolist()
        else:
            cols["iou_g"][i] = [0.0] * len(gt_b)
    for c, v in cols.items():
        rows[f"{n}.{c}"] = v
    for c, v in num.items():
        rows[f"{n}.{c}"] = v
    rows[f"{n}.utility"] = utils[:, j].copy()
    rows[f"{n}.label"] = labels[:, j].copy()


# --------------------------------------------------------------------------------------------- outputs
def label_counts(table, names: Iterable[str]):
    """Useful / non-useful / excluded per level, per labeler and combined."""
    import pandas as pd

    recs = []
    for who in [*names, "combined"]:
        col = "label" if who == "combined" else f"{who}.label"
        for level, grp in table.groupby("distortion", sort=False):
            v = grp[col]
            recs.append({"labeler": who, "distortion": level, "level": float(grp["level"].iloc[0]),
                         "useful": int((v == 1).sum()), "non_useful": int((v == 0).sum()),
                         "excluded": int(v.isna().sum()), "n": len(v)})
    return pd.DataFrame(recs)


def write_outputs(out: Path, table, names: Sequence[str]) -> None:
    """labels.parquet, counts.csv, stats.json and utility_by_level.png, each written atomically."""
    atomic.write_parquet(out / "labels.parquet", table)
    counts = label_counts(table, names)
    atomic.write_text(out / "counts.csv", counts.to_csv(index=False))
    combined = counts[counts["labeler"] == "combined"]
    stats = {"rows": len(table), "useful": int(combined["useful"].sum()),
             "non_useful": int(combined["non_useful"].sum()), "excluded": int(combined["excluded"].sum()),
             "per_labeler": {n: {"useful": int((table[f"{n}.label"] == 1).sum()),
                                 "non_useful": int((table[f"{n}.label"] == 0).sum()),
                                 "excluded": int(table[f"{n}.label"].isna().sum())} for n in names}}
    atomic.write_json(out / "stats.json", stats)
    plot_utility_by_level(table, counts, out / "utility_by_level.png")


def plot_utility_by_level(table, counts, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(dict.fromkeys(table["distortion"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    data = [table.loc[table["distortion"] == d, "utility_mean"].dropna().to_numpy() for d in levels]
    ax1.boxplot([d if len(d) else [np.nan] for d in data], showfliers=False)
    ax1.set_xticks(range(1, len(levels) + 1), levels, rotation=45, ha="right")
    ax1.axhline(0, color="grey", lw=0.8, ls="--")
    ax1.set_xlabel("distortion level")
    ax1.set_ylabel("mean utility over labelers (Eq. 2)")
    ax1.set_title("Continuous utility per level")
    comb = counts[counts["labeler"] == "combined"].set_index("distortion").loc[levels]
    x = np.arange(len(levels))
    ax2.bar(x, comb["useful"], label="useful (1)", color="tab:green")
    ax2.bar(x, comb["non_useful"], bottom=comb["useful"], label="non-useful (0)", color="tab:red")
    ax2.bar(x, comb["excluded"], bottom=comb["useful"] + comb["non_useful"], label="excluded", color="lightgrey")
    ax2.set_xticks(x, levels, rotation=45, ha="right")
    ax2.set_xlabel("distortion level")
    ax2.set_ylabel("images")
    ax2.set_title("Combined (unanimous) labels per level")
    ax2.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def relabel(out: str | os.PathLike, thresholds: Thresholds = Thresholds()):
    """Recompute every label from the cached outputs with new thresholds; rewrites the outputs."""
    out = Path(out)
    table = build_table(out, thresholds)
    config = json.loads((out / "config.json").read_text())
    write_outputs(out, table, config["labelers"] + config.get("held_out", []))
    return table


__all__ = ["COMBINE_OPS", "GROUND_TRUTH", "PRISTINE_REFERENCE", "REFERENCES", "LabelReport", "Source", "Thresholds",
           "build_table", "label_counts", "relabel", "run_labelling", "sources_from_classification",
           "sources_from_coco", "sources_from_folder"]
