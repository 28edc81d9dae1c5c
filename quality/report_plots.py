"""The quality report's two plots: scores and drops per task, and size against speed and score."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .verdicts import MISSED


def plot_scores(report: dict, path: Path) -> None:
    """Grouped bars of the main score per task per run, and the drop vs baseline with the targets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = report["baseline"]
    runs = report["runs"]
    tasks = [t["name"] for t in report["tasks"]]
    x = np.arange(len(tasks))
    width = 0.8 / max(1, len(runs))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(tasks) + 3), 9), sharex=True)
    colour = {r["label"]: f"C{i}" for i, r in enumerate(runs)}  # one colour per run in both panels
    for i, r in enumerate(runs):
        ax1.bar(x + (i - (len(runs) - 1) / 2) * width, [r["scores"][t] for t in tasks], width, label=r["label"],
                color=colour[r["label"]])
    ax1.set_ylabel("main score (0-100)")
    ax1.set_title(f"Main score per task ({runs[0]['dims'][0]} dims)")
    ax1.legend(fontsize=8, ncol=max(1, min(5, len(runs))))
    ax1.grid(axis="y", alpha=0.3)
    others = [c for c in report["comparison"]]
    labels = list(dict.fromkeys(c["variant"] for c in others))
    if report.get("reference"):
        labels.append(report["reference"]["label"])
    width2 = 0.8 / max(1, len(labels))
    shown: list[float] = []
    for i, lab in enumerate(labels):
        if report.get("reference") and lab == report["reference"]["label"]:
            # the baseline artifact minus sentence-transformers: the same sign convention as a drop
            drops = {r["task"]: r["diff"] for r in report["reference"]["rows"]}
        else:
            drops = {c["task"]: c["drop"] for c in others if c["variant"] == lab}
        missed = {c["task"] for c in others if c["variant"] == lab and c["status"] == MISSED}
        se = {c["task"]: c.get("drop_se") for c in others if c["variant"] == lab}
        yerr = [2 * (se.get(t) or 0.0) for t in tasks] if any(se.values()) else None
        ax2.bar(x + (i - (len(labels) - 1) / 2) * width2, [drops[t] for t in tasks], width2, label=lab,
                color=colour.get(lab), edgecolor=["red" if t in missed else "none" for t in tasks], linewidth=1.5,
                yerr=yerr, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "dimgray"})
        shown.extend(drops[t] for t in tasks)
    # Scale to the drops and targets, not the whiskers: the clustering tasks' ± 2 SE spans several
    # points and would flatten every other bar (whiskers beyond the frame are cut).
    lim = [min(shown + [0.0]) - 0.5, max(shown + list(report["targets"].values())) + 0.5]
    ax2.set_ylim(*lim)
    for tgt in sorted(set(report["targets"].values())):
        ax2.axhline(tgt, linestyle="--", linewidth=1, color="gray")
        ax2.text(len(tasks) - 0.5, tgt, f" target {tgt}", va="bottom", ha="right", fontsize=8, color="gray")
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_ylabel(f"drop vs {base} (points, higher = worse;\nred edge = missed; whiskers ± 2 SE)")
    if labels:
        ax2.legend(fontsize=8, ncol=min(5, len(labels)))
    ax2.grid(axis="y", alpha=0.3)
    ax2.set_xticks(x)
    ax2.set_xticklabels(tasks, rotation=35, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_size_speed_score(report: dict, path: Path) -> None:
    """Size on disk vs embedding speed, each point labelled with its mean main score."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    sizes = [r.get("model_bytes") or 0 for r in runs]
    speeds = [r["tokens_per_second"] or 0 for r in runs]
    scores = [r["mean_main_score"] for r in runs]
    sc = ax.scatter([s / 1e6 for s in sizes], speeds, c=scores, cmap="viridis", s=120, edgecolors="black")
    for r, s, v, q in zip(runs, sizes, speeds, scores):
        ax.annotate(f"{r['label']}\nmean {q:.2f}", (s / 1e6, v), textcoords="offset points", xytext=(8, 4), fontsize=8)
    fig.colorbar(sc, ax=ax, label="mean main score")
    ax.margins(x=0.25, y=0.2)  # room for the point labels
    ax.set_xlabel("graph + weights on disk (MB)")
    ax.set_ylabel("tokens / second over the suite")
    ax.set_title("Size vs speed vs score")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
