"""The labelling run's figure: continuous utility and combined labels per level."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imutility import atomic


def plot_utility_by_level(table, combined_counts, path: Path) -> None:
    """Left: the mean utility per level (box plot); right: the combined labels per level (``combined_counts``:
    the counts rows of the combined label, one per distortion)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(dict.fromkeys(table["distortion"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    data = [table.loc[table["distortion"] == d, "utility_mean"].dropna().to_numpy() for d in levels]
    ax1.boxplot([d if len(d) else [np.nan] for d in data], showfliers=False)
    ax1.set_xticks(range(1, len(levels) + 1), levels, rotation=45, ha="right")
    ax1.axhline(0, color="grey", lw=0.8, ls="--")
    ax1.set_xlabel("distortion level")
    ax1.set_ylabel("mean utility over labelers (Eq. 2)")
    ax1.set_title("Continuous utility per level")
    comb = combined_counts.set_index("distortion").loc[levels]
    x = np.arange(len(levels))
    ax2.bar(x, comb["useful"], label="useful (1)", color="tab:green")
    ax2.bar(x, comb["non_useful"], bottom=comb["useful"], label="non-useful (0)", color="tab:red")
    ax2.bar(x, comb["excluded"], bottom=comb["useful"] + comb["non_useful"], label="excluded", color="lightgrey")
    ax2.set_xticks(x, levels, rotation=45, ha="right")
    ax2.set_xlabel("distortion level")
    ax2.set_ylabel("images")
    ax2.set_title("Combined (unanimous) labels per level")
    ax2.legend()
    fig.tight_layout()
    atomic.write_figure(fig, path)
