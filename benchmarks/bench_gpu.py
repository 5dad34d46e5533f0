"""Predictor throughput on a CUDA device, beside the nvJPEG decode ceiling on the same card and files.

    python benchmarks/bench_gpu.py --files DIR [--n 512] [--batch 64]

Ceiling: ``torchvision.io.decode_jpeg(..., device="cuda")`` in batches over the files' bytes (read into
memory first). Every predictor runs through ``Predictor.predict_paths`` (Pillow decode on the CPU, network
on the GPU) and ``Predictor.predict_files`` (file reads in threads, nvJPEG batches, resize and tiles on the
GPU) on the same files; both include reading the files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from imutility.images import list_images
from imutility.predictor import Predictor
from imutility.predictor.model import BUILTIN


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", required=True)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    import torchvision
    from torchvision.io import decode_jpeg

    files = [p for p in list_images(Path(args.files)) if p.suffix.lower() in (".jpg", ".jpeg")][: args.n]
    datas = [torchvision.io.read_file(str(p)) for p in files]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, torchvision {torchvision.__version__}; "
          f"{len(files)} JPEG files")

    def decode_all():
        for i in range(0, len(datas), args.batch):
            decode_jpeg(datas[i:i + args.batch], device="cuda")
        torch.cuda.synchronize()

    decode_all()
    t0 = time.perf_counter()
    decode_all()
    ceiling = len(files) / (time.perf_counter() - t0)
    print(f"nvJPEG batched decode only: {ceiling:.0f} img/s (the ceiling)")
    for name in sorted(set(BUILTIN.values())):
        p = Predictor.load(name, device="cuda")
        list(p.predict_paths(files[: args.batch], args.batch))  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        list(p.predict_paths(files, args.batch))
        torch.cuda.synchronize()
        rate = len(files) / (time.perf_counter() - t0)
        print(f"{name} ({p.architecture}, {p.card['backbone']}) predict_paths on cuda: {rate:.0f} img/s "
              f"= {rate / ceiling:.3f}x the decode ceiling")
        list(p.predict_files(files[: args.batch], args.batch))  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        list(p.predict_files(files, args.batch))
        torch.cuda.synchronize()
        rate = len(files) / (time.perf_counter() - t0)
        print(f"{name} predict_files (nvJPEG batches, tiles on the GPU): {rate:.0f} img/s "
              f"= {rate / ceiling:.3f}x the decode ceiling")


if __name__ == "__main__":
    main()
