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

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imutility import atomic
from imutility.distort import SUFFIXES
from imutility.images import ImageLoadError, load_image
from imutility.jobs.folder import FolderJob, sha256_bytes
from imutility.paths import output_relpath
from imutility.rate import BYTES_PER_OPEN_PIXEL, as_scorer, check_settings, compress_many

MANIFEST_FIELDS = ("source", "path", "codec", "quality", "bytes", "bpp", "utility", "satisfied", "encodes")


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
                    scorer, codec: str = "jpeg", min_quality: int = 1,
                    max_quality: int = 95, search: str = "bisect",
                    on_error: Callable[[str, str], None] | None = None, progress: bool = True,
                    batch_size: int = 32, workers: int = 0, memory_mb: float | None = None) -> CompressReport:
    """Compress every image under ``src`` into ``out``; ``scorer`` is a predictor or a
    :class:`~imutility.rate.NetworkOracle` (:func:`imutility.rate.as_scorer`: an oracle needs each pristine
    image). Up to ``batch_size`` images are searched in lockstep, fewer where their pixels would take more than
    ``memory_mb`` (about :data:`imutility.rate.BYTES_PER_OPEN_PIXEL` bytes each; one image is always searched),
    their candidates encoded in ``workers`` threads (:func:`imutility.rate.compress_many`). See the module doc."""
    from tqdm.auto import tqdm

    check_settings(min_utility, codec, min_quality, max_quality, search)
    scorer = as_scorer(scorer)
    suffix = SUFFIXES[codec]
    job = FolderJob(src, out, lambda key: [output_relpath(key, suffix)], on_error)
    out = job.out
    report = CompressReport(out=out)
    settings = {"source": str(job.src.resolve()), "min_utility": min_utility, "scorer": scorer.identity, "codec": codec,
                "min_quality": min_quality, "max_quality": max_quality, "search": search}
    with job:
        done = job.resumable(settings, lambda r: (out / r["path"]).exists(), outputs=lambda r: [r["path"]])
        report.n_sources, report.n_resumed = len(job.sources), len(done)
        rows: dict[str, dict] = dict(done)
        bar = tqdm(total=len(job.sources), initial=len(done), unit="img", desc="compress", disable=not progress,
                   dynamic_ncols=True)

        def pending():
            for key in job.sources:
                if key in done:
                    continue
                try:
                    data = job.read(key)
                    img = load_image(data)
                except ImageLoadError as e:
                    job.skip(key, e.reason)
                    bar.update(1)
                    continue
                yield (key, sha256_bytes(data)), img

        budget = None if memory_mb is None else int(memory_mb * 2**20 / BYTES_PER_OPEN_PIXEL)
        try:
            for (key, sha), res in compress_many(pending(), min_utility, scorer.scorer_for, codec, min_quality,
                                                 max_quality, search, batch_size, workers, max_open_pixels=budget):
                path = output_relpath(key, res.suffix)
                atomic.write_bytes(out / path, res.data, durable=False)
                row = {"source": key, "path": path, "codec": codec, "quality": res.quality,
                       "bytes": len(res.data), "bpp": round(res.bpp, 6), "utility": round(res.utility, 6),
                       "satisfied": int(res.satisfied), "encodes": res.encodes, "sha256": sha}
                job.record(row)
                rows[key] = row
                bar.update(1)
        finally:
            bar.close()
    ordered = job.in_order(rows)
    report.n_written = len(ordered)
    report.n_unsatisfied = sum(1 for r in ordered if not int(r["satisfied"]))
    report.encodes = sum(int(r["encodes"]) for r in ordered)
    report.errors = list(job.errors)
    job.write_manifest("manifest.csv", ordered, MANIFEST_FIELDS)
    job.write_errors()
    return report
