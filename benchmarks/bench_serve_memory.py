"""Peak memory of `imutility serve` under worst-case requests: N concurrent /compress (and /predict) requests of a
small PNG that decodes to many pixels (a grey 13,000 x 13,000 image: 169 MP, under the default 178.9 MP limit).

    python benchmarks/bench_serve_memory.py [--side 13000] [--clients 1,2,4] [--predict 16]

Each setting runs a fresh `imutility serve` (default settings unless given) on loopback; the server's resident set
size is sampled every 50 ms (psutil, children included) and its peak above the idle server is printed with the
answers' status codes. Without the /compress pixel budget, memory grows with the number of concurrent searches;
with it (the default: one worst-case image's pixels), the peak stays that of one search.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(body: bytes, path: str, clients: int, extra: list[str]) -> tuple[float, float, list[int], float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imutility", "serve", "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            time.sleep(0.3)
        idle = rss(ps)
        peak = [idle]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss(ps))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(lambda _: httpx.post(f"http://127.0.0.1:{port}{path}", content=body,
                                                       params={"min_utility": 0.5} if path == "/compress" else None,
                                                       timeout=3600).status_code, range(clients)))
        took = time.perf_counter() - t0
        stop.set()
        sampler.join()
        return idle / 2**30, peak[0] / 2**30, codes, took
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=13_000)
    ap.add_argument("--clients", default="1,2,4")
    ap.add_argument("--predict", type=int, default=16, help="concurrent /predict requests (0: skip)")
    ap.add_argument("--serve-args", default="", help="extra `imutility serve` options, e.g. '--compress-pixels 4e8'")
    args = ap.parse_args()
    buf = io.BytesIO()
    Image.new("L", (args.side, args.side), 128).save(buf, "PNG")
    body = buf.getvalue()
    extra = args.serve_args.split()
    print(f"body: grey PNG {args.side}x{args.side} = {args.side**2 / 1e6:.0f} MP, {len(body) / 1e3:.0f} kB; "
          f"serve {' '.join(extra) or '(defaults)'}")
    print(f"{'endpoint':10s} {'clients':>7s} {'idle GiB':>9s} {'peak GiB':>9s} {'peak-idle':>9s} {'s':>6s}  codes")
    for n in [int(x) for x in args.clients.split(",") if x]:
        idle, peak, codes, took = run(body, "/compress", n, extra)
        print(f"{'/compress':10s} {n:7d} {idle:9.2f} {peak:9.2f} {peak - idle:9.2f} {took:6.0f}  {codes}")
    if args.predict:
        idle, peak, codes, took = run(body, "/predict", args.predict, extra)
        print(f"{'/predict':10s} {args.predict:7d} {idle:9.2f} {peak:9.2f} {peak - idle:9.2f} {took:6.0f}  "
              f"{sorted(set(codes))}")


if __name__ == "__main__":
    main()
