"""Decoding and preparing images for a predictor, in this process or in worker processes, in order.

A predictor's network runs in one place (ONNX Runtime or PyTorch, using its own threads); what comes
before it (reading the file, decoding, resizing, cutting the crop or the tiles) is per image and
independent, so it can run in ``workers`` processes beside it. What travels back is small: the uint8
pixels the network will see (a crop or up to a few tiles), never normalised floats.

A *preparer* is a picklable callable ``PIL image -> uint8 array (k, S, S, 3)``; each engine of
:mod:`imutility.predictor.model` declares one. :func:`prepared_stream` applies it to items
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


def prepared_stream(items: Iterable[Item], preparer: Callable, workers: int = 0, chunk: int = 8,
                    max_pixels: int | None = None) -> Iterator[Prepared]:
    """Prepare ``items`` in order: here (``workers=0``, one item at a time, lazily) or in ``workers``
    processes, ``chunk`` items per task and at most ``4 * workers`` tasks in flight (memory stays bounded
    however many files there are). A worker that dies (a decoder crash) fails its chunk's items with that
    reason; the pool is restarted and the run goes on."""
    if workers <= 0:
        for key, source in items:
            yield prepare_one(preparer, key, source, max_pixels)
        return
    # spawn, not fork: this process may hold torch / ONNX Runtime thread pools, which a fork can deadlock
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    flight: deque[tuple[list[Item], Future]] = deque()
    delivered = False
    source = _chunks(items, max(1, chunk))
    try:
        while True:
            while len(flight) < 4 * workers:
                nxt = next(source, None)
                if nxt is None:
                    break
                flight.append((nxt, pool.submit(_prepare_chunk, preparer, nxt, max_pixels)))
            if not flight:
                return
            work, fut = flight.popleft()
            try:
                done = fut.result()
            except BrokenProcessPool as e:
                if not delivered:  # a pool that never delivered anything: the workers cannot run at all
                    raise PreparationError(f"the decoding worker processes cannot run ({e}); "
                                           "try without workers") from e
                delivered = False
                pool.shutdown(wait=False, cancel_futures=True)
                redo = [w for w, _ in flight]
                flight.clear()
                pool = ProcessPoolExecutor(workers, mp_context=ctx)
                for key, _ in work:
                    yield key, None, "the decoding worker died on this chunk (a decoder crash?)"
                for w in redo:  # the chunks queued behind it were not at fault: run them again
                    flight.append((w, pool.submit(_prepare_chunk, preparer, w, max_pixels)))
                continue
            delivered = True
            yield from done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
