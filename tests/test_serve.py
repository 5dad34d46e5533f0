"""The HTTP service against a real uvicorn server on loopback, with a real HTTP client: scores equal to
``imutility predict``, bad images and oversized bodies answered 4xx, 32 concurrent clients with nothing lost
or mixed up, dynamic batching, /compress equal to the library's rate control, and the ``serve`` command."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402

from conftest import natural_image, wait_until_serving  # noqa: E402
from imutility.cli import main  # noqa: E402
from imutility.distort import JPEG  # noqa: E402
from imutility.predictor import Predictor  # noqa: E402
from imutility.rate import compress  # noqa: E402
from imutility.serve import ServeConfig, create_app, public_card, server_config  # noqa: E402


class Server:
    """uvicorn serving ``app`` in a thread, on 127.0.0.1 and a free port, configured as ``imutility serve``
    runs it (:func:`imutility.serve.server_config`: the request deadline, the connection cap)."""

    def __init__(self, app, config: ServeConfig | None = None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(app, config, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load("default").use_onnx_runtime()


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """40 JPEGs of several sizes and qualities (bytes by name), also written to a folder for the CLI."""
    folder = tmp_path_factory.mktemp("serve-images")
    out = {}
    for i in range(40):
        data = JPEG(3 + 2 * i)(natural_image(180 + 9 * i, 140 + 5 * (i % 7), seed=i)).data
        (folder / f"{i:02d}.jpg").write_bytes(data)
        out[f"{i:02d}.jpg"] = data
    return folder, out


@pytest.fixture(scope="module")
def expected(jpegs):
    """What ``imutility predict`` prints for each file (its JSON lines)."""
    folder, _ = jpegs
    out = folder.parent / "predict.jsonl"
    assert main(["predict", str(folder), "-o", str(out), "--no-progress"]) == 0
    return {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line)["p_useful"]
            for line in out.read_text().splitlines()}


@pytest.fixture(scope="module")
def server(predictor):
    config = ServeConfig(max_body_bytes=2_000_000, max_images=8, max_pixels=4_000_000)
    with Server(create_app(predictor, config), config) as s:
        yield s


def test_scores_equal_the_predict_command(server, jpegs, expected):
    _, data = jpegs
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name in ("00.jpg", "07.jpg", "31.jpg"):  # raw body
            r = client.post("/predict", content=data[name], headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and set(r.json()) == {"p_useful"}
            assert r.json()["p_useful"] == pytest.approx(expected[name], abs=1.5e-6)
        names = ["03.jpg", "11.jpg", "12.jpg", "39.jpg"]  # multipart, several at once, answers in the order sent
        r = client.post("/predict", files=[("file", (n, data[n], "image/jpeg")) for n in names])
        assert r.status_code == 200
        got = r.json()["results"]
        assert [g["name"] for g in got] == names
        assert [g["p_useful"] for g in got] == pytest.approx([expected[n] for n in names], abs=1.5e-6)


def test_bad_images_are_4xx_with_the_reason(server, jpegs):
    _, data = jpegs
    truncated = data["05.jpg"][:400]
    big = io.BytesIO()
    Image.new("RGB", (2100, 2000), (90, 120, 30)).save(big, "PNG")  # 4.2 MP > the server's 4 MP limit, 20 kB
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for body, reason in [(b"not an image at all", "identify"), (truncated, "truncated"), (b"", "empty"),
                             (big.getvalue(), "exceeds the limit")]:
            r = client.post("/predict", content=body, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 422, (reason, r.status_code, r.text)
            assert reason in r.json()["detail"]
        # several: the bad one is named with its reason, the good ones are still scored
        r = client.post("/predict", files=[("f", ("good.jpg", data["01.jpg"], "image/jpeg")),
                                           ("f", ("bad.jpg", truncated, "image/jpeg")),
                                           ("f", ("good2.jpg", data["02.jpg"], "image/jpeg"))])
        got = r.json()["results"]
        assert r.status_code == 200 and [g["name"] for g in got] == ["good.jpg", "bad.jpg", "good2.jpg"]
        assert "p_useful" in got[0] and "p_useful" in got[2] and "truncated" in got[1]["error"]
        r = client.post("/predict", data={"just": "a field"}, files=[])
        assert r.status_code == 422
        r = client.post("/predict", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"})
        assert 400 <= r.status_code < 500
        assert client.get("/health").json()["status"] == "ok"  # and the server is still up


def test_oversized_bodies_and_too_many_images_are_refused(server, jpegs):
    _, data = jpegs
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post("/predict", content=b"\xff" * 2_000_001)
        assert r.status_code == 413 and "limit" in r.json()["detail"]

        def chunks():  # no declared length: counted while reading
            for _ in range(40):
                yield b"\x00" * 100_000

        r = client.post("/predict", content=chunks())
        assert r.status_code == 413

        def multipart_chunks():  # the same inside a multipart body
            yield b'--B\r\nContent-Disposition: form-data; name="f"; filename="a.jpg"\r\n\r\n'
            yield from chunks()

        r = client.post("/predict", content=multipart_chunks(),
                        headers={"content-type": "multipart/form-data; boundary=B"})
        assert r.status_code == 413
        r = client.post("/predict", files=[("f", (f"{i}.jpg", data["00.jpg"], "image/jpeg")) for i in range(9)])
        assert r.status_code == 413 and "8" in r.json()["detail"]
        assert client.post("/predict", content=data["00.jpg"]).status_code == 200  # still serving


def test_32_concurrent_clients_nothing_lost_or_mixed_up(server, jpegs, expected):
    _, data = jpegs
    names = sorted(data)
    before = httpx.get(f"{server.url}/health").json()

    def client_run(k: int):
        out = []
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for j in range(4):
                name = names[(7 * k + j) % len(names)]
                r = client.post("/predict", content=data[name])
                out.append((name, r.status_code, r.json().get("p_useful")))
        return out

    with ThreadPoolExecutor(32) as pool:
        results = [x for batch in pool.map(client_run, range(32)) for x in batch]
    assert len(results) == 128 and all(code == 200 for _, code, _ in results)
    for name, _, score in results:
        assert score == pytest.approx(expected[name], abs=1.5e-6), name
    after = httpx.get(f"{server.url}/health").json()
    scored = after["images_scored"] - before["images_scored"]
    batches = after["network_batches"] - before["network_batches"]
    assert scored == 128
    assert batches < scored  # requests shared network calls (dynamic batching)


def test_compress_matches_the_library_and_model_is_the_card(server, predictor, jpegs):
    img = natural_image(300, 220, seed=5)
    png = io.BytesIO()
    img.save(png, "PNG")
    with httpx.Client(base_url=server.url, timeout=120) as client:
        r = client.post("/compress", params={"min_utility": 0.6}, content=png.getvalue())
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        ref = compress(img, 0.6, predictor)
        assert int(r.headers["x-imutility-quality"]) == ref.quality
        assert r.content == ref.data
        assert float(r.headers["x-imutility-p_useful"]) == pytest.approx(ref.utility, abs=1e-5)
        assert Image.open(io.BytesIO(r.content)).size == (300, 220)
        for params in ({"min_utility": 1.5}, {"codec": "gif"}, {"search": "guess"}, {"min_quality": 50,
                                                                                       "max_quality": 10},
                       {"min_utility": "high"}):
            r = client.post("/compress", params=params, content=png.getvalue())
            assert r.status_code == 422, params
        assert client.post("/compress", content=b"junk").status_code == 422
        card = client.get("/model").json()
        assert card["weights_sha256"] == predictor.card.weights_sha256
        meaning = card.pop("meaning")
        assert card == json.loads(json.dumps(public_card(predictor.card.raw)))
        assert meaning == predictor.card.meaning() and meaning.startswith("p_useful: the probability")
        r = client.post("/predict", content=png.getvalue())
        assert r.headers["x-imutility-meaning"] == meaning


def test_model_publishes_no_absolute_paths(server):
    card = {"data": {"labels": "/data/me/runs/labels", "rel": "runs/x"}, "paths": ["/srv/a/b.parquet", "c"],
            "n": 3}
    assert public_card(card) == {"data": {"labels": "labels", "rel": "runs/x"}, "paths": ["b.parquet", "c"], "n": 3}
    text = httpx.get(f"{server.url}/model").text
    assert '"/' not in text.replace('": "/', "")  # no value that is an absolute path


def _png_of(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 128).save(buf, "PNG")  # small file, many pixels: what a decompression bomb looks like
    return buf.getvalue()


def test_compress_searches_share_a_pixel_budget(predictor):
    """Concurrent /compress requests never hold more decoded pixels than the budget (each waits for its share);
    an image over the whole budget is a 413, one over max_pixels a 422; nothing is a 500."""
    config = ServeConfig(max_pixels=3_000_000, compress_pixels=1_000_000)
    app = create_app(predictor, config)
    big = _png_of(900, 700)  # 0.63 MP: two of them do not fit in 1 MP at once
    with Server(app, config) as srv, ThreadPoolExecutor(4) as pool:
        def post(body):
            return httpx.post(f"{srv.url}/compress", content=body, params={"min_utility": 0.9}, timeout=300)

        codes = [r.status_code for r in pool.map(post, [big] * 4)]
        assert codes == [200] * 4
        budget = app.state.compress_budget
        assert budget.held == 0 and 630_000 <= budget.peak <= 1_000_000
        r = post(_png_of(1500, 1000))  # 1.5 MP: within max_pixels, over the whole budget
        assert r.status_code == 413 and "at most 1000000 decoded pixels" in r.json()["detail"]
        r = post(_png_of(2000, 2000))  # 4 MP: over max_pixels, refused before decoding
        assert r.status_code == 422 and "exceeds the limit" in r.json()["detail"]


def _raw(port: int, data: bytes, wait: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``wait`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            pass
        return got


def test_half_sent_requests_time_out_and_connections_are_capped(predictor):
    """A request that never arrives whole is answered 408 and closed after the deadline (headers or body); beyond
    the connection cap a new connection is answered 503 at once; /health answers throughout."""
    config = ServeConfig(request_timeout_s=1.0, max_connections=6)
    with Server(create_app(predictor, config), config) as srv:
        t0 = time.monotonic()
        got = _raw(srv.port, b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # headers never end
        assert got.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 5
        got = _raw(srv.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        assert got.startswith(b"HTTP/1.1 408")  # the body never ends
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(6)]
        try:
            time.sleep(0.2)
            got = _raw(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", wait=3)
            assert got.startswith(b"HTTP/1.1 503")
            time.sleep(1.5)  # the idle ones have had their deadline: closed
            assert all(s.recv(100).startswith(b"HTTP/1.1 408") for s in idle)
        finally:
            for s in idle:
                s.close()
        time.sleep(0.2)
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200


def test_serve_command_answers_on_loopback(tmp_path, jpegs, expected):
    _, data = jpegs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "imutility", "serve", "--port", str(port), "--max-batch", "8",
                             "--max-pixels", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}/health")
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=data["20.jpg"], timeout=60)
        assert r.json()["p_useful"] == pytest.approx(expected["20.jpg"], abs=1.5e-6)
        big = httpx.post(f"http://127.0.0.1:{port}/compress", content=_png_of(1100, 1000), timeout=60)
        assert big.status_code == 422 and "exceeds the limit of 1000000" in big.json()["detail"]
        # a second server on the same port: one line, exit 1
        busy = subprocess.run([sys.executable, "-m", "imutility", "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
        assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
        assert "Traceback" not in busy.stderr
    finally:
        proc.terminate()
        proc.wait(30)
    assert np.isfinite(r.json()["p_useful"])
