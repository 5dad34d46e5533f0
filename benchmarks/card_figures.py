"""Copy one benchmark set's figures into a predictor's card (the ``benchmark`` block the card ships with).

    python benchmarks/card_figures.py RESULTS CARD --set SET --judge NETWORK --predictor NAME --key KEY [--note TEXT]

RESULTS is an ``imutility benchmark`` run's ``results.json``; SET one of its sets (a LABELS folder's name); NETWORK a
network of that set that defined no label (``--held-out``), whose success judges; NAME the ``--predictor`` name
the card's predictor had in that run. The figures (:func:`imutility.evaluation.report.card_figures`) are written
to ``card["benchmark"][KEY]``; nothing the predictor's graphs depend on changes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imutility import atomic
from imutility.evaluation.report import card_figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("card", type=Path)
    ap.add_argument("--set", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--note", default="")
    a = ap.parse_args(argv)
    results = json.loads(a.results.read_text())
    card = json.loads(a.card.read_text())
    card.setdefault("benchmark", {})[a.key] = card_figures(results, a.set, a.judge, a.predictor, a.note)
    atomic.write_json(a.card, card)
    fig = card["benchmark"][a.key]["within_level_auroc"]
    print(f"{a.card}: benchmark.{a.key}: {a.predictor} {fig[a.predictor]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
