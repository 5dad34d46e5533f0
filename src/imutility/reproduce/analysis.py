"""The study's numbers (Tables I-IV, Fig. 1, Fig. 2, per-level accuracies), computed from the cached stage outputs
only and returned as one JSON-ready dict; the figures and the Markdown are :mod:`.report`'s."""

from __future__ import annotations

import json
import math
import platform
import time

import numpy as np

from imutility import __version__, atomic
from imutility.reproduce.config import TASKS
from imutility.reproduce.study import COMBINED, STAGES, Study, eval_table
from imutility.tasks import get_task

#: The paper's published numbers (Tables I-IV), from each task; Fig. 1 and Fig. 2 are plots without printed values.
PAPER = {table: rows for t in map(get_task, TASKS)
         for table, rows in ((t.paper_tables[0], t.paper_predictors), (t.paper_tables[1], t.paper_inter_task))}
THRESHOLD = 0.5  # P(useful) below this = filtered
#: the filter whose rejection count the rate-based baselines match (Fig. 2)
REFERENCE_FILTER = f"predictor ({COMBINED})"


# ------------------------------------------------------------------------------------------------- results
def _labels(study: Study, task: str) -> dict:
    import pandas as pd

    counts = pd.read_csv(study.labels_dir(task) / "counts.csv")
    per_level = counts.to_dict(orient="records")
    comb = counts[counts["labeler"] == COMBINED]
    return {"per_level": per_level, COMBINED: {k: int(comb[k].sum()) for k in ("useful", "non_useful", "excluded")},
            "test_photos": len(json.loads(study.split_file(task).read_text()))}


def _predictor_table(study: Study, task: str) -> list[dict]:
    paper = get_task(task).paper_predictors
    rows = []
    names = study.predictors(task)
    for i, name in enumerate(names):
        pos = len(paper) - 1 if name == COMBINED else i
        known = 0 <= pos < len(paper)  # a task beyond the paper (segmentation) has no paper numbers
        row = {"labels": name, "paper_network": paper[pos][0] if known else None,
               "paper_accuracy": paper[pos][1] if known else None}
        folder = study.predictor_dir(task, name)
        if (folder / "card.json").is_file():
            card = json.loads((folder / "card.json").read_text())
            m = card["metrics"]
            row.update({k: m.get(k) for k in ("accuracy", "balanced_accuracy", "auroc", "f1", "n", "n_useful",
                                              "n_non_useful", "accuracy_per_level")})
            row.update({"train_rows": card["data"]["train_rows"], "train_label_counts":
                        card["data"]["train_label_counts"], "train_seconds": card["train_seconds"]})
        else:
            skipped = folder / "skipped.json"
            row["not_trained"] = json.loads(skipped.read_text())["reason"] if skipped.is_file() else "missing"
        rows.append(row)
    return rows


def _heldout_level_accuracy(study: Study, task: str, table) -> dict:
    """Each predictor against the labels it was trained to predict, on test photos at held-out levels."""
    from imutility.predictor.training.split import binary_metrics

    held = table[table["distortion"].isin(study.config.heldout_distortions)]
    out = {}
    other = get_task(task).other
    for name in [*study.predictors(task), f"{other}:{COMBINED}"]:
        col = f"score:{other}-{COMBINED}" if name.startswith(other) else f"score:{task}-{name}"
        ycol = COMBINED if name.endswith(COMBINED) else f"{name}.label"
        if col not in held:
            continue
        sub = held[held[ycol].notna() & held[col].notna()]
        if len(sub) == 0:
            continue
        m = binary_metrics(sub[ycol].to_numpy(), sub[col].to_numpy(), THRESHOLD)
        m["accuracy_per_level"] = {d: float(((g[col] >= THRESHOLD) == (g[ycol] == 1)).mean())
                                   for d, g in sub.groupby("distortion", sort=False)}
        out[name] = m
    return out


def _filters(study: Study, task: str, held) -> dict[str, np.ndarray]:
    """Keep-masks over the held-out-level rows: no filter, every predictor, and the labels themselves."""
    keeps = {"no filter": np.ones(len(held), dtype=bool)}
    for name in study.predictors(task):
        col = f"score:{task}-{name}"
        if col in held:
            keeps[f"predictor ({name})"] = ~(held[col].to_numpy() < THRESHOLD)
    col = f"score:{get_task(task).other}-{COMBINED}"
    if col in held:
        keeps[f"{get_task(task).other}-trained predictor"] = ~(held[col].to_numpy() < THRESHOLD)
    keeps["labels (oracle)"] = ~(held[COMBINED].to_numpy() == 0)
    return keeps


