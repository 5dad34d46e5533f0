"""Distort a folder of photos into a sweep of levels, in parallel, resumable, with a manifest.

Layout of ``OUT``::

    OUT/<distortion slug>/<source path relative to SRC><codec suffix>   e.g. OUT/jpeg_q5/dog.png.jpg
    OUT/manifest.csv          one row per written image (columns: MANIFEST_FIELDS)
    OUT/errors.csv            one row per source that could not be read, or was not listed though it might
                              have been meant (unsupported format, link to a folder); only when there were some
    OUT/.imutility/           the run's config and journal, for resuming

The codec's suffix is appended to the source's own name (never replaces it), so every source has its
own outputs: ``a.jpg``, ``a.png`` and ``a.JPG`` cannot overwrite each other. Each image is written
atomically; the journal records a source (with the SHA-256 of its bytes) once all its levels are on
disk, so a rerun after an interruption does only what is missing, redoes a source whose content
changed, and ends with the same manifest.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imutility import atomic
from imutility.distort import Distortion, parse_distortion, seeded_rng
from imutility.images import DEFAULT_MAX_PIXELS, ImageLoadError, list_images, load_image
from imutility.paths import check_unique_outputs, output_relpath

MANIFEST_FIELDS = ("source", "width", "height", "distortion", "family", "level", "path", "format",
                   "bytes", "bpp")
ERROR_FIELDS = ("source", "reason")
STATE_DIR = ".imutility"

RunMismatchError = atomic.ConfigMismatchError  # OUT holds a sweep made with other settings


@dataclass
class DistortReport:
    """What a folder run did."""

    out: Path
    n_sources: int
    n_images: int
    errors: list[tuple[str, str]] = field(default_factory=list)  # listed sources that could not be read
    n_resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # entries not listed (unsupported format, link)

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.csv"


def _process_source(task: tuple) -> dict:
    """Worker: read one source, write all its distorted versions. Returns a journal record."""
    src, rel, out, specs, seed, max_pixels = task
    try:
        data = Path(src).read_bytes()
        img = load_image(data, max_pixels=max_pixels)
    except OSError as e:
        return {"source": rel, "ok": False, "reason": f"unreadable file: {e.strerror or e}"}
    except ImageLoadError as e:
        return {"source": rel, "ok": False, "reason": e.reason}
    rows = []
    for spec in specs:
        d = parse_distortion(spec)
        try:
            res = d(img, seeded_rng(seed, rel, spec) if d.random else None)
        except Exception as e:  # a codec refusing an image must not end the run
            return {"source": rel, "ok": False, "reason": f"{spec} failed: {type(e).__name__}: {e}"}
        path = Path(d.slug) / output_relpath(rel, res.suffix)
        atomic.write_bytes(Path(out) / path, res.data, durable=False)
        rows.append({
            "source": rel, "width": img.width, "height": img.height, "distortion": spec,
            "family": d.family, "level": d.level, "path": path.as_posix(), "format": res.format,
            "bytes": len(res.data), "bpp": round(res.bpp, 6),
        })
    return {"source": rel, "ok": True, "sha256": hashlib.sha256(data).hexdigest(), "rows": rows}


def distort_folder(src: str | os.PathLike, out: str | os.PathLike, distortions: Sequence[Distortion],
                   seed: int = 0, workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   progress: bool = True, on_error: Callable[[str, str], None] | None = None) -> DistortReport:
    """Write every source image under ``src`` at every distortion into ``out``; see the module doc."""
    src, out = Path(src), Path(out)
    skipped: list[tuple[str, str]] = []

    def skip(path: str, reason: str) -> None:
        skipped.append((Path(path).relative_to(src).as_posix() if src.is_dir() else path, reason))
        if on_error is not None:
            on_error(skipped[-1][0], reason)

    sources = list_images(src, on_skip=skip)
    root = src if src.is_dir() else src.parent
    specs = [d.spec for d in distortions]
    if len(set(d.slug for d in distortions)) != len(distortions):
        raise ValueError("two distortions share an output folder name")

    state = out / STATE_DIR
    config = {"source": str(src.resolve()), "distortions": specs, "seed": seed}
    atomic.check_or_write_config(state / "config.json", config)
    atomic.remove_stale_temps(out)  # what a killed run was writing

    journal = atomic.Journal(state / "journal.jsonl")
    rel_of = {p: (p.relative_to(root).as_posix() if p != root else p.name) for p in sources}
    check_unique_outputs(rel_of.values())
    path_of = {r: p for p, r in rel_of.items()}
    done = {r["source"]: r for r in journal.read() if r.get("ok") and r["source"] in path_of
            and all((out / row["path"]).exists() for row in r["rows"])
            and r.get("sha256") == _sha256(path_of[r["source"]])}  # a changed source is redone
    todo = [(str(p), rel_of[p], str(out), specs, seed, max_pixels) for p in sources if rel_of[p] not in done]

    records: dict[str, dict] = {rel_of[p]: done[rel_of[p]] for p in sources if rel_of[p] in done}
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = _progress(total=len(sources), initial=len(sources) - len(todo), enabled=progress)
    try:
        with journal:
            for rec in _run(todo, n_workers):
                records[rec["source"]] = rec
                journal.append(rec)
                if not rec["ok"] and on_error is not None:
                    on_error(rec["source"], rec["reason"])
                bar.update(1)
    finally:
        bar.close()

    ordered = [records[rel_of[p]] for p in sources if rel_of[p] in records]
    rows = [row for r in ordered if r["ok"] for row in r["rows"]]
    errors = [(r["source"], r["reason"]) for r in ordered if not r["ok"]]
    atomic.write_csv(out / "manifest.csv", rows, MANIFEST_FIELDS)
    err_path = out / "errors.csv"
    if errors or skipped:
        atomic.write_csv(err_path, ({"source": s, "reason": r} for s, r in skipped + errors), ERROR_FIELDS)
    elif err_path.exists():
        err_path.unlink()
    return DistortReport(out=out, n_sources=len(sources), n_images=len(rows), errors=errors,
                         n_resumed=len(done), skipped=skipped)


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _run(todo: list[tuple], n_workers: int):
    if n_workers == 1:
        yield from map(_process_source, todo)
        return
    # spawn, not fork: the parent may hold torch threads, and forked OpenMP pools can hang
    ctx = mp.get_context("spawn")
    with ctx.Pool(n_workers) as pool:
        yield from pool.imap_unordered(_process_source, todo, chunksize=4)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="distort", disable=not enabled,
                dynamic_ncols=True)
