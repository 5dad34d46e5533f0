"""The unit of labelling work: a chunk of sources, distorted, then run through the labelers.

A chunk is prepared (each source decoded, augmented, distorted; the distorted files' bytes kept) and
labelled (every labeler that still lacks its outputs, one call per chunk, a failure isolated to its
image); what comes out is a :class:`ChunkResult`, which the run (:mod:`.engine`) writes to disk and
journals. Where this happens is an engine's choice: :class:`LocalEngine` here, in this process, or
:class:`~imutility.labelling.ray_engine.RayEngine` on a Ray cluster; both call the same functions, so a
chunk's records are the same whichever ran it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from imutility import atomic
from imutility.distort import SUFFIXES, Distortion, seeded_rng
from imutility.images import ImageLoadError, load_image
from imutility.labelling.augment import apply_augment
from imutility.paths import name_too_long, output_relpath
from imutility.tasks import PRISTINE, Source, get_task


@dataclass
class Chunk:
    """Loaded and distorted images of a few sources, ready for the labelers.

    ``images[i]`` is the image of ``items[i]`` = (source key, distortion spec or PRISTINE); ``files`` the
    distorted files to write (path inside OUT, the codec's bytes), described by ``meta``; ``errors`` the
    unreadable sources; ``sources`` the readable ones."""

    sources: list[Source]
    images: list[Image.Image]
    items: list[tuple[str, str]]
    files: list[tuple[str, bytes]]
    meta: list[dict]
    errors: list[dict]


@dataclass
class ChunkResult:
    """A chunk's finished work, as the run journals it: ``records[labeler] = (records, n_failed)`` for the
    labelers that ran on it (the others had its outputs already)."""

    sources: list[Source]  # all the chunk's sources, readable or not
    files: list[tuple[str, bytes]]
    meta: list[dict]
    errors: list[dict]
    records: dict[str, tuple[list[dict], int]] = field(default_factory=dict)


def prepare_chunk(sources: Sequence[Source], distortions: dict[str, Distortion], seed: int) -> Chunk:
    """Decode, augment and distort each source; an unreadable one becomes an ``errors`` entry."""
    images, items, files, meta, errors, ok = [], [], [], [], [], []
    longest = max(SUFFIXES.values(), key=len)
    for src in sources:
        too_long = next(filter(None, (name_too_long(f"{distortions[spec].slug}/{output_relpath(src.key, longest)}")
                                      for spec in src.distortions or distortions)), None)
        if too_long is not None:
            errors.append({"k": src.key, "error": too_long})
            continue
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
            rel = (Path("images") / d.slug / output_relpath(src.key, res.suffix)).as_posix()
            files.append((rel, res.data))
            images.append(res.image)
            items.append((src.key, spec))
            meta.append({"k": src.key, "d": spec, "path": rel, "bytes": len(res.data),
                         "bpp": round(res.bpp, 6), "w": img.width, "h": img.height})
    return Chunk(ok, images, items, files, meta, errors)


def write_files(out: Path, files: Sequence[tuple[str, bytes]]) -> None:
    """The distorted files, written atomically inside OUT (always: a file left there is never trusted)."""
    for rel, data in files:
        atomic.write_bytes(out / rel, data, durable=False)


def label_chunk(labeler, chunk: Chunk, targets: dict[str, int | None]) -> tuple[list[dict], int]:
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


class LocalEngine:
    """Chunks run in this process: the labelers on this machine's cores (or GPU), and the next chunk read and
    distorted in a thread meanwhile (Pillow releases the GIL in its codecs)."""

    def run(self, todo: Sequence[Sequence[Source]], need: Sequence[Sequence[str]], distortions: dict[str, Distortion],
            labelers: Sequence, out: Path, seed: int) -> Iterator[ChunkResult]:
        """``need[i]``: the names of the labelers chunk ``todo[i]`` still needs; results in the order of ``todo``."""
        def prepare(sources):
            chunk = prepare_chunk(sources, distortions, seed)
            write_files(out, chunk.files)
            return chunk

        pool = ThreadPoolExecutor(max_workers=1)
        try:
            pending: Future | None = pool.submit(prepare, todo[0]) if todo else None
            for i, chunk_sources in enumerate(todo):
                chunk = pending.result()
                pending = pool.submit(prepare, todo[i + 1]) if i + 1 < len(todo) else None
                targets = {s.key: s.target for s in chunk_sources}
                records = {lab.name: label_chunk(lab, chunk, targets) for lab in labelers if lab.name in need[i]}
                yield ChunkResult(list(chunk_sources), [], chunk.meta, chunk.errors, records)  # files: written
        finally:
            pool.shutdown(wait=True)
