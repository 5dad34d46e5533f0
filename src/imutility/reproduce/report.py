"""Tables, figures and the markdown report of a study, computed from the cached stage outputs only.

Every paper number sits beside ours (``PAPER``); the rows are matched by position (the i-th labeler
of the config against the paper's i-th network), which is exact for the ``paper`` config only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imutility import atomic
from imutility.reproduce.study import COMBINED, Study
from imutility.tasks import get_task


def _level_name(spec: str) -> str:
    from imutility.distort import parse_distortion

    d = parse_distortion(spec)
    return f"q={d.level:g}" if spec.startswith("jpeg:") else spec


# ------------------------------------------------------------------------------------------------- figures
def _save(fig, path: Path) -> None:
    atomic.write_figure(fig, path, dpi=120, bbox_inches="tight")


def _plot_labels(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), layout="constrained")
    for ax, task in zip(np.atleast_1d(axes), tasks, strict=True):
        rows = [r for r in results["labels"][task]["per_level"] if r["labeler"] == COMBINED]
        x = np.arange(len(rows))
        bottom = np.zeros(len(rows))
        for key, colour, lab in (("useful", "tab:blue", "useful (1)"), ("non_useful", "tab:orange", "non-useful (0)"),
                                 ("excluded", "lightgrey", "excluded (networks disagree, or no usable reference)")):
            v = np.array([r[key] for r in rows], dtype=float)
            ax.bar(x, v, bottom=bottom, color=colour, label=lab)
            bottom += v
        ax.set_xticks(x, [_level_name(r["distortion"]) for r in rows], rotation=45)
        ax.set_xlabel("JPEG quality level")
        ax.set_ylabel("images")
        ax.set_title(f"{task}: combined (unanimous) labels per level")
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9)
    _save(fig, path)


def _plot_fig1(study: Study, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from imutility.reproduce.baselines import SCORES

    f = pd.read_parquet(study.out / "baselines" / "fig1.parquet")
    f = f[f["in_unanimous"] & f["label"].notna()]
    fig, axes = plt.subplots(2, 4, figsize=(18, 8), layout="constrained")
    for ax in axes.ravel()[len(SCORES):]:
        ax.axis("off")
    for ax, (key, (label, _)) in zip(axes.ravel(), SCORES.items(), strict=False):
        v = f[key].to_numpy(dtype=float)
        ok = ~np.isnan(v)
        bins = np.histogram_bin_edges(v[ok], bins=30) if ok.any() else 10
        for lab, colour, name in ((1, "tab:blue", "useful"), (0, "tab:orange", "non-useful")):
            sel = ok & (f["label"].to_numpy() == lab)
            if not sel.any():
                continue
            ax.hist(v[sel], bins=bins, alpha=0.6, color=colour, label=f"{name} (n={int(sel.sum())})", density=True)
        auroc = results["fig1"]["auroc"].get(key)
        ax.set_title(f"{key}: AUROC {auroc:.3f}" if auroc is not None else key)
        ax.set_xlabel(label + (f" [{study.config.ood_network}]" if key in ("msp", "energy", "squeeze") else ""))
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.suptitle("Useful vs non-useful test images (classification labels): quality and OOD scores vs the predictor")
    _save(fig, path)


def _plot_fig2(results: dict, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = get_task(task)
    nets = results["fig2"][task]["networks"]
    if not nets:
        return
    filters = list(next(iter(nets.values())))
    fig, ax = plt.subplots(figsize=(max(7, 2.2 * len(nets) * max(1, len(filters) / 4)), 4.8), layout="constrained")
    width = 0.8 / len(filters)
    cmap = plt.get_cmap("tab10")
    for j, fname in enumerate(filters):
        vals = [nets[n][fname]["metric"] if nets[n].get(fname) and nets[n][fname]["metric"] is not None else np.nan
                for n in nets]
        kept = [nets[n].get(fname, {}).get("kept") for n in nets]
        xs = np.arange(len(nets)) + (j - (len(filters) - 1) / 2) * width
        bars = ax.bar(xs, [100 * v if spec.metric_percent else v for v in vals], width, label=fname,
                      color=cmap(j % 10))
        for b, k in zip(bars, kept, strict=True):
            if k is not None:
                ax.annotate(f"{100 * k:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=6)
    ax.set_xticks(np.arange(len(nets)), list(nets))
    ax.set_xlabel("held-out network (never used for labels)")
    ax.set_ylabel(spec.metric_name + (" (%)" if spec.metric_percent else ""))
    ax.set_title(f"{task} at held-out JPEG levels: {spec.filter_rule} (numbers on bars: % of images kept)",
                 fontsize=9)
    ax.margins(y=0.08)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=min(4, len(filters)), fontsize=8)
    _save(fig, path)


def _plot_levels(study: Study, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from imutility.distort import parse_distortion

    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for task, colour in zip(results["tasks"], ("tab:blue", "tab:green", "tab:purple"), strict=False):
        comb = next((r for r in results[get_task(task).paper_tables[0]] if r["labels"] == COMBINED), None)
        pts = []
        if comb and comb.get("accuracy_per_level"):
            pts += [(parse_distortion(d).level, a, "train") for d, a in comb["accuracy_per_level"].items()]
        held = results["heldout_levels"][task].get(COMBINED, {}).get("accuracy_per_level", {})
        pts += [(parse_distortion(d).level, a, "held") for d, a in held.items() if a is not None]
        for kind, marker in (("train", "o"), ("held", "s")):
            sel = sorted((lv, a) for lv, a, k in pts if k == kind)
            if sel:
                ax.plot([p[0] for p in sel], [100 * p[1] for p in sel], marker=marker, color=colour,
                        linestyle="-" if kind == "train" else ":",
                        label=f"{task}: {'training' if kind == 'train' else 'held-out'} levels")
    ax.set_xscale("log")
    levels = sorted({parse_distortion(d).level for d in (*study.config.train_distortions,
                                                          *study.config.heldout_distortions)})
    ax.set_xticks(levels, [f"{v:g}" for v in levels])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("JPEG quality (log scale)")
    ax.set_ylabel("predictor accuracy on test photos (%)")
    ax.set_title("Combined-label predictors: accuracy per compression level")
    ax.legend(fontsize=8)
    _save(fig, path)


# ------------------------------------------------------------------------------------------------- markdown
def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _num(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _markdown(study: Study, r: dict) -> str:
    cfg = study.config
    total = sum(r["stage_seconds"].values())
    out = [f"# imutility reproduce: `{cfg.name}`", "", cfg.description, "",
           f"imutility {r['environment']['imutility']}, torch {r['environment']['torch']}, "
           f"{r['environment']['cpu_count']} CPU cores, device {r['environment']['device']}; written "
           f"{r['environment']['written']}. Stage wall times: "
           + ", ".join(f"{k} {v:.0f} s" for k, v in r["stage_seconds"].items()) + f" (total {total / 60:.1f} min).",
           "", "Training levels: " + ", ".join(map(_level_name, cfg.train_distortions))
           + ". Held-out levels (never seen by a predictor): " + ", ".join(map(_level_name, cfg.heldout_distortions))
           + f". Test photos: {cfg.test_fraction:.0%} of the photos, whole photos on one side. Predictor: "
           f"{cfg.predictor.backbone} ({cfg.predictor.recipe}, {cfg.predictor.geometry} {cfg.predictor.size}, "
           f"{cfg.predictor.epochs} epochs" + (f", at most {cfg.predictor.max_samples} training images"
                                                if cfg.predictor.max_samples else "") + ").", ""]
    out += ["## Labels per level (training levels, all photos)", "",
            "Unanimous combination of the labelers (Section IV). Counts per level, so that a predictor that only "
            "spots extreme blockiness shows up as labels confined to the lowest qualities.", "",
            "![labels per level](figures/labels_per_level.png)", ""]
    for task in r["tasks"]:
        ts = cfg.task(task)
        rows = [x for x in r["labels"][task]["per_level"] if x["labeler"] == COMBINED]
        out += [f"**{task}** (labelers: {', '.join(ts.labelers)}; test photos: {r['labels'][task]['test_photos']})",
                "", _table(["level", "useful", "non-useful", "excluded"],
                           [[_level_name(x["distortion"]), x["useful"], x["non_useful"], x["excluded"]] for x in rows]
                           + [["**all**", *(r["labels"][task][COMBINED][k]
                                             for k in ("useful", "non_useful", "excluded"))]]),
                ""]
    for task in r["tasks"]:
        key = get_task(task).paper_tables[0]
        title = {"table1": "Table I", "table2": "Table II"}.get(key, key)
        out += [f"## {title}: predictor accuracy per labeler ({task})", "",
                "Test photos at the training levels, against the labels of the network(s) in the first column.", "",
                _table(["labels from", "accuracy", "balanced acc.", "AUROC", "test images (useful / non-useful)",
                        "train images", "paper network", "paper accuracy"],
                       [[x["labels"], _pct(x.get("accuracy")), _pct(x.get("balanced_accuracy")), _num(x.get("auroc")),
                         f"{x.get('n', '—')} ({x.get('n_useful', '—')} / {x.get('n_non_useful', '—')})"
                         if "accuracy" in x else f"not trained: {x.get('not_trained')}",
                         x.get("train_rows", "—"), x.get("paper_network") or "—", _pct(x.get("paper_accuracy"))]
                        for x in r[key]]), ""]
    out += ["## Predictors at held-out levels", "",
            "Accuracy on test photos compressed at levels no predictor saw, against the labels it was trained to "
            "predict (the `combined` labels of the labelers at those levels). The last row of each task is the other "
            "task's predictor judged against this task's labels.", "",
            "![accuracy per level](figures/predictor_accuracy_by_level.png)", ""]
    for task in r["tasks"]:
        h = r["heldout_levels"][task]
        out += [f"**{task}**", "", _table(["predictor", "accuracy", "balanced acc.", "AUROC", "images (useful / non)"],
                                          [[k, _pct(m["accuracy"]), _pct(m["balanced_accuracy"]), _num(m["auroc"]),
                                            f"{m['n']} ({m['n_useful']} / {m['n_non_useful']})"]
                                           for k, m in h.items()]), ""]
    for task in r["tasks"]:
        spec = get_task(task)
        f2 = r["fig2"][task]
        fig_title = spec.paper_tables[2]
        nets = f2["networks"]
        baselines = [f for f in (next(iter(nets.values())) if nets else {}) if f.endswith("(same count)")]
        out += [f"## {fig_title}: held-out {task} networks with and without filtering", "",
                f"{f2['images']} images ({f2['photos']} test photos x held-out levels). "
                f"{spec.filter_rule[0].upper()}{spec.filter_rule[1:]}. Baselines at the same rejection count as the "
                f"combined predictor: {', '.join(baselines) or 'none'}. `labels (oracle)` filters the images the "
                "labelers call non-useful.", "",
                f"![{fig_title}](figures/fig2_{task}.png)", ""]
        nets = f2["networks"]
        if nets:
            filters = list(next(iter(nets.values())))
            rows = []
            for fname in filters:
                cells = [fname]
                for n in nets:
                    m = nets[n].get(fname)
                    if not m or m.get("metric") is None:
                        cells.append("—")
                    else:
                        extra = f"{_num(m['metric50'])}; " if m.get("metric50") is not None else ""
                        cells.append(f"{spec.format_metric(m['metric'])} ({extra}kept {_pct(m['kept'])})")
                rows.append(cells)
            has50 = any((m or {}).get("metric50") is not None for n in nets for m in nets[n].values())
            out += [f"{spec.metric_name}{' (mAP@0.5)' if has50 else ''} per held-out network:", "",
                    _table(["filter", *nets], rows), ""]
        if f2.get("per_level"):
            out += ["Per held-out level, no filter → combined predictor (share kept):", "",
                    _table(["level", *nets], [[_level_name(d), *(
                        f"{_pct(v[n]['no_filter'])} → {_pct(v[n]['combined']['metric'])} "
                        f"({_pct(v[n]['combined']['kept'])})" for n in nets)] for d, v in f2["per_level"].items()]), ""]
    for task in r["tasks"]:
        spec = get_task(task)
        key = spec.paper_tables[1]
        title = f"{ {'table3': 'Table III', 'table4': 'Table IV'}.get(key, key)}: {task} {spec.metric_name}"
        fmt = spec.format_metric
        out += [f"## {title}, inter-task", "",
                f"Held-out {task} networks filtered by the predictor trained on {task} labels versus the one trained "
                f"on {spec.other} labels (both on combined labels).", "",
                _table(["network", "no filter", f"{task}-trained (kept)", f"{spec.other}-trained (kept)",
                        "paper network", "paper same-task", "paper other-task"],
                       [[x["network"], fmt(x["no_filter"]),
                         f"{fmt(x['same_task_trained'])} ({_pct(x['same_task_kept'])})",
                         f"{fmt(x['other_task_trained'])} ({_pct(x['other_task_kept'])})",
                         x.get("paper_network", "—"), fmt(x.get("paper_same_task")), fmt(x.get("paper_other_task"))]
                        for x in r[key]]), ""]
    f1 = r["fig1"]
    from imutility.reproduce.baselines import SCORES

    out += ["## Fig. 1: can quality and OOD scores tell useful from non-useful?", "",
            f"{f1['images']} labelled classification test images ({f1['useful']} useful, {f1['non_useful']} "
            f"non-useful; training and held-out levels). AUROC of each score for 'useful' (0.5 = chance), each "
            f"oriented so that higher should mean more useful; MSP and energy from {f1['ood_network']}.", "",
            "The last column averages the AUROC within single levels (weighted by images; levels with at least "
            f"5 images of each class: {', '.join(map(_level_name, f1['within_levels'])) or 'none'}): there the "
            "compression setting is fixed, so a score only gains by judging the content, not the level.", "",
            _table(["score", "AUROC (all levels pooled)", "AUROC within a level"],
                   [[SCORES[k][0], _num(v), _num(f1["auroc_within_level"].get(k))] for k, v in f1["auroc"].items()]),
            "",
            "![Fig. 1](figures/fig1_baselines.png)", ""]
    pp = f1.get("paper_protocol")
    if pp:
        out += ["### Fig. 1 as the paper does it", "",
                f"ONE classifier ({f1['ood_network']}), ALL compressed test images ({pp['images']}: "
                f"{pp['useful']} keep its pristine top-1, {pp['non_useful']} lose it), no exclusion. The unanimous "
                "labels above keep only images three labelers are confidently right or confidently wrong on, "
                "which any classifier's confidence separates easily; here the borderline images stay, and the "
                "network whose decision defines the label is the one whose MSP is scored.", "",
                _table(["score", "AUROC (all levels pooled)", "AUROC within a level"],
                       [[SCORES[k][0], _num(v), _num(pp["auroc_within_level"].get(k))]
                        for k, v in pp["auroc"].items()]), ""]
    out += ["## What differs from the paper", "",
            "- Data: the paper used 50,000 ImageNet val and 5,000 COCO val2017 images; this run used the photos "
            "listed above. The paper's bit rates are not stated; our levels are JPEG qualities.",
            "- Networks: see the config; paper rows are matched by position.",
            "- The paper balances the classes with augmented, relabelled copies; this study trains on the labels as "
            "they come, with a class-weighted loss (`adamw`) or plain cross-entropy (`paper`).",
            "- The paper does not say how mAP was computed for Table IV; we use pycocotools' mAP@[.5:.95] over every "
            "(photo, level) image, with ground truth from the annotations (crowd regions dropped).",
            "- Baselines (lowest bit rate, random, oracle labels) and the per-level and held-out-level accuracies "
            "are ours, not the paper's.", ""]
    return "\n".join(out)


def write_report(study: Study, results: dict) -> None:
    figs = study.out / "figures"
    _plot_labels(results, figs / "labels_per_level.png")
    _plot_fig1(study, results, figs / "fig1_baselines.png")
    for task in results["tasks"]:
        _plot_fig2(results, task, figs / f"fig2_{task}.png")
    _plot_levels(study, results, figs / "predictor_accuracy_by_level.png")
    atomic.write_json(study.out / "results.json", results)
    atomic.write_text(study.out / "report.md", _markdown(study, results))
