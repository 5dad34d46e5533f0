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

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imutility import atomic
from imutility.distort import SUFFIXES, Distortion, parse_distortion, seeded_rng
from imutility.errors import SettingError
from imutility.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, read_file
from imutility.jobs.folder import FolderJob, sha256_bytes
from imutility.paths import output_relpath

MANIFEST_FIELDS = ("source", "width", "height", "distortion", "family", "level", "path", "format",
                   "bytes", "bpp")

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
        data = read_file(src)
        img = load_image(data, max_pixels=max_pixels)
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
    return {"source": rel, "ok": True, "sha256": sha256_bytes(data), "rows": rows}


def distort_folder(src: str | os.PathLike, out: str | os.PathLike, distortions: Sequence[Distortion],
                   seed: int = 0, workers: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   progress: bool = True, on_error: Callable[[str, str], None] | None = None) -> DistortReport:
    """Write every source image under ``src`` at every distortion into ``out``; see the module doc."""
    specs = [d.spec for d in distortions]
    if len(set(d.slug for d in distortions)) != len(distortions):
        raise SettingError("two distortions share an output folder name")
    longest = max(SUFFIXES.values(), key=len)
    job = FolderJob(src, out, lambda key: [f"{d.slug}/{output_relpath(key, longest)}" for d in distortions],
                    on_error)
    out = job.out
    settings = {"source": str(job.src.resolve()), "distortions": specs, "seed": seed}
    with job:
        done = job.resumable(settings, lambda r: r.get("ok") and all((out / row["path"]).exists()
                                                                     for row in r["rows"]),
                             outputs=lambda r: [row["path"] for row in r.get("rows", ())])
        todo = [(str(p), key, str(out), specs, seed, max_pixels) for key, p in job.sources.items()
                if key not in done]
        records: dict[str, dict] = dict(done)
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
        bar = _progress(total=len(job.sources), initial=len(job.sources) - len(todo), enabled=progress)
        try:
            for rec in _run(todo, n_workers):
                records[rec["source"]] = rec
                job.record(rec)
                if not rec["ok"] and on_error is not None:
                    on_error(rec["source"], rec["reason"])
                bar.update(1)
        finally:
            bar.close()

    ordered = job.in_order(records)
    rows = [row for r in ordered if r["ok"] for row in r["rows"]]
    errors = [(r["source"], r["reason"]) for r in ordered if not r["ok"]]
    job.write_manifest("manifest.csv", rows, MANIFEST_FIELDS)
    job.write_errors(errors)
    return DistortReport(out=out, n_sources=len(job.sources), n_images=len(rows), errors=errors,
                         n_resumed=len(done), skipped=list(job.errors))


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
