"""Throughput from JPEG files on disk to scores, beside the decode ceiling measured in the same run.

    python benchmarks/bench_throughput.py [--files DIR] [--n 256] [--device cpu|cuda] [--rounds 1] [--json OUT]

CPU: the ceiling is decoding the same files with the same decoder (``imutility.images.load_image``,
Pillow) in one process per core; each predictor runs through ``Predictor.predict_paths`` with ONNX
Runtime, with decoding in this process (``--workers 0``) and in worker processes beside the network, in
float32 and, for content predictors, int8 (the quantized backbone, ``--precision int8``).
"Network only" scores the already-prepared tiles (no file, no decode): the bound the network itself sets.

GPU (``--device cuda``): the ceiling is ``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG) in
batches over the files' bytes read into memory; each predictor runs through ``Predictor.predict_paths``
(Pillow on the CPU, network on the GPU) and ``Predictor.predict_files`` (nvJPEG batches, resize and tiles
on the GPU). Both include reading the files.

Library against CLI (CPU, ``--library-vs-cli``): the same files scored by ``Predictor.load(name)`` with its
default placement, as a script would, and by ``imutility predict`` (in this process, through ``main``); both
resolve the same engine, so the two rates should agree within the machine's noise (the median of ``--rounds``).

Goals (issue 13): CPU end-to-end >= 0.7x the decode ceiling; GPU end-to-end >= 0.8x the nvJPEG ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from imutility.images import list_images, load_image
from imutility.paths import shared_data

# Predictor (and torch) are imported inside the functions: worker processes re-import this script, and the
# decoding workers of `predict --workers` import no torch either.


def _decode_chunk(paths: list[Path]) -> int:
    for p in paths:
        load_image(p)
    return len(paths)


def cpu_decode_ceiling(files: list[Path], procs: int, rounds: int = 1) -> float:
    """img/s decoding every file once with Pillow in ``procs`` processes (pool start excluded; the median of
    ``rounds`` passes)."""
    import multiprocessing
    import statistics

    chunks = [files[i::procs * 4] for i in range(procs * 4)]
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_decode_chunk, [files[:2]] * procs))  # start the workers
        rates = []
        for _ in range(max(1, rounds)):
            t0 = time.perf_counter()
            n = sum(pool.map(_decode_chunk, chunks))
            rates.append(n / (time.perf_counter() - t0))
        return statistics.median(rates)


def timed_rate(fn, n: int, sync=lambda: None) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return n / (time.perf_counter() - t0)


def median_rate(fn, n: int, rounds: int) -> float:
    """The median of ``rounds`` timings of ``fn`` (a shared 2-core machine varies by 10-20 % run to run)."""
    import statistics

    return statistics.median(timed_rate(fn, n) for _ in range(max(1, rounds)))


def cpu(files: list[Path], rows: list[dict], names: list[str], worker_counts: list[int],
        precisions: list[str], rounds: int = 1) -> None:
    from imutility.predictor import Predictor

    cores = os.cpu_count() or 1
    ceiling = cpu_decode_ceiling(files, cores, rounds)
    print(f"CPU: {platform.processor() or platform.machine()}, {cores} cores; {len(files)} JPEG files")
    print(f"  decode only (Pillow, {cores} processes): {ceiling:.1f} img/s (the ceiling)")
    rows.append({"device": "cpu", "what": "decode only", "img_s": ceiling})
    for name in names:
        for precision in precisions:
            try:
                p = Predictor.load(name, runtime="onnx", precision=precision)
            except ValueError as e:  # int8 for a fine-tuned predictor (a SettingError)
                print(f"  {name} {precision}: not available ({e})")
                continue
            list(p.predict_paths(files[:8], 8))  # warm-up (ONNX Runtime session, caches)
            prep = p.engine.preparer()
            prepared = [prep(load_image(f)) for f in files]
            net = median_rate(lambda p=p, prepared=prepared: [p.scores_prepared(prepared[i:i + 32])
                                                              for i in range(0, len(prepared), 32)], len(files), rounds)
            print(f"  {name} ({p.architecture}) {precision}: network only {net:.1f} img/s = {net / ceiling:.2f}x")
            rows.append({"device": "cpu", "predictor": name, "precision": precision, "what": "network only",
                         "img_s": net, "vs_ceiling": net / ceiling})
            for workers in worker_counts or sorted({0, 1, cores}):
                rate = median_rate(lambda p=p, w=workers: list(p.predict_paths(files, 32, workers=w)), len(files),
                                   rounds)
                print(f"  {name} {precision}: files -> scores, --workers {workers}: {rate:.1f} img/s = "
                      f"{rate / ceiling:.2f}x the decode ceiling (goal 0.7x)")
                rows.append({"device": "cpu", "predictor": name, "precision": precision, "what": "end to end",
                             "workers": workers, "img_s": rate, "vs_ceiling": rate / ceiling})


def gpu(files: list[Path], rows: list[dict], names: list[str], batch: int, precisions: list[str]) -> None:
    import numpy as np
    import torch
    import torchvision
    from torchvision.io import ImageReadMode, decode_jpeg

    from imutility.predictor import Predictor

    datas = [torchvision.io.read_file(str(p)) for p in files]
    sync = torch.cuda.synchronize
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, torchvision {torchvision.__version__}; "
          f"{len(files)} JPEG files")

    def decode_all():
        return [t for i in range(0, len(datas), batch)
                for t in decode_jpeg(datas[i:i + batch], mode=ImageReadMode.RGB, device="cuda")]

    decode_all()
    ceiling = timed_rate(decode_all, len(files), sync)
    print(f"  nvJPEG batched decode only: {ceiling:.0f} img/s (the ceiling)")
    rows.append({"device": "cuda", "what": "decode only", "img_s": ceiling})
    decoded = decode_all()
    for name in names:
        ref = None
        for precision in precisions:
            p = Predictor.load(name, device="cuda", precision=precision)
            runs = [("predict_files", p.predict_files)] + ([("predict_paths", p.predict_paths)]
                                                           if precision == "fp32" else [])
            for how, run in runs:
                cold = timed_rate(lambda run=run: list(run(files, batch)), len(files), sync)  # first pass: warm-up
                print(f"  {name} {how} {precision}: first pass (kernel choices for new shapes): {cold:.0f} img/s")
                got: list = []
                rate = timed_rate(lambda run=run, got=got: got.extend(run(files, batch)), len(files), sync)
                scores = np.array([np.nan if s is None else s for _, s, _ in got], dtype=np.float64)
                if ref is None:
                    ref = scores
                diff = float(np.nanmax(np.abs(scores - ref)))
                print(f"  {name} ({p.architecture}) {how} {precision}: {rate:.0f} img/s = {rate / ceiling:.3f}x "
                      f"(goal 0.8x); max |score - fp32 predict_files| {diff:.1e}")
                rows.append({"device": "cuda", "predictor": name, "what": how, "precision": precision, "img_s": rate,
                             "vs_ceiling": rate / ceiling, "max_abs_diff_vs_fp32": diff})
            if hasattr(p.engine, "outputs_from_tensors"):
                def net(p=p):
                    for i in range(0, len(decoded), batch):
                        p.card.head(*p.engine.outputs_from_tensors(decoded[i:i + batch], p.device),
                                    len(decoded[i:i + batch]))
                net()
                rate = timed_rate(net, len(files), sync)
                print(f"  {name} {precision}: resize + tiles + network only (decoded images on the GPU): "
                      f"{rate:.0f} img/s = {rate / ceiling:.3f}x")
                rows.append({"device": "cuda", "predictor": name, "what": "tiles + network only",
                             "precision": precision, "img_s": rate, "vs_ceiling": rate / ceiling})


def library_vs_cli(files: list[Path], rows: list[dict], names: list[str], rounds: int) -> None:
    import tempfile

    from imutility.cli import main as cli_main
    from imutility.predictor import Predictor

    print(f"library default placement vs `imutility predict`, {len(files)} files, median of {rounds}:")
    for name in names:
        def library(name=name):
            list(Predictor.load(name).predict_paths(files, 32))

        def cli(name=name):
            with tempfile.TemporaryDirectory() as d:
                assert cli_main(["predict", *map(str, files), "--model", name, "--no-progress", "-o",
                                 f"{d}/s.jsonl"]) == 0

        lib, cmd = median_rate(library, len(files), rounds), median_rate(cli, len(files), rounds)
        runtime = Predictor.load(name).runtime
        print(f"  {name}: library {lib:.1f} img/s ({runtime}), CLI {cmd:.1f} img/s: library / CLI {lib / cmd:.2f}")
        rows.append({"device": "cpu", "predictor": name, "what": "library vs cli", "library_img_s": lib,
                     "cli_img_s": cmd, "ratio": lib / cmd, "runtime": runtime})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default=None, help="A folder of JPEGs [default: the shared ImageNet sample].")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, default=64, help="GPU batch size.")
    ap.add_argument("--workers", default=None, help="CPU: comma-separated worker counts [default: 0,1,all cores].")
    ap.add_argument("--precision", default=None, help="Comma-separated precisions, fp32 first [default: CPU "
                                                      "fp32,int8; GPU fp32,bf16,fp16].")
    ap.add_argument("--rounds", type=int, default=1, help="CPU: the median of this many timings of each figure.")
    ap.add_argument("--predictors", default=None, help="Comma-separated predictors [default: every built-in one].")
    ap.add_argument("--json", default=None, help="Also write the figures here.")
    ap.add_argument("--library-vs-cli", action="store_true", help="Only the library-against-CLI comparison.")
    args = ap.parse_args(argv)
    root = Path(args.files) if args.files else shared_data("imagenet-sample")
    files = [p for p in list_images(root) if p.suffix.lower() in (".jpg", ".jpeg")][: args.n]
    from imutility.predictor.builtin import BUILTIN

    names = args.predictors.split(",") if args.predictors else sorted(set(BUILTIN.values()))
    rows: list[dict] = []
    if args.library_vs_cli:
        library_vs_cli(files, rows, names, args.rounds)
    elif args.device == "cuda":
        gpu(files, rows, names, args.batch, (args.precision or "fp32,bf16,fp16").split(","))
    else:
        cpu(files, rows, names, [int(w) for w in args.workers.split(",")] if args.workers else [],
            (args.precision or "fp32,int8").split(","), args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps({"files": str(root), "n": len(files), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
