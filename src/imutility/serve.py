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
- ``GET /health``: ``{"status": "ok", ...}`` with what the score means and counts of images and network batches.
- ``GET /model``: what the score means (``meaning``) and the predictor's card (absolute paths cut to their names).

Every ``/predict`` answer says what its score means in the ``X-Imutility-Meaning`` header.

Limits, each a 4xx naming itself, never a 500: a body over ``max_body_bytes`` (413, checked on the
declared length and while reading), more than ``max_images`` images in one request (413), an image over
``max_pixels`` or unreadable (422), bad ``/compress`` parameters (422).

Memory and connections, bounded whatever clients do (``imutility serve`` runs with them; tests too):

- ``/compress`` holds its decoded image (and a decoded candidate or two) for the whole search, so searches
  share a budget of ``compress_pixels`` decoded pixels: a request waits for its share before decoding; an image
  larger than the whole budget is a 413. ``/predict`` never holds more than ``prepare_threads`` decoded images.
- A request must arrive whole (headers and body) within ``request_timeout_s`` of its first byte, else 408 and
  the connection is closed; an idle keep-alive connection is closed after ``keep_alive_s``; beyond
  ``max_connections`` open connections a new one is answered 503 and closed at once, before it can hold a file
  descriptor. The server's own resource faults (no file descriptors left, ...) are 503, never the client's 4xx.
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations (Request, Query) as objects,
# and they are imported inside create_app, so that this module loads without the ``serve`` extra
import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imutility.errors import ImutilityError, SettingError
from imutility.images import DEFAULT_MAX_PIXELS, image_size, load_image
from imutility.predictor.runtime.prepare import prepare_one

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
    compress_pixels: int | None = None  # decoded pixels all /compress searches hold at once [default: max_pixels]
    request_timeout_s: float = 30.0  # a request's headers and body must arrive within this of its first byte
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 256  # open connections; more are answered 503 and closed

    def __post_init__(self):
        for name in ("max_body_bytes", "max_images", "max_pixels", "max_batch", "prepare_threads",
                     "max_connections"):
            if int(getattr(self, name)) < 1:
                raise SettingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.compress_pixels is not None and self.compress_pixels < 1:
            raise SettingError(f"compress_pixels must be at least 1, got {self.compress_pixels}")
        if self.max_wait_ms < 0:
            raise SettingError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("request_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise SettingError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def compress_budget(self) -> int:
        return self.compress_pixels if self.compress_pixels is not None else self.max_pixels


class PixelBudget:
    """Decoded pixels shared by concurrent requests: :meth:`hold` waits (first come, first served) until ``n`` of
    them are free, and gives them back when the request is done. ``held`` and ``peak`` say what is in use."""

    def __init__(self, total: int):
        self.total, self.held, self.peak = total, 0, 0
        self._waiters: list[tuple[int, asyncio.Future]] = []

    def fits(self, n: int) -> bool:
        return n <= self.total

    @contextlib.asynccontextmanager
    async def hold(self, n: int):
        if not self.fits(n):
            raise ValueError(f"{n} pixels exceed the whole budget of {self.total}")
        if self._waiters or self.held + n > self.total:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():  # granted just as we were cancelled: give it back
                    self._release(n)
                else:
                    self._waiters.remove((n, fut))
                    self._wake()
                raise
        else:
            self._take(n)
        try:
            yield
        finally:
            self._release(n)

    def _take(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)

    def _release(self, n: int) -> None:
        self.held -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held + self._waiters[0][0] <= self.total:
            n, fut = self._waiters.pop(0)
            self._take(n)
            fut.set_result(None)


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
        predictor = self.predictor
        while True:
            batch = await self._next_batch()
            live = [(p, f) for p, f in batch if not f.done()]  # a client that went away cancelled its futures
            if not live:
                continue
            try:
                scores = await loop.run_in_executor(self._network, predictor.scores_prepared, [p for p, _ in live])
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

        from starlette.requests import ClientDisconnect

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._refuse(send)
        except ClientDisconnect:  # the client went away (or was timed out): nobody to answer, nothing to log
            pass

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
    budget = PixelBudget(config.compress_budget)
    preparer = predictor.engine.preparer()
    prepare_pool = ThreadPoolExecutor(config.prepare_threads, thread_name_prefix="imutility-prepare")
    name = predictor.score_name
    meaning = predictor.card.meaning()
    meaning_header = {"X-Imutility-Meaning": meaning}  # what the score means, on every /predict answer

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
        except OSError as e:  # spooling the parts to disk failed (no file descriptors, disk full): the server's
            raise HTTPException(503, f"the server cannot take this request now: {e.strerror or e}") from e
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
            return responses.JSONResponse({"results": answers}, headers=meaning_header)
        if "error" in answers[0]:
            raise HTTPException(422, f"unreadable image: {answers[0]['error']}")
        return responses.JSONResponse({name: answers[0][name]}, headers=meaning_header)

    @app.post("/compress")
    async def compress_endpoint(request: Request, min_utility: float = Query(0.5), codec: str = Query("jpeg"),
                                search_name: str = Query("bisect", alias="search"),
                                min_quality: int | None = Query(None), max_quality: int | None = Query(None)):
        if codec not in CODECS:
            raise HTTPException(422, f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
        if search_name not in SEARCHES:
            raise HTTPException(422, f"search must be one of {', '.join(SEARCHES)}, got {search_name!r}")
        lo, hi = CODECS[codec][1]
        data = await request.body()
        loop = asyncio.get_running_loop()
        try:
            w, h = image_size(data, config.max_pixels)
        except ImageLoadError as e:
            raise HTTPException(422, f"unreadable image: {e.reason}") from e
        if not budget.fits(w * h):
            raise HTTPException(413, f"{w}x{h} = {w * h} pixels: /compress searches hold at most "
                                     f"{budget.total} decoded pixels at once")
        async with budget.hold(w * h):
            return await search(data, loop, min_utility, codec, search_name, lo, hi, min_quality, max_quality)

    async def search(data, loop, min_utility, codec, search_name, lo, hi, min_quality, max_quality):
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
                                               min(hi, 95) if max_quality is None else max_quality, search_name))
        except RateControlError as e:
            raise HTTPException(422, str(e)) from e
        headers = {"X-Imutility-Quality": str(res.quality), f"X-Imutility-{name}": f"{res.utility:.{DECIMALS}f}",
                   "X-Imutility-Satisfied": str(res.satisfied).lower(), "X-Imutility-Bpp": f"{res.bpp:.6f}",
                   "X-Imutility-Encodes": str(res.encodes)}
        return Response(res.data, media_type=MEDIA_TYPES[codec], headers=headers)

    @app.get("/health")
    async def health():
        return {"status": "ok", "score": name, "meaning": meaning, "images_scored": batcher.images,
                "network_batches": batcher.batches}

    @app.get("/model")
    async def model():
        return {"meaning": meaning, **public_card(predictor.card.raw)}

    app.state.batcher = batcher
    app.state.compress_budget = budget
    return app


