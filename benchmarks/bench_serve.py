"""The scoring service under load, beside ``predict`` on the same images in the same run.

    python benchmarks/bench_serve.py [--files DIR] [--n 128] [--model default] [--clients 1,32] [--json OUT]

A uvicorn server on loopback (``imutility.serve.create_app``, ONNX Runtime on the CPU, as ``imutility serve``
runs) is sent every file's bytes as ``POST /predict`` by 1 and by 32 concurrent clients (threads with their
own keep-alive connection). Reported: requests/s, p50 / p99 latency, mean network batch; the reference is
``Predictor.predict_paths`` (what ``imutility predict`` calls) over the same files in this process, so the
ratio is the cost of HTTP, the queue and per-request decoding on the same cores. The server and the clients
share the machine: on 2 cores the clients' own work is part of what is measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from imutility.images import list_images
from imutility.paths import shared_data


def serve_in_thread(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def load(url: str, bodies: list[bytes], clients: int) -> dict:
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    order = list(range(len(bodies)))

    def worker(k: int):
        mine = order[k::clients]
        with httpx.Client(base_url=url, timeout=300) as c:
            for i in mine:
                t0 = time.perf_counter()
                r = c.post("/predict", content=bodies[i])
                dt = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                with lock:
                    latencies.append(dt)

    before = _health(url)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    after = _health(url)
    lat = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(lat), "req_per_s": len(lat) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_batch": (after["images_scored"] - before["images_scored"])
            / max(1, after["network_batches"] - before["network_batches"])}


def _health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health", timeout=30).json()


def main(argv: list[str] | None = None) -> None:
    from imutility.predictor import Predictor
    from imutility.serve import ServeConfig, create_app

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default=None, help="A folder of images [default: the shared ImageNet sample].")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--model", default="default")
    ap.add_argument("--clients", default="1,32", help="Comma-separated numbers of concurrent clients.")
    ap.add_argument("--json", default=None, help="Also write the figures here.")
    args = ap.parse_args(argv)
    root = Path(args.files) if args.files else shared_data("imagenet-sample")
    files = list_images(root)[: args.n]
    bodies = [f.read_bytes() for f in files]
    pred = Predictor.load(args.model).use_onnx_runtime()

    list(pred.predict_paths(files[:8]))  # warm up
    t0 = time.perf_counter()
    list(pred.predict_paths(files, batch_size=32))
    ref = len(files) / (time.perf_counter() - t0)

    server, thread, url = serve_in_thread(create_app(pred, ServeConfig()))
    rows = []
    try:
        load(url, bodies[:8], 1)  # warm up
        for c in (int(x) for x in args.clients.split(",")):
            row = load(url, bodies, c)
            row["vs_predict"] = row["req_per_s"] / ref
            rows.append(row)
    finally:
        server.should_exit = True
        thread.join(30)
    print(f"{len(files)} images from {root} · model {args.model} · {platform.processor() or platform.machine()}")
    print(f"predict_paths (batch 32, same process): {ref:.1f} img/s")
    for r in rows:
        print(f"{r['clients']:3d} clients: {r['req_per_s']:6.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
              f"p99 {r['p99_ms']:7.1f} ms  mean batch {r['mean_batch']:.1f}  = {r['vs_predict']:.2f}x predict")
    if args.json:
        Path(args.json).write_text(json.dumps({"files": str(root), "n": len(files), "model": args.model,
                                               "predict_img_per_s": ref, "serve": rows}, indent=2))


if __name__ == "__main__":
    main()
