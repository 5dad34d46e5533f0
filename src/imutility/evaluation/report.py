"""Markdown tables and a figure from a benchmark's ``results.json`` (:mod:`.benchmark`): presentation only."""

from __future__ import annotations

import math
import os
from pathlib import Path

from imutility import atomic


def _known(v) -> bool:
    return v is not None and math.isfinite(v)


def _fmt(e: dict | None, pct: bool = False) -> str:
    if not e or not _known(e.get("value")):
        return "n/a"
    k = 100 if pct else 1
    f = ".1f" if pct else ".3f"
    lo, hi = e.get("low"), e.get("high")
    ci = f" [{lo * k:{f}}, {hi * k:{f}}]" if _known(lo) and _known(hi) else ""
    return f"{e['value'] * k:{f}}{ci}"


def _level(d: str) -> str:
    return d.replace("jpeg:q=", "q=")


def render(results: dict) -> str:
    lines = ["# Utility predictors against the cheap rules", "",
             f"Bootstrap: {results['n_boot']} resamples of photos (95 % percentile intervals). Predictor threshold "
             f"{results['threshold']}. Transition levels: both label classes at least {results['min_share']:.0%} "
             "of the labelled images.", ""]
    preds = list(results["predictors"])
    if results.get("warnings"):
        lines += ["**Warnings** (too little data for some figures below):", ""]
        lines += [f"- {w}" for w in results["warnings"]] + [""]
    for name, st in results["sets"].items():
        trans = st["transition"]
        lines += [f"## {name}", "",
                  f"{st['photos']} test photos, {st['images']} images; labelled {st['labelled']['useful']} useful / "
                  f"{st['labelled']['non_useful']} non-useful (unanimous over {', '.join(st['labelers'])}); "
                  f"held-out networks: {', '.join(st['held_out']) or 'none'}. Transition levels: "
                  f"{', '.join(_level(t) for t in trans) or 'none'}.", ""]
        if trans:
            lines += ["### AUROC against the labels, within each transition level", "",
                      "| score | " + " | ".join(_level(t) for t in trans)
                      + " | mean (transition) | pooled, all levels |",
                      "|---|" + "---|" * (len(trans) + 2)]
            for s, per in st["label_auroc_transition"].items():
                lines.append(f"| {s} | " + " | ".join(_fmt(per.get(t)) for t in trans)
                             + f" | **{_fmt(per.get('mean'))}** | {_fmt(st['label_auroc'][s].get('pooled'))} |")
            lines.append("")
            if st["label_auroc_diff"]:
                lines += ["Paired differences (predictor minus baseline, mean AUROC over the transition levels):", ""]
                for p, per in st["label_auroc_diff"].items():
                    lines.append(f"- {p}: " + "; ".join(f"vs {b} {_fmt(d.get('mean'))}" for b, d in per.items()))
                lines.append("")
        for net, u in st["unseen"].items():
            tab = u["auroc_transition"] or u["auroc"]
            lines += [f"### AUROC for {net}'s {st['success']} (a network that defined no label)", "",
                      "| score | " + " | ".join(_level(t) for t in (trans or st['levels']))
                      + " | mean (transition) | mean (all levels) | pooled |",
                      "|---|" + "---|" * (len(trans or st["levels"]) + 3)]
            for s, per in tab.items():
                allv = u["auroc"][s]
                lines.append(f"| {s} | " + " | ".join(_fmt(per.get(t)) for t in (trans or st["levels"]))
                             + f" | **{_fmt(per.get('mean'))}** | {_fmt(allv.get('mean'))} "
                             f"| {_fmt(allv.get('pooled'))} |")
            lines.append("")
            given = u.get("given_pristine_success")
            if given:  # the decision lost BY compression
                lv = trans or st["levels"]
                lines += [f"The same, only on the {given['images']} images whose PRISTINE photo {net} gets right (the "
                          "decision lost BY compression):", "",
                          "| score | " + " | ".join(_level(t) for t in lv) + " | mean | pooled |",
                          "|---|" + "---|" * (len(lv) + 2)]
                for s, per in given["auroc"].items():
                    lines.append(f"| {s} | " + " | ".join(_fmt(per.get(t)) for t in lv)
                                 + f" | **{_fmt(per.get('mean'))}** | {_fmt(per.get('pooled'))} |")
                lines.append("")
            if u.get("by_collection"):
                names = list(u["by_collection"])
                lines += [f"Per photo collection (mean AUROC over the {'transition' if trans else 'all'} levels for "
                          f"{net}'s {st['success']}):", "",
                          "| score | " + " | ".join(f"{n} ({u['by_collection'][n]['photos']} photos)" for n in names)
                          + " |", "|---|" + "---|" * len(names)]
                for s in tab:
                    lines.append(f"| {s} | " + " | ".join(_fmt(u["by_collection"][n]["auroc"].get(s, {}).get("mean"))
                                                         for n in names) + " |")
                lines.append("")
            for ref, m in u["matched"].items():
                lv = m["levels"]
                lines += [f"The {st['success']} rate of {net} when every "
                          f"score rejects, within each level, as many images as {ref} "
                          f"(rejected per level: " + ", ".join(f"{_level(k)} {v}/{m['n'][k]}"
                                                               for k, v in m["n_reject"].items())
                          + (f"; kept: {m['kept_share']['pooled']:.1%} of the images" if "kept_share" in m else "")
                          + "; ties broken at random, averaged over seeded draws; `random`: random rejection):", "",
                          "| filter | " + " | ".join(_level(t) for t in lv) + " | pooled | gain of "
                          f"{ref} over it (pooled) |", "|---|" + "---|" * (len(lv) + 2)]
                lines.append("| no filter | " + " | ".join(_fmt(m["no_filter"].get(t), True) for t in lv)
                             + f" | {_fmt(m['no_filter'].get('pooled'), True)} | |")
                for s, per in m["top1"].items():
                    gain = "" if s == ref else _fmt(m["gain"][s].get("pooled"), True)
                    lines.append(f"| {s} | " + " | ".join(_fmt(per.get(t), True) for t in lv)
                                 + f" | {_fmt(per.get('pooled'), True)} | {gain} |")
                lines.append("")
        if st.get("pristine_false_rejects"):
            lines += ["### Pristine false rejects", "",
                      "Pristine photos every held-out network classifies correctly, scored below the threshold on the "
                      "pristine photo (what `filter` would delete although nothing was lost):", ""]
            for p_, r in st["pristine_false_rejects"].items():
                rate = f"{r['rate']:.1%}" if r["n"] else "n/a"
                lines.append(f"- {p_}: {r.get('rejected', 0)} of {r['n']} ({rate})")
            lines.append("")
        lines += ["### Balanced accuracy at the threshold, per level", "",
                  "| predictor | " + " | ".join(_level(t) for t in st["levels"]) + " | pooled |",
                  "|---|" + "---|" * (len(st["levels"]) + 1)]
        for p in preds:
            per = st["balanced_accuracy"][p]
            lines.append(f"| {p} | " + " | ".join(_fmt(per.get(t)) for t in st["levels"])
                         + f" | {_fmt(per.get('pooled'))} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str | os.PathLike) -> None:
    """Within-level AUROC per level: against the labels (left) and for each held-out network's correctness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results["sets"].items())
    n_cols = 1 + max((len(st["unseen"]) for _, st in sets), default=0)
    fig, axes = plt.subplots(len(sets), n_cols, figsize=(4.6 * n_cols, 3.8 * len(sets)), squeeze=False)
    for r, (name, st) in enumerate(sets):
        panels = [("labels", st["label_auroc"])] + [(f"{n} correct", u["auroc"]) for n, u in st["unseen"].items()]
        for c, (title, tab) in enumerate(panels):
            ax = axes[r][c]
            x = list(range(len(st["levels"])))
            for s, per in tab.items():
                ys = [per.get(lv, {}).get("value") for lv in st["levels"]]
                ys = [float("nan") if v is None else v for v in ys]
                bold = s in results["predictors"]
                ax.plot(x, ys, marker="o" if bold else ".", lw=2.2 if bold else 1.0, label=s,
                        alpha=1.0 if bold else 0.75)
            ax.axhline(0.5, color="grey", lw=0.7, ls="--")
            ax.set_xticks(x, [_level(lv) for lv in st["levels"]], rotation=60, fontsize=7)
            ax.set_ylim(0.0, 1.02)
            ax.set_title(f"{name}: AUROC vs {title}", fontsize=9)
        for c in range(len(panels), n_cols):
            axes[r][c].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 + 0.02 * (len(labels) // 4), 1, 1))
    atomic.write_figure(fig, path)


def write_report(results: dict, out: str | os.PathLike) -> None:
    out = Path(out)
    atomic.write_text(out / "report.md", render(results))
    plot(results, out / "within_level_auroc.png")


def card_figures(results: dict, set_name: str, judge: str, predictor: str, judge_note: str = "") -> dict:
    """The figures a predictor's card records for one benchmark set, judged by one network that defined no label:
    within-level AUROC for its success (mean over the transition levels, and per level) and pooled for the
    predictor, its compression-blind control and every baseline; the matched-count top-1 with the kept share; the
    pristine false-reject rate. Values rounded to 3 places, intervals as in ``results.json``."""
    st = results["sets"][set_name]
    if judge not in st["unseen"]:
        raise KeyError(f"{judge} is not a held-out network of {set_name} (held out: {', '.join(st['unseen'])})")
    u = st["unseen"][judge]

    def r(e: dict) -> dict:
        return {k: (round(v, 3) if _known(v) else None) for k, v in e.items()}

    trans = u["auroc_transition"]
    out = {"photos": st["photos"], "images": st["images"], "judge": judge + (f" ({judge_note})" if judge_note else ""),
           "success": st["success"], "labelers": st["labelers"], "transition_levels": st["transition"],
           "within_level_auroc": {name: r(per["mean"]) for name, per in trans.items()},
           "per_level_auroc": {name: {lv: r(e) for lv, e in per.items() if lv not in ("mean", "pooled")}
                               for name, per in trans.items()},
           "pooled_auroc": {name: r(per["pooled"]) for name, per in u["auroc"].items() if "pooled" in per},
           "pristine_false_rejects": st["pristine_false_rejects"].get(predictor)}
    given = u.get("given_pristine_success")
    if given:  # within the same levels, only images whose pristine photo the judge gets right
        out["given_pristine_success"] = {"images": given["images"],
                                         "within_level_auroc": {name: r(per["mean"])
                                                                for name, per in given["auroc"].items()}}
    m = u["matched"].get(predictor)
    if m:
        out["matched_top1"] = {"kept_share": round(m["kept_share"]["pooled"], 3),
                               "top1": {name: r(per["pooled"]) for name, per in m["top1"].items()},
                               "no_filter": r(m["no_filter"]["pooled"])}
    return out
