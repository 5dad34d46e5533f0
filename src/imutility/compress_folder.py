"""``imutility compress``: every image of a folder at the lowest quality that keeps it useful.

Layout of ``OUT``::

    OUT/<source path relative to SRC><codec suffix>   the chosen bitstream (``a.png`` -> ``a.png.jpg``)
    OUT/manifest.csv     one row per source: MANIFEST_FIELDS (``satisfied`` is 0 where no quality reached
                         the threshold and the image was written at ``max_quality``)
    OUT/errors.csv       unreadable or unlisted sources (only when there were some)
    OUT/.imutility/      the run's settings and journal, for resuming

Each file is written atomically; the journal records a source (with the SHA-256 of its bytes) once its
output is on disk, so a rerun after an interruption does only what is missing and a source whose content
changed is redone; a rerun with other settings is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imutility import atomic
from imutility.images import ImageLoadError, list_images, load_image
from imutility.paths import check_unique_outputs, output_relpath
from imutility.rate import compress_many

MANIFEST_FIELDS = ("source", "path", "codec", "quality", "bytes", "bpp", "utility", "satisfied", "encodes")
STATE_DIR = ".imutility"


@dataclass
class CompressReport:
    out: Path
    n_sources: int = 0
    n_written: int = 0
    n_unsatisfied: int = 0
    n_resumed: int = 0
    encodes: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.csv"


def compress_folder(src: str | os.PathLike, out: str | os.PathLike, min_utility: float,
                    scorer_for: Callable, scorer_name: str, codec: str = "jpeg", min_quality: int = 1,
                    max_quality: int = 95, search: str = "bisect",
                    on_error: Callable[[str, str], None] | None = None, progress: bool = True,
                    batch_size: int = 32, workers: int = 0) -> CompressReport:
    """Compress every image under ``src`` into ``out``; ``scorer_for(pristine image)`` gives the scorer of that
    image's encodings (a predictor ignores its argument; an oracle needs it). ``batch_size`` images are searched
    in lockstep, their candidates encoded in ``workers`` threads (:func:`imutility.rate.compress_many`). See the
    module doc."""
    from tqdm.auto import tqdm

    from imutility.rate import _check

    _check(min_utility, codec, min_quality, max_quality, search)
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"OUT {out} is inside SRC {src}: its files would be read back as input")
    report = CompressReport(out=out)

    def skip(path: str, reason: str) -> None:
        report.errors.append((Path(path).relative_to(src).as_posix() if src.is_dir() else path, reason))
        if on_error is not None:
            on_error(*report.errors[-1])

    sources = list_images(src, on_skip=skip)
    root = src if src.is_dir() else src.parent
    rel_of = {p: (p.relative_to(root).as_posix() if p != root else p.name) for p in sources}
    check_unique_outputs(rel_of.values())
    config = {"source": str(src.resolve()), "min_utility": min_utility, "scorer": scorer_name, "codec": codec,
              "min_quality": min_quality, "max_quality": max_quality, "search": search}
    atomic.check_or_write_config(out / STATE_DIR / "config.json", config)
    atomic.remove_stale_temps(out)
    journal = atomic.Journal(out / STATE_DIR / "journal.jsonl")
    done = {}
    for r in journal.read():
        p = root / r["source"] if r.get("source") else None
        if p is not None and p in rel_of and r.get("sha256") == _sha256(p) and (out / r["path"]).exists():
            done[r["source"]] = r
    report.n_sources, report.n_resumed = len(sources), len(done)
    rows: dict[str, dict] = dict(done)
    bar = tqdm(total=len(sources), initial=len(done), unit="img", desc="compress", disable=not progress,
               dynamic_ncols=True)
    def pending():
        for p in sources:
            rel = rel_of[p]
            if rel in done:
                continue
            try:
                data = p.read_bytes()
                img = load_image(data)
            except OSError as e:
                skip(str(p), f"cannot read: {e.strerror or e}")
                bar.update(1)
                continue
            except ImageLoadError as e:
                skip(str(p), e.reason)
                bar.update(1)
                continue
            yield (rel, hashlib.sha256(data).hexdigest()), img

    try:
        with journal:
            for (rel, sha), res in compress_many(pending(), min_utility, scorer_for, codec, min_quality, max_quality,
                                                 search, batch_size, workers):
                path = output_relpath(rel, res.suffix)
                atomic.write_bytes(out / path, res.data, durable=False)
                row = {"source": rel, "path": path, "codec": codec, "quality": res.quality, "bytes": len(res.data),
                       "bpp": round(res.bpp, 6), "utility": round(res.utility, 6), "satisfied": int(res.satisfied),
                       "encodes": res.encodes, "sha256": sha}
                journal.append(row)
                rows[rel] = row
                bar.update(1)
    finally:
        bar.close()
    ordered = [rows[rel_of[p]] for p in sources if rel_of[p] in rows]
    report.n_written = len(ordered)
    report.n_unsatisfied = sum(1 for r in ordered if not int(r["satisfied"]))
    report.encodes = sum(int(r["encodes"]) for r in ordered)
    atomic.write_csv(out / "manifest.csv", ordered, MANIFEST_FIELDS)
    err = out / "errors.csv"
    if report.errors:
        atomic.write_csv(err, ({"source": s, "reason": r} for s, r in report.errors), ("source", "reason"))
    elif err.exists():
        err.unlink()
    return report


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
