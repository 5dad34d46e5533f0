"""A scoring service over HTTP: ``imutility serve``, or :func:`create_app` under any ASGI server.

One process holds one predictor. Requests are decoded and prepared (resized, tiled) in a thread pool,
then wait in one queue for the network, which runs in a single thread of its own: whatever has queued
while the network was busy goes through it as ONE batch (dynamic batching: no added delay when idle,
large batches under load; ``max_wait_ms`` trades a little latency for fuller batches).

Endpoints (all answers JSON unless said otherwise):

- ``POST /predict``: one image as the raw body, or several as ``multipart/form-data`` file parts (any
  field name). One image answers ``{"p_useful": 0.93}`` (``utility`` for a continuous predictor), the
  same field and rounding as ``imutility predict``'s JSON lines; several answer ``{"results": [{"name":
  ..., "p_useful": ...} | {"name": ..., "error": reason}, ...]}`` in the order sent. A raw body that is
  not a readable image is a 422 with the reason.
- ``POST /compress?min_utility=0.5&codec=jpeg&search=bisect&min_quality=1&max_quality=95``: the raw body
  image encoded at the lowest quality the predictor rates >= ``min_utility`` (:func:`imutility.compress`);
  the answer is the encoded file, and ``X-Imutility-*`` headers carry quality, score, bits per pixel,
  encodes and whether the threshold was reached.
- ``GET /health``: ``{"status": "ok", ...}`` with counts of images and network batches served.
- ``GET /model``: the predictor's card.

Limits, each a 4xx naming itself, never a 500: a body over ``max_body_bytes`` (413, checked on the
declared length and while reading), more than ``max_images`` images in one request (413), an image over
``max_pixels`` or unreadable (422), bad ``/compress`` parameters (422).
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations (Request, Query) as objects,
# and they are imported inside create_app, so that this module loads without the ``serve`` extra
import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imutility.errors import ImutilityError
from imutility.images import DEFAULT_MAX_PIXELS, load_image
from imutility.predictor.prepare import prepare_one

#: media types of the codecs ``/compress`` offers
MEDIA_TYPES = {"jpeg": "image/jpeg", "webp": "image/webp"}
#: score decimals in answers: the same as ``imutility predict``
DECIMALS = 6


@dataclass(frozen=True)
class ServeConfig:
    """The service's limits and batching; each field has one default."""

    max_body_bytes: int = 32 * 2**20
    max_images: int = 64  # per request
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image (decompression-bomb guard)
    max_batch: int = 64  # images per network call
    max_wait_ms: float = 0.0  # extra wait for a fuller batch once one image is queued
    prepare_threads: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))

    def __post_init__(self):
        for name in ("max_body_bytes", "max_images", "max_pixels", "max_batch", "prepare_threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


class Batcher:
    """Prepared images from concurrent requests, scored together by one network thread."""

    def __init__(self, predictor, max_batch: int, max_wait_ms: float):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.images = 0
        self.batches = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._network = ThreadPoolExecutor(1, thread_name_prefix="imutility-network")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._network.shutdown(wait=True)

    async def score(self, prepared: list[np.ndarray]) -> list[float]:
        """Scores of prepared images (each the engine's uint8 pixels), batched with whatever else is queued."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in prepared]
        for pixels, fut in zip(prepared, futures, strict=True):
            self._queue.put_nowait((pixels, fut))
        return list(await asyncio.gather(*futures))

    async def _next_batch(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        engine, device = self.predictor.engine, self.predictor.device
        while True:
            batch = await self._next_batch()
            live = [(p, f) for p, f in batch if not f.done()]  # a client that went away cancelled its futures
            if not live:
                continue
            try:
                scores = await loop.run_in_executor(self._network, engine.scores_prepared, [p for p, _ in live],
                                                    device)
            except Exception as e:  # noqa: BLE001 - the network failed: every waiting request learns why
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.images += len(live)
            for (_, fut), s in zip(live, scores, strict=True):
                if not fut.done():
                    fut.set_result(float(s))


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is answered 413, whether its length is declared or not."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        import json

        body = json.dumps({"detail": f"request body over the limit of {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class ServeDependencyError(ImutilityError, ImportError):
    """FastAPI / uvicorn are not installed (the ``serve`` extra)."""


def _web():
    try:
        import fastapi
        import fastapi.responses
        import python_multipart  # noqa: F401 - FastAPI needs it for multipart bodies
        import uvicorn
    except ImportError as e:
        raise ServeDependencyError(f"serving needs the 'serve' extra: pip install 'imutility[serve]' ({e})") from e
    return fastapi, fastapi.responses, uvicorn


def create_app(predictor, config: ServeConfig | None = None):
    """The FastAPI application serving ``predictor`` (a loaded :class:`~imutility.Predictor`)."""
    from contextlib import asynccontextmanager

    fastapi, responses, _ = _web()
    FastAPI, HTTPException, Query, Request = fastapi.FastAPI, fastapi.HTTPException, fastapi.Query, fastapi.Request
    Response = responses.Response

    from imutility import __version__
    from imutility.images import ImageLoadError
    from imutility.rate import CODECS, SEARCHES, RateControlError, compress

    config = config or ServeConfig()
    batcher = Batcher(predictor, config.max_batch, config.max_wait_ms)
    preparer = predictor.engine.preparer()
    prepare_pool = ThreadPoolExecutor(config.prepare_threads, thread_name_prefix="imutility-prepare")
    name = predictor.score_name

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            prepare_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="imutility", version=__version__, lifespan=lifespan,
                  summary="Is this image still useful to machine-vision models?")
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

    async def prepared(items: list[tuple[str, bytes]]) -> list[tuple[str, Any, str | None]]:
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(prepare_pool, prepare_one, preparer, key, data, config.max_pixels)
                for key, data in items]
        return list(await asyncio.gather(*jobs))

    async def images_of(request: Request) -> tuple[bool, list[tuple[str, bytes]]]:
        """(several?, [(name, encoded bytes)]) from a raw body or multipart file parts."""
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return False, [("body", await request.body())]
        try:
            form = await request.form(max_files=config.max_images, max_fields=config.max_images)
        except _TooLarge:
            raise
        except Exception as e:  # noqa: BLE001 - a malformed multipart body is the client's
            detail = str(getattr(e, "detail", None) or getattr(e, "message", None) or e)
            if "too many" in detail.lower():  # the parser's own refusal of too many parts
                raise HTTPException(413, f"more than {config.max_images} images in one request") from e
            raise HTTPException(422, f"unreadable multipart body: {detail}") from e
        files = [(v.filename or k, await v.read()) for k, v in form.multi_items() if hasattr(v, "read")]
        await form.close()
        if not files:
            raise HTTPException(422, "the multipart body holds no file part")
        return True, files

    @app.post("/predict")
    async def predict(request: Request):
        several, items = await images_of(request)
        if len(items) > config.max_images:
            raise HTTPException(413, f"{len(items)} images in one request; the limit is {config.max_images}")
        ready = await prepared(items)
        good = [pixels for _, pixels, err in ready if err is None]
        scores = iter(await batcher.score(good) if good else ())
        answers = [{"name": key, "error": err} if err is not None else
                   {"name": key, name: round(next(scores), DECIMALS)} for key, _, err in ready]
        if several:
            return {"results": answers}
        if "error" in answers[0]:
            raise HTTPException(422, f"unreadable image: {answers[0]['error']}")
        return {name: answers[0][name]}

    @app.post("/compress")
    async def compress_endpoint(request: Request, min_utility: float = Query(0.5), codec: str = Query("jpeg"),
                                search: str = Query("bisect"), min_quality: int | None = Query(None),
                                max_quality: int | None = Query(None)):
        if codec not in CODECS:
            raise HTTPException(422, f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
        if search not in SEARCHES:
            raise HTTPException(422, f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
        lo, hi = CODECS[codec][1]
        data = await request.body()
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(prepare_pool, load_image, data, config.max_pixels)
        except ImageLoadError as e:
            raise HTTPException(422, f"unreadable image: {e.reason}") from e

        def scorer(images):  # called by the search, in a worker thread: its images join the shared batches
            pixels = [preparer(im) for im in images]
            return np.asarray(asyncio.run_coroutine_threadsafe(batcher.score(pixels), loop).result())

        try:
            res = await loop.run_in_executor(
                prepare_pool, lambda: compress(image, min_utility, scorer, codec,
                                               lo if min_quality is None else min_quality,
                                               min(hi, 95) if max_quality is None else max_quality, search))
        except RateControlError as e:
            raise HTTPException(422, str(e)) from e
        headers = {"X-Imutility-Quality": str(res.quality), f"X-Imutility-{name}": f"{res.utility:.{DECIMALS}f}",
                   "X-Imutility-Satisfied": str(res.satisfied).lower(), "X-Imutility-Bpp": f"{res.bpp:.6f}",
                   "X-Imutility-Encodes": str(res.encodes)}
        return Response(res.data, media_type=MEDIA_TYPES[codec], headers=headers)

    @app.get("/health")
    async def health():
        return {"status": "ok", "score": name, "images_scored": batcher.images, "network_batches": batcher.batches}

    @app.get("/model")
    async def model():
        return predictor.card

    app.state.batcher = batcher
    return app


def serve(predictor, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted."""
    app = create_app(predictor, config)
    _web()[2].run(app, host=host, port=port, log_level=log_level)
