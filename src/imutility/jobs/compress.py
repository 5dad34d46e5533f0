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

MANIFEST_FIELDS = ("source", "path", "codec", "quality", "bytes", "bpp", "utility", "satisfied", "encodes",
                   "source_bytes")
FIGURE = "qualities.png"


@dataclass
class CompressReport:
    out: Path
    n_sources: int = 0
    n_written: int = 0
    n_unsatisfied: int = 0
    n_resumed: int = 0
    encodes: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    bytes_in: int = 0  # the sources' files
    bytes_out: int = 0  # what was written
    qualities: list[int] = field(default_factory=list)  # the chosen quality of each written image

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.csv"

    @property
    def figure(self) -> Path:
        return self.out / FIGURE

    def summary(self) -> list[str]:
        """What the run did, in a few lines: bytes in and out, the saving, the spread of chosen qualities."""
        if not self.n_written:
            return ["nothing written"]
        q = sorted(self.qualities)
        saving = 1 - self.bytes_out / self.bytes_in if self.bytes_in else float("nan")
        lines = [f"{self.n_written} images: {_size(self.bytes_in)} in, {_size(self.bytes_out)} out "
                 f"({saving:.1%} smaller than the source files; {self.encodes / self.n_written:.1f} encodes per "
                 "image)",
                 f"chosen qualities: min {q[0]}, median {q[len(q) // 2]}, max {q[-1]}; {_histogram(q)}"]
        if self.n_unsatisfied:
            lines.append(f"{self.n_unsatisfied} images reach the threshold at no quality: written at the top quality "
                         "(satisfied=0 in the manifest)")
        return lines


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _histogram(qualities: list[int], bins: int = 5) -> str:
    edges = [round(100 * i / bins) for i in range(bins + 1)]
    counts = [sum(1 for q in qualities if edges[i] <= q < edges[i + 1] or (i == bins - 1 and q == 100))
              for i in range(bins)]
    return ", ".join(f"q {edges[i]}-{edges[i + 1] - (i < bins - 1)}: {c}" for i, c in enumerate(counts) if c)


def write_quality_figure(qualities: list[int], path: Path, title: str) -> None:
    """A bar chart of the chosen qualities (Pillow only: the lean install writes it too)."""
    import io

    from PIL import Image, ImageDraw

    w, h, pad = 640, 300, 40
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    counts = [0] * 101
    for q in qualities:
        counts[int(q)] += 1
    top = max(counts) or 1
    bar = (w - 2 * pad) / 101
    for q, c in enumerate(counts):
        if c:
            x = pad + q * bar
            draw.rectangle([x, h - pad - (h - 2 * pad) * c / top, x + max(bar - 1, 1), h - pad], fill=(40, 90, 160))
    draw.line([pad, h - pad, w - pad, h - pad], fill="black")
    for q in range(0, 101, 10):
        x = pad + q * bar
        draw.line([x, h - pad, x, h - pad + 4], fill="black")
        draw.text((x - 6, h - pad + 6), str(q), fill="black")
    draw.text((pad, 8), f"{title}: {len(qualities)} images, the tallest bar {top}", fill="black")
    draw.text((w // 2 - 20, h - 16), "quality", fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    atomic.write_bytes(path, buf.getvalue())


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
                yield (key, sha256_bytes(data), len(data)), img

        budget = None if memory_mb is None else int(memory_mb * 2**20 / BYTES_PER_OPEN_PIXEL)
        try:
            for (key, sha, size), res in compress_many(pending(), min_utility, scorer.scorer_for, codec, min_quality,
                                                 max_quality, search, batch_size, workers, max_open_pixels=budget):
                path = output_relpath(key, res.suffix)
                atomic.write_bytes(out / path, res.data, durable=False)
                row = {"source": key, "path": path, "codec": codec, "quality": res.quality,
                       "bytes": len(res.data), "bpp": round(res.bpp, 6), "utility": round(res.utility, 6),
                       "satisfied": int(res.satisfied), "encodes": res.encodes, "source_bytes": size, "sha256": sha}
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
    report.bytes_out = sum(int(r["bytes"]) for r in ordered)
    report.bytes_in = sum(int(r.get("source_bytes") or job.sources[r["source"]].stat().st_size) for r in ordered)
    report.qualities = [int(r["quality"]) for r in ordered]
    job.write_manifest("manifest.csv", ordered, MANIFEST_FIELDS)
    job.write_errors()
    if ordered:
        write_quality_figure(report.qualities, report.figure, f"{codec} qualities chosen ({scorer.identity})")
    return report
