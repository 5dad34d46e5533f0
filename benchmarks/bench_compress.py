"""Rate control cost: images/s of every `imutility compress` mode against one plain encode (+ one network call).

    python benchmarks/bench_compress.py [--n 32] [--t 0.5] [--batch 32] [--workers 0,2] [--for mobilenet_v3_small]

Modes and what one image costs (reported: images/s, encodes and network passes per image):
``--for NET`` (plan, check, <= 1 correction), ``--target NET`` (bisection on the network's own utility), and
``--min-utility`` (bisection on the utility predictor).

Same photos, same predictor (ONNX Runtime on the CPU), same run. The ratio says how many "plain passes" the
search costs per image; encodes per image are counted by the search itself. ``compress`` searches one image
at a time (the predictor sees one candidate per call); ``compress_many`` (``imutility compress``) searches
``--batch`` images in lockstep, with the candidates encoded in ``--workers`` threads; its results must equal
``compress``'s (checked here).
"""

from __future__ import annotations

import argparse
import time

from imutility.distort import JPEG
from imutility.images import list_images, load_image
from imutility.paths import shared_data
from imutility.predictor import Predictor
from imutility.rate import compress, compress_many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--t", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--for", dest="for_network", default="mobilenet_v3_small")
    args = ap.parse_args()
    images = [load_image(f) for f in list_images(shared_data("imagenet-sample"))[: args.n]]
    pred = Predictor.load("default").use_onnx_runtime()
    pred([JPEG(75)(images[0]).image])  # warm-up

    t0 = time.perf_counter()
    for im in images:
        pred([JPEG(75)(im).image])
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = [compress(im, args.t, pred) for im in images]
    search = time.perf_counter() - t0
    encodes = sum(r.encodes for r in results) / len(results)
    print(f"{len(images)} ImageNet sample photos, T = {args.t}")
    print(f"one encode + one predictor call: {len(images) / plain:.1f} img/s (1.00x)")
    print(f"compress (bisection): {len(images) / search:.2f} img/s = {plain / search:.3f}x; "
          f"{encodes:.1f} encodes per image; chosen qualities {sorted(r.quality for r in results)}")
    for workers in (int(w) for w in args.workers.split(",")):
        t0 = time.perf_counter()
        many = dict(compress_many(enumerate(images), args.t, lambda _im: pred, batch_size=args.batch,
                                  workers=workers))
        took = time.perf_counter() - t0
        same = all(many[i].data == r.data for i, r in enumerate(results))
        print(f"compress_many (batch {args.batch}, {workers} encoding threads): {len(images) / took:.2f} img/s = "
              f"{plain / took:.3f}x, {search / took:.2f}x compress; same bytes as compress: {same}")


    network_modes(images, args.for_network, args.batch)


def network_modes(images, network: str, batch: int) -> None:
    """``--for NET`` against ``--target NET`` and one plain encode + one pass of NET, same photos, same run."""
    from imutility import zoo
    from imutility.rate import PLANNED, NetworkOracle
    from imutility.rate.plan import QualityPlanner, load_rate_model

    labeler = zoo.get_labeler(network)
    labeler([images[0]])  # warm-up
    t0 = time.perf_counter()
    for im in images:
        JPEG(75)(im).data  # noqa: B018
    encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    for im in images:
        labeler([JPEG(75)(im).image])
    plain = time.perf_counter() - t0
    print(f"\n{network}: one plain JPEG encode {len(images) / encode:.1f} img/s; encode + one pass of {network} "
          f"{len(images) / plain:.1f} img/s (1.00x)")
    planner = QualityPlanner(load_rate_model(network), labeler, 0.5)
    oracle = NetworkOracle([labeler])
    for name, scorer, search, t in (("--for (plan, check, <= 1 correction)", planner, PLANNED, 0.5),
                                    ("--target (bisection on its own utility)", oracle, "bisect", 0.9)):
        t0 = time.perf_counter()
        res = dict(compress_many(enumerate(images), t, scorer.scorer_for, search=search, batch_size=batch))
        took = time.perf_counter() - t0
        encodes = sum(r.encodes for r in res.values()) / len(res)
        checks = sum(r.encodes - (search == PLANNED and not r.satisfied and r.encodes > 1) for r in res.values())
        print(f"{name}: {len(images) / took:.2f} img/s = {plain / took:.3f}x; {encodes:.2f} encodes and "
              f"{1 + checks / len(res):.2f} passes of {network} per image")


if __name__ == "__main__":
    main()