def _fig2(study: Study, task: str, table) -> dict:
    """What filtering does to the task's held-out networks at the held-out levels (the task scores it)."""
    from imutility.labelling import read_outputs, read_sources

    held = table[table["distortion"].isin(study.config.heldout_distortions)].reset_index(drop=True)
    folder = study.eval_dir(task)
    return get_task(task).fig2(held, _filters(study, task, held), study.config.task(task).held_out,
                               lambda net: read_outputs(folder, net), {s.key: s for s in read_sources(folder)},
                               REFERENCE_FILTER, study.config.seed, study.config.random_draws,
                               study.config.heldout_distortions)


def _inter_task(study: Study, fig2: dict, task: str) -> list[dict]:
    paper = get_task(task).paper_inter_task
    other = get_task(task).other
    rows = []
    for i, (net, res) in enumerate(fig2["networks"].items()):
        row = {"network": net, "no_filter": res["no filter"]["metric"],
               "same_task_trained": res.get(REFERENCE_FILTER, {}).get("metric"),
               "same_task_kept": res.get(REFERENCE_FILTER, {}).get("kept"),
               "other_task_trained": res.get(f"{other}-trained predictor", {}).get("metric"),
               "other_task_kept": res.get(f"{other}-trained predictor", {}).get("kept")}
        if i < len(paper):
            row.update({"paper_network": paper[i][0], "paper_same_task": paper[i][1], "paper_other_task": paper[i][2]})
        rows.append(row)
    return rows


def _fig1_scores(f, label: str) -> dict:
    from imutility.reproduce.baselines import SCORES, oriented_auroc

    y = f[label].to_numpy(dtype=float)
    # within one level the compression setting is constant, so a score only wins there by seeing the content:
    # the pooled AUROC also rewards merely telling q=2 from q=90
    levels = [g for _, g in f.groupby("distortion") if min((g[label] == 1).sum(), (g[label] == 0).sum()) >= 5]
    within = {}
    for k, (_, better) in SCORES.items():
        vals = [(oriented_auroc(g[label].to_numpy(float), g[k].to_numpy(float), better), len(g)) for g in levels]
        vals = [(a, n) for a, n in vals if not math.isnan(a)]
        within[k] = float(np.average([a for a, _ in vals], weights=[n for _, n in vals])) if vals else float("nan")
    return {"images": int(len(f)), "useful": int((y == 1).sum()), "non_useful": int((y == 0).sum()),
            "auroc": {k: oriented_auroc(y, f[k].to_numpy(dtype=float), better) for k, (_, better) in SCORES.items()},
            "auroc_within_level": within, "within_levels": [str(g["distortion"].iloc[0]) for g in levels]}


def _fig1(study: Study) -> dict:
    """Fig. 1 under the study's unanimous labels (the main figure) and under the paper's own protocol."""
    import pandas as pd

    f = pd.read_parquet(study.out / "baselines" / "fig1.parquet")
    out = _fig1_scores(f[f["in_unanimous"] & f["label"].notna()], "label")
    out["ood_network"] = study.config.ood_network
    paper = f[f["in_paper"] & f["label_paper"].notna()]
    out["paper_protocol"] = _fig1_scores(paper, "label_paper") if len(paper) else None
    return out


def build_results(study: Study) -> dict:
    import torch

    cfg = study.config
    stages = {}
    for s in STAGES[:-1]:
        marker = study.out / "stages" / f"{s}.json"
        if marker.is_file():
            stages[s] = json.loads(marker.read_text())["seconds"]
    tables = {t: eval_table(study, t) for t in cfg.tasks}
    fig2 = {t: _fig2(study, t, tables[t]) for t in cfg.tasks}
    res = {
        "config": cfg.as_dict(),
        "environment": {"imutility": __version__, "torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpu_count": __import__("os").cpu_count(),
                        "device": study.device, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "stage_seconds": stages,
        "labels": {t: _labels(study, t) for t in cfg.tasks},
        **{get_task(t).paper_tables[0]: _predictor_table(study, t) for t in cfg.tasks},
        "heldout_levels": {t: _heldout_level_accuracy(study, t, tables[t]) for t in cfg.tasks},
        "fig2": fig2,
        **{get_task(t).paper_tables[1]: _inter_task(study, fig2[t], t) for t in cfg.tasks},
        "tasks": list(cfg.tasks),
        "fig1": _fig1(study),
        "paper": PAPER,
    }
    return atomic.json_safe(res)