def public_card(card: dict) -> dict:
    """The card as ``/model`` shows it: every absolute path (where the predictor was trained, its label folders)
    cut to its last part, so that the service does not publish the layout of the machine that made it."""
    from pathlib import PurePosixPath, PureWindowsPath

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        if isinstance(x, str) and (x.startswith("/") or PureWindowsPath(x).drive):
            return (PureWindowsPath(x) if PureWindowsPath(x).drive else PurePosixPath(x)).name
        return x

    return clean(card)


class ServeBindError(ImutilityError, OSError):
    """The address cannot be listened on (the port is taken, the host is not this machine's)."""


def bind(host: str, port: int):
    """A listening TCP socket on ``host:port``, or one clear error."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeBindError(f"cannot listen on {host}:{port}: {e.strerror or e}"
                             + (" (another server holds that port? choose another with --port)"
                                if e.errno == 98 else "")) from e
    return sock


def server_config(app, config: ServeConfig | None = None, log_level: str = "info"):
    """The uvicorn configuration the service runs under: its HTTP protocol enforces ``config``'s request
    timeout and connection limit (:func:`guarded_protocol`), its keep-alive timeout is ``config``'s."""
    config = config or ServeConfig()
    uvicorn = _web()[2]
    return uvicorn.Config(app, http=guarded_protocol(config), timeout_keep_alive=config.keep_alive_s,
                          log_level=log_level, lifespan="on")


def serve(predictor, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted (the address is bound first: a taken port is one error)."""
    config = config or ServeConfig()
    sock = bind(host, port)
    server = _web()[2].Server(server_config(create_app(predictor, config), config, log_level))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


_RAW_408 = b"request not received in time"
_LOG = logging.getLogger("imutility.serve")


def _raw_response(status: int, reason: str, detail: str) -> bytes:
    import json

    body = json.dumps({"detail": detail}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


def guarded_protocol(config: ServeConfig):
    """uvicorn's h11 protocol with two guards uvicorn lacks: a deadline for a request to arrive whole (a client
    that sends half a request and waits holds a connection forever otherwise: 408 and closed), and a cap on open
    connections (503 and closed at once: the file descriptors run out otherwise, and every client suffers)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    timeout, cap = config.request_timeout_s, config.max_connections
    last_warning = [0.0]

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > cap:
                if time.monotonic() - last_warning[0] > 10:  # one line per 10 s, not one per refusal
                    last_warning[0] = time.monotonic()
                    _LOG.warning("more than %d open connections: refusing new ones with 503", cap)
                self._refuse(503, "Service Unavailable", f"over {cap} open connections; try again")
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:  # answered already: what the client still sends is read and dropped
                return
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a request on a kept-alive connection
            super().data_received(data)
            if self.cycle is not None and not self.cycle.more_body:  # the request is all here
                self._disarm()

        def eof_received(self):
            if self._refused:
                self.transport.close()
                return None
            return super().eof_received()

        def connection_lost(self, exc):
            self._disarm()
            self.connections.discard(self)
            if not self._refused:
                super().connection_lost(exc)

        def _refuse(self, status: int, reason: str, detail: str) -> None:
            """Answer now, send our end's FIN, drop what the client still sends, close when it closes (or within
            a second): closing at once with its request unread would reset the connection, and the client could
            lose the answer."""
            self._disarm()
            self._refused = True
            self.transport.write(_raw_response(status, reason, detail))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.more_body
                                               and not self.cycle.response_complete):
                return
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                if self.cycle is not None and not self.cycle.response_complete:
                    self.cycle.disconnected = True  # the application's receive() now says so
                    self.cycle.message_event.set()
                self._refuse(408, "Request Timeout", f"{_RAW_408.decode()} ({timeout:g} s)")
            else:
                self.transport.close()

    return GuardedH11Protocol
