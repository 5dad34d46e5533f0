"""Decoding and preparing images for a predictor, in this process or in worker processes, in order.

A predictor's network runs in one place (ONNX Runtime or PyTorch, using its own threads); what comes
before it (reading the file, decoding, resizing, cutting the crop or the tiles) is per image and
independent, so it can run in ``workers`` processes beside it. What travels back is small: the uint8
pixels the network will see (a crop or up to a few tiles), never normalised floats.

A *preparer* is a picklable callable ``PIL image -> uint8 array (k, S, S, 3)``; each engine of
:mod:`imutility.predictor.runtime.engine` declares one. :func:`prepared_stream` applies it to items
``(key, source)`` (a path or the encoded bytes) and yields ``(key, pixels, None)`` or ``(key, None,
reason)`` in the order of the items: an unreadable file, an image the decoder refuses, even a worker
that dies on a file, is one reported item, never the end of the run.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from imutility.errors import ImutilityError
from imutility.images import ImageLoadError, load_image

Item = tuple[Any, Any]  # (key, path or encoded bytes)
Prepared = tuple[Any, np.ndarray | None, str | None]


class PreparationError(ImutilityError, RuntimeError):
    """The worker processes cannot run at all (as opposed to one file killing one)."""


def prepare_one(preparer: Callable, key: Any, source, max_pixels: int | None = None) -> Prepared:
    """``(key, pixels, None)`` or ``(key, None, reason)`` for one path or encoded image."""
    from imutility.images import DEFAULT_MAX_PIXELS

    try:
        img = load_image(source, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
        return key, preparer(img), None
    except ImageLoadError as e:
        return key, None, e.reason
    except OSError as e:
        return key, None, f"cannot read: {e.strerror or e}"


def _prepare_chunk(preparer: Callable, chunk: list[Item], max_pixels: int | None) -> list[Prepared]:
    return [prepare_one(preparer, key, source, max_pixels) for key, source in chunk]


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _isolated(ctx, preparer: Callable, chunks: list[list[Item]], max_pixels: int | None) -> Iterator[Prepared]:
    """Prepare the items of ``chunks`` one at a time in one worker process, restarted after each death: with a
    single item in flight, a worker that dies names its file for certain. The orphans of a broken pool go
    through here, so the file that killed it is found and every other file is still prepared."""
    pool = ProcessPoolExecutor(1, mp_context=ctx)
    try:
        for work in chunks:
            for item in work:
                try:
                    yield pool.submit(_prepare_chunk, preparer, [item], max_pixels).result()[0]
                except BrokenProcessPool:
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = ProcessPoolExecutor(1, mp_context=ctx)
                    yield item[0], None, "the decoding worker died on this file (a decoder crash?)"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: ProcessPoolExecutor, preparer: Callable, chunk: list[Item], max_pixels: int | None) -> Future:
    """The chunk's future; a pool that broke before it could be submitted gives an already failed one (the chunk
    is then an orphan like those in flight)."""
    try:
        return pool.submit(_prepare_chunk, preparer, chunk, max_pixels)
    except BrokenProcessPool as e:
        failed: Future = Future()
        failed.set_exception(e)
        return failed


#: a plain image every preparer must get through: the probe that tells "workers cannot run" from "a file kills"
_CANARY_SIZE = (16, 16)


def _probe(preparer: Callable) -> None:
    from PIL import Image

    preparer(Image.new("RGB", _CANARY_SIZE, (128, 128, 128)))


def _workers_can_run(ctx, preparer: Callable) -> bool:
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        try:
            pool.submit(_probe, preparer).result()
            return True
        except BrokenProcessPool:
            return False


def prepared_stream(items: Iterable[Item], preparer: Callable, workers: int = 0, chunk: int = 8,
                    max_pixels: int | None = None) -> Iterator[Prepared]:
    """Prepare ``items`` in order: here (``workers=0``, one item at a time, lazily) or in ``workers``
    processes, ``chunk`` items per task and at most ``4 * workers`` tasks in flight (memory stays bounded
    however many files there are).

    A worker that dies (a decoder crash) breaks the whole pool, and every chunk in flight loses its answer:
    which one held the culprit is unknowable from outside. So all of them (the orphans) are prepared again one
    file at a time in a single worker (:func:`_isolated`): the file that kills it is reported with that reason,
    every other file is prepared as usual, and a fresh pool takes the rest of the run. Before the first
    recovery, one plain grey image is prepared in a fresh worker: if even that dies, the workers cannot run at
    all and :class:`PreparationError` says so (no file is to blame)."""
    if workers <= 0:
        for key, source in items:
            yield prepare_one(preparer, key, source, max_pixels)
        return
    # spawn, not fork: this process may hold torch / ONNX Runtime thread pools, which a fork can deadlock
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    flight: deque[tuple[list[Item], Future]] = deque()
    probed = False
    source = _chunks(items, max(1, chunk))
    try:
        while True:
            while len(flight) < 4 * workers:
                nxt = next(source, None)
                if nxt is None:
                    break
                flight.append((nxt, _submit(pool, preparer, nxt, max_pixels)))
            if not flight:
                return
            work, fut = flight.popleft()
            try:
                done = fut.result()
            except BrokenProcessPool as e:
                orphans = [work, *(w for w, _ in flight)]
                flight.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                if not probed:
                    if not _workers_can_run(ctx, preparer):
                        raise PreparationError(f"the decoding worker processes cannot run ({e}); "
                                               "try without workers") from e
                    probed = True
                yield from _isolated(ctx, preparer, orphans, max_pixels)
                pool = ProcessPoolExecutor(workers, mp_context=ctx)
                continue
            yield from done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
