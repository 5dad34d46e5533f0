"""``imutility filter``: keep the images of a folder that a predictor finds useful.

``OUT`` ends up holding exactly the kept images (and, with a pristine folder, the pristine versions of
the filtered ones) at their relative paths, plus ``OUT/filter.csv`` with one row per source file (path,
score, decision, output). A pristine version takes the filtered image's path with its own suffix (``a.jpg`` ->
``a.png``), unless another source of SRC has that path (``a.png`` beside ``a.jpg``): then it is appended
(``a.jpg.png``), so that nothing kept is ever overwritten. The bytes written are the bytes that were
scored: each file is read once. A rerun into the same ``OUT`` replaces the earlier run's outputs (files it
wrote and no longer keeps are removed); any other non-empty ``OUT`` is refused, as is an ``OUT`` inside
``SRC`` (it would be read back as input).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imutility import atomic
from imutility.errors import InvalidInputError, SettingError
from imutility.images import ImageLoadError, list_images, read_file
from imutility.jobs.folder import FolderJob, refuse_out_inside_src
from imutility.paths import name_too_long, output_relpath

REPORT = "filter.csv"
FIELDS = ("path", "score", "decision", "output")


@dataclass
class FilterReport:
    out: Path
    kept: int = 0
    replaced: int = 0
    filtered: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def _check_out(src: Path, out: Path) -> set[str]:
    """Refuse an OUT that would mix with other files; return the outputs of an earlier run in it."""
    refuse_out_inside_src(src, out)
    if not out.exists():
        return set()
    if not out.is_dir():
        raise InvalidInputError(f"OUT {out} exists and is not a folder")
    report = out / REPORT
    if report.is_file():
        with open(report, newline="") as f:
            return {r["output"] for r in csv.DictReader(f) if r.get("output")}
    if any(out.iterdir()):
        raise InvalidInputError(f"OUT {out} is not empty and holds no earlier filter run ({REPORT}); "
                                "choose an empty folder")
    return set()


def _pristine_index(root: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for p in list_images(root):
        index.setdefault(p.relative_to(root).with_suffix("").as_posix(), []).append(p)
    return index


def replacement_path(key: str, suffix: str, taken: set[str]) -> str | None:
    """Where the pristine version (``suffix``) of the filtered source ``key`` goes: ``key`` with that suffix, or,
    when a source holds that path (``taken``), ``key`` with it appended; None when that is taken too, or too
    long a name."""
    for path in (Path(key).with_suffix(suffix).as_posix(), output_relpath(key, suffix)):
        if (path == key or path not in taken) and name_too_long(path) is None:
            return path
    return None


def filter_folder(src: str | os.PathLike, out: str | os.PathLike, predictor, min_utility: float = 0.5,
                  replace_with_pristine: str | os.PathLike | None = None, batch_size: int = 32,
                  on_error: Callable[[str, str], None] | None = None, workers: int = 0,
                  progress: bool = False) -> FilterReport:
    """See the module doc. ``min_utility`` must lie in [0, 1] for a binary (P(useful)) predictor; ``workers``
    processes decode beside the network (:meth:`Predictor.predict_stream`)."""
    from tqdm.auto import tqdm

    src, out = Path(src), Path(out)
    if not math.isfinite(min_utility) or (predictor.mode == "binary" and not 0 <= min_utility <= 1):
        raise SettingError(f"min_utility must be a number in [0, 1] (a probability), got {min_utility}")
    if not src.is_dir():
        raise InvalidInputError(f"SRC {src} is not a folder")
    earlier = _check_out(src, out)
    pristine = _pristine_index(Path(replace_with_pristine)) if replace_with_pristine else {}
    report = FilterReport(out=out)
    rows: list[dict] = []
    written: set[str] = set()

    def unreadable(rel: str, reason: str) -> None:
        report.unreadable.append((rel, reason))
        rows.append({"path": rel, "score": "", "decision": f"unreadable: {reason}", "output": ""})
        if on_error is not None:
            on_error(rel, reason)

    job = FolderJob(src, out, on_error=unreadable)
    taken = set(job.sources)
    pending: dict[str, bytes] = {}  # read here, scored (decoded in a worker or here), written from the same bytes

    def items():
        for rel in job.sources:
            try:
                pending[rel] = job.read(rel)
            except ImageLoadError as e:
                unreadable(rel, e.reason)
                bar.update(1)
                continue
            yield rel, pending[rel]

    with tqdm(total=len(job.sources), unit="img", desc="filter", disable=not progress, leave=False) as bar:
        for rel, score, err in predictor.predict_stream(items(), batch_size, workers, bar.update):
            data = pending.pop(rel)
            if err is None and not math.isfinite(score):
                err = "the predictor gave no finite score"
            if err is not None:
                unreadable(rel, err)
                continue
            decision, output = "filtered out", ""
            if score >= min_utility:
                atomic.write_bytes(out / rel, data, durable=False)
                decision, output = "kept", rel
                report.kept += 1
            else:
                twins = pristine.get(Path(rel).with_suffix("").as_posix(), [])
                place = replacement_path(rel, twins[0].suffix, taken) if len(twins) == 1 else None
                if len(twins) == 1 and place is None:
                    decision = "filtered out (no free output name for its pristine version)"
                    report.filtered += 1
                elif len(twins) == 1:
                    try:
                        atomic.write_bytes(out / place, read_file(twins[0]), durable=False)
                        decision, output = "replaced with pristine", place
                        report.replaced += 1
                    except ImageLoadError as e:
                        decision = f"filtered out (its pristine version is unreadable: {e.reason})"
                        report.filtered += 1
                else:
                    if len(twins) > 1:
                        decision = "filtered out (several pristine counterparts: none used)"
                    report.filtered += 1
            written.add(output)
            rows.append({"path": rel, "score": f"{score:.6f}", "decision": decision, "output": output})
    for stale in earlier - written - {""}:
        target = (out / stale).resolve()
        if target.is_relative_to(out.resolve()) and target.is_file():
            target.unlink()
    atomic.write_csv(out / REPORT, sorted(rows, key=lambda r: r["path"]), FIELDS)
    return report
