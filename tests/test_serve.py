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
from imutility.serve import ServeConfig, create_app  # noqa: E402


class Server:
    """uvicorn serving ``app`` in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
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
    with Server(create_app(predictor, ServeConfig(max_body_bytes=2_000_000, max_images=8, max_pixels=4_000_000))) as s:
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
        assert card == json.loads(json.dumps(predictor.card))


def test_serve_command_answers_on_loopback(tmp_path, jpegs, expected):
    _, data = jpegs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "imutility", "serve", "--port", str(port), "--max-batch", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}/health")
        r = httpx.post(f"http://127.0.0.1:{port}/predict", content=data["20.jpg"], timeout=60)
        assert r.json()["p_useful"] == pytest.approx(expected["20.jpg"], abs=1.5e-6)
    finally:
        proc.terminate()
        proc.wait(30)
    assert np.isfinite(r.json()["p_useful"])
