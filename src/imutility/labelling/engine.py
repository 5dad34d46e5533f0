"""The labelling run: chunks of sources distorted, every labeler run, raw outputs cached as journal lines.

What a labeler's output is cached as belongs to its task (:meth:`imutility.tasks.Task.records`); this module
only runs the labelers, isolates a failure to the image that caused it, and resumes from the caches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from imutility import atomic
from imutility.distort import Distortion, seeded_rng
from imutility.images import ImageLoadError, load_image
from imutility.labelling.augment import apply_augment, balancing_sources
from imutility.labelling.store import read_cache, write_sources
from imutility.labelling.table import build_table, write_outputs
from imutility.paths import check_unique_outputs, output_relpath
from imutility.tasks import GROUND_TRUTH, PAPER_THRESHOLDS, PRISTINE, REFERENCES, Source, Thresholds, get_task

LabellingConfigError = atomic.ConfigMismatchError  # OUT holds a labelling run with other settings


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
    """Run one labeler on a chunk; on failure retry image by image so one bad image loses only itself.
    The records' schema is the labeler's task's (:meth:`imutility.tasks.Task.records`)."""
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
    return get_task(labeler.task).records(chunk.items, outputs, failed, targets), len(failed)


def run_labelling(task: str, sources: Sequence[Source], distortions: Sequence[Distortion], labelers: Sequence,
                  out: str | os.PathLike, dataset: str = "", seed: int = 0, thresholds: Thresholds = PAPER_THRESHOLDS,
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
    spec_task = get_task(task)
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    wrong = [lab.name for lab in (*labelers, *held_out) if lab.task != task]
    if wrong:
        raise ValueError(f"labelers {wrong} are not {task} labelers")
    both = {lab.name for lab in labelers} & {lab.name for lab in held_out}
    if both:
        raise ValueError(f"{sorted(both)} cannot both label and be held out")
    spec_task.check_sources(sources, reference)
    spec_task.check_labelers([*labelers, *held_out], reference)
    specs = {d.spec: d for d in distortions}
    config = {"task": task, "dataset": dataset, "labelers": [lab.name for lab in labelers],
              "distortions": list(specs), "seed": seed}
    if held_out:  # only when used: runs made before these settings existed resume unchanged
        config["held_out"] = [lab.name for lab in held_out]
    if reference != GROUND_TRUTH:
        config["reference"] = reference
    custom = {lab.name: lab.spec.weights.sha256 for lab in (*labelers, *held_out) if lab.spec.custom}
    if custom:  # a user's network is known by its file, not only its name: a changed file is a different run
        config["custom_labelers"] = custom
    atomic.check_or_write_config(out / "config.json", config)
    atomic.remove_stale_temps(out)  # what a killed run was writing
    labelers = [*labelers, *held_out]
    sources = list(sources)
    check_unique_outputs(s.key for s in sources)
    write_sources(out, sources)

    errors, lab_err = _process(sources, specs, labelers, out, seed, chunk_size, progress, "label", on_error)
    n_aug = 0
    if balance:
        table = build_table(out, thresholds)
        aug = balancing_sources(table, sources)
        if aug:
            write_sources(out, sources + aug)
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
    cached = {name: read_cache(j.path) for name, j in journals.items()}
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
