"""How far one predictor's scores in two runs (two precisions, two runtimes) are apart, image by image.

    python benchmarks/compare_scores.py OUT NAME_A NAME_B [--set SET] [--threshold 0.5]

OUT is an ``imutility benchmark`` folder; NAME_A and NAME_B are two of its ``--predictor`` names (for
example ``default`` and ``default int8`` scored with ``--precision "default int8=int8"``). The scores come
from its cache (``OUT/scores/<set>/``), over the same images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from imutility.evaluation.benchmark import score_cache
from imutility.predictor import Predictor


def cached(out: Path, set_name: str, name: str) -> pd.Series:
    """The scores ``imutility benchmark`` cached for predictor ``name`` (its weights and precision as it ran)."""
    results = json.loads((out / "results.json").read_text())
    precision = results.get("precisions", {}).get(name, "fp32")
    card = Predictor.load(results["predictors"][name], runtime="onnx", precision=precision).card
    path = score_cache(out, set_name, name, card.weights_sha256, precision)
    return pd.read_parquet(path).set_index("path")["score"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--set", default=None, help="The labels folder's name [default: the only one].")
    ap.add_argument("--threshold", type=float, default=0.5)
    args = ap.parse_args(argv)
    sets = sorted(p.name for p in (args.out / "scores").iterdir())
    set_name = args.set or sets[0]
    a, b = cached(args.out, set_name, args.a), cached(args.out, set_name, args.b)
    b = b.loc[a.index]
    d = np.abs(a.to_numpy() - b.to_numpy())
    flips = ((a.to_numpy() >= args.threshold) != (b.to_numpy() >= args.threshold)).mean()
    print(f"{set_name}: {len(d)} images; |{args.b} - {args.a}|: mean {d.mean():.4f}, 99th percentile "
          f"{np.quantile(d, 0.99):.3f}, max {d.max():.3f}; correlation {np.corrcoef(a, b)[0, 1]:.4f}; decisions at "
          f"{args.threshold} that flip: {100 * flips:.2f} %")


if __name__ == "__main__":
    main()
