"""The labelling run: chunks of sources distorted, every labeler run, raw outputs cached as journal lines.

This module checks a run's settings, works out from the caches what is not finished, hands those chunks to
an engine (:mod:`.chunks`: in this process; :mod:`.ray_engine`: on a Ray cluster) and journals what comes
back. What a labeler's output is cached as belongs to its task (:meth:`imutility.tasks.Task.records`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imutility import atomic
from imutility.distort import Distortion
from imutility.errors import SettingError
from imutility.labelling.augment import balancing_sources
from imutility.labelling.chunks import LocalEngine, write_files
from imutility.labelling.jrq import write_jrq
from imutility.labelling.store import read_cache, write_sources
from imutility.labelling.table import build_table, write_outputs
from imutility.paths import check_unique_outputs
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


def run_labelling(task: str, sources: Sequence[Source], distortions: Sequence[Distortion], labelers: Sequence,
                  out: str | os.PathLike, dataset: str = "", seed: int = 0, thresholds: Thresholds = PAPER_THRESHOLDS,
                  chunk_size: int = 8, balance: bool = False, progress: bool = True,
                  on_error: Callable[[str, str], None] | None = None, held_out: Sequence = (),
                  reference: str = GROUND_TRUTH, engine=None) -> LabelReport:
    """Distort, run every labeler, cache raw outputs, then build the table and statistics.

    ``held_out`` networks run on every image like the labelers and get the same columns, but take no
    part in the combined label (the unseen networks a predictor is judged on). ``reference``:
    ``"ground-truth"`` (the dataset's classes or boxes) or ``"pristine"`` (no ground truth needed: the
    reference class is the labelers' agreed pristine top-1, images where they disagree are excluded;
    for detection each network's confident pristine detections are its reference objects).

    ``engine`` runs the chunks: :class:`~imutility.labelling.chunks.LocalEngine` (the default: this process) or
    :class:`~imutility.labelling.ray_engine.RayEngine` (a Ray Data pipeline, on one machine or a cluster). The
    folder, the resumption rule and the table are the same for both.
    """
    out = Path(out)
    spec_task = get_task(task)
    if reference not in REFERENCES:
        raise SettingError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    wrong = [lab.name for lab in (*labelers, *held_out) if lab.task != task]
    if wrong:
        raise SettingError(f"labelers {wrong} are not {task} labelers")
    both = {lab.name for lab in labelers} & {lab.name for lab in held_out}
    if both:
        raise SettingError(f"{sorted(both)} cannot both label and be held out")
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

    engine = engine if engine is not None else LocalEngine()
    errors, lab_err = _process(sources, specs, labelers, out, seed, chunk_size, progress, "label", on_error, engine)
    n_aug = 0
    if balance:
        table = build_table(out, thresholds)
        aug = balancing_sources(table, sources)
        if aug:
            write_sources(out, sources + aug)
            e2, l2 = _process(aug, specs, labelers, out, seed, chunk_size, progress, "balance", on_error, engine)
            errors += e2
            lab_err += l2
            n_aug = len(aug)
    table = build_table(out, thresholds)
    write_outputs(out, table, config["labelers"] + config.get("held_out", []))
    write_jrq(out, thresholds.retention)
    return LabelReport(out=out, n_sources=len(sources), n_rows=len(table), errors=errors,
                       labeler_errors=lab_err, n_augmented=n_aug)


def _process(sources: list[Source], specs: dict[str, Distortion], labelers: Sequence, out: Path, seed: int,
             chunk_size: int, progress: bool, desc: str, on_error, engine) -> tuple[list[tuple[str, str]], int]:
    """Work out which chunks (and which of their labelers) are not finished, let ``engine`` run them, and
    journal each finished chunk: its files first, then every labeler's records, then the chunk's metadata
    line (what marks it done)."""
    from tqdm.auto import tqdm

    cache_dir = out / "cache"
    meta_journal = atomic.Journal(cache_dir / "_images.jsonl")
    journals = {lab.name: atomic.Journal(cache_dir / f"{lab.name}.jsonl") for lab in labelers}
    done_meta = {r["k"] for line in meta_journal.read() for r in line.get("records", [])}
    done_err = {r["k"]: r["error"] for line in meta_journal.read() for r in line.get("errors", [])}
    cached = {name: set(read_cache(j.path)) for name, j in journals.items()}
    keys = {s.key for s in sources}

    def needed(src: Source) -> list[tuple[str, str]]:
        return [(src.key, PRISTINE)] + [(src.key, d) for d in (src.distortions or specs)]

    def complete(chunk_sources: list[Source], name: str) -> bool:
        return all(item in cached[name] for s in chunk_sources if s.key not in done_err for item in needed(s))

    chunks = [sources[i:i + chunk_size] for i in range(0, len(sources), chunk_size)]
    todo, need = [], []
    for c in chunks:
        missing = [lab.name for lab in labelers if not complete(c, lab.name)]
        if missing or not all(s.key in done_meta or s.key in done_err for s in c):
            todo.append(c)
            need.append(missing)
    errors = [(k, e) for k, e in done_err.items() if k in keys]
    lab_err = 0
    bar = tqdm(total=len(sources), initial=len(sources) - sum(len(c) for c in todo), unit="src", desc=desc,
               disable=not progress, dynamic_ncols=True)
    try:
        for result in engine.run(todo, need, specs, labelers, out, seed):
            write_files(out, result.files)
            for name, (recs, n_failed) in result.records.items():
                lab_err += n_failed
                journals[name].append({"records": recs})
            meta_journal.append({"records": result.meta, "errors": result.errors})
            for e in result.errors:
                errors.append((e["k"], e["error"]))
                if on_error is not None:
                    on_error(e["k"], e["error"])
            bar.update(len(result.sources))
    finally:
        bar.close()
        for j in (meta_journal, *journals.values()):
            j.close()
    for j in (meta_journal, *journals.values()):  # damaged lines' work was redone above: drop the lines
        j.compact()
    return errors, lab_err
