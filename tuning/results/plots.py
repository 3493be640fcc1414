"""artifacts/best/'s plots: the confusion matrix, the best trial's learning curves, the search
history and the accuracy/latency frontier."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dataprep.schema import LABELS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: list[list[int]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(np.array(cm), cmap="Blues")
    ax.set_xticks(range(6), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(6), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(r) for r in cm) or 1
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    ax.set_title("Test confusion matrix (counts)")
    _save(plt, fig, path)


def plot_learning_curve(history: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(history["epoch"], history["train_loss"], "o-", label="train loss")
    a1.plot(history["epoch"], history["val_loss"], "o-", label="val loss")
    a1.set_xlabel("epoch")
    a1.legend()
    a2.plot(history["epoch"], history["val_f1"], "o-", label="val macro-F1")
    a2.plot(history["epoch"], history["val_acc"], "o-", label="val accuracy")
    a2.set_xlabel("epoch")
    a2.legend()
    fig.suptitle("Best trial: learning curves")
    _save(plt, fig, path)


def plot_search_history(trials: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    done = trials[trials["best_val_f1"].notna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = {"completed": "tab:blue", "early_stopped": "tab:green", "asha_stopped": "tab:orange",
              "error": "tab:red", "unfinished": "tab:gray"}
    for (phase, status), group in done.groupby(["phase", "status"]):
        ax.scatter(group.index + 1, group["best_val_f1"], color=colors.get(status, "black"), s=25,
                   marker="o" if phase == "search" else "x",
                   label=status if phase == "search" else f"{status} (another seed)")
    search = done[done["phase"] == "search"]
    ax.plot(search.index + 1, search["best_val_f1"].cummax(), color="black", lw=1,
            label="running best (search)")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel("best val macro-F1")
    ax.legend()
    ax.set_title("Search history")
    _save(plt, fig, path)


FAMILY_COLORS = {"rnn": "tab:blue", "cnn": "tab:orange", "transformer": "tab:purple",
                 "bag": "tab:green"}


def plot_frontier(trials: pd.DataFrame, evaluated: str, path: Path) -> None:
    """Best val macro-F1 against single-sentence latency over every trial that measured both,
    by family, the Pareto frontier drawn as a step line, the evaluated trial ringed."""
    plt = _plt()
    done = trials[trials["best_val_f1"].notna() & trials["latency_ms"].notna()]
    fig, ax = plt.subplots(figsize=(8, 5))
    for family, group in done.groupby("family", sort=False):
        ax.scatter(group["latency_ms"], group["best_val_f1"], s=22, alpha=0.75,
                   color=FAMILY_COLORS.get(family, "black"), label=family)
    front = done[done["pareto"]].sort_values("latency_ms")
    if len(front):
        ax.step(front["latency_ms"], front["best_val_f1"], where="post", color="black", lw=1,
                label="Pareto frontier")
    chosen = done[done["trial_id"] == evaluated]
    if len(chosen):
        ax.scatter(chosen["latency_ms"], chosen["best_val_f1"], s=140, facecolors="none",
                   edgecolors="red", linewidths=1.5, label="evaluated")
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("latency per sentence, ms (batch 1, one CPU thread; log scale)")
    ax.set_ylabel("best val macro-F1")
    ax.legend()
    ax.set_title("Accuracy against latency, every trial")
    _save(plt, fig, path)
