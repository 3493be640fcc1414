"""artifacts/best/'s plots and report.md: what evaluate_best measured, for a reader."""
from __future__ import annotations

import json
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


def frontier_section(m: dict, trials: pd.DataFrame) -> list[str]:
    """report.md's families and frontier: the best trial of each family (test figures for the
    evaluated one only: the test split is read once), and what the frontier offers near the
    evaluated trial."""
    done = trials[trials["best_val_f1"].notna() & (trials["phase"] == "search")]
    if done.empty:
        return []
    rows = []
    for family, group in done.groupby("family", sort=False):
        best = group.loc[group["best_val_f1"].idxmax()]
        evaluated = best["trial_id"] == m["trial_id"]
        rows.append({"family": family, "trials": len(group), "best trial": best["trial_id"],
                     "val macro-F1": float(best["best_val_f1"]),
                     "test accuracy": m["accuracy"] if evaluated else "",
                     "test macro-F1": m["f1_macro"] if evaluated else "",
                     "parameters": f"{int(best['params']):,}" if pd.notna(best["params"])
                     else "", "latency ms": float(best["latency_ms"]),
                     "sentences/s (b256)": (f"{best['sentences_per_s_b256']:,.0f}"
                                            if pd.notna(best["sentences_per_s_b256"]) else ""),
                     "epoch s": float(best["epoch_s"])})
    parts = ["## Families: the best trial of each (validation; test for the evaluated one only)",
             _table(rows, ["family", "trials", "best trial", "val macro-F1", "test accuracy",
                           "test macro-F1", "parameters", "latency ms", "sentences/s (b256)",
                           "epoch s"]),
             ("Latency: one sentence at a time (batch 1), median over 128 validation texts, one "
              "CPU thread, the network's forward pass; measured during the search, beside other "
              f"trials. The evaluated model, measured here alone: {m['speed']['latency_ms']:.3f} "
              f"ms a sentence, {m['speed']['sentences_per_s_b256']:,.0f} sentences/s at batch "
              f"256, {m['speed']['params']:,} parameters.")]
    me = trials[trials["trial_id"] == m["trial_id"]]
    if len(me) and me["latency_ms"].notna().all() and done["latency_ms"].notna().any():
        f1, ms = float(me["best_val_f1"].iloc[0]), float(me["latency_ms"].iloc[0])
        near = done[(done["best_val_f1"] >= f1 - 0.01) & done["latency_ms"].notna()]
        fastest = near.loc[near["latency_ms"].idxmin()]
        ratio = ms / float(fastest["latency_ms"])
        parts.append(
            f"Within 0.01 val macro-F1 of the evaluated trial ({f1:.4f}, {ms:.3f} ms), the fastest "
            f"is trial `{fastest['trial_id']}` ({fastest['family']}, "
            f"{float(fastest['best_val_f1']):.4f}, {float(fastest['latency_ms']):.3f} ms): "
            f"{ratio:.1f}x lower latency"
            + ("." if ratio >= 5 else "; no configuration within 0.01 is 5x faster.")
            + " `--pick fastest-within D` evaluates such a trial instead.")
    parts.append("![accuracy against latency](frontier.png)")
    return parts


def _table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def how_chosen(m: dict, trials: pd.DataFrame, counts: dict) -> list[str]:
    """report.md's account of the choice: the rule, and with intensification every candidate's
    mean and the winner's seeds."""
    choice = m["selection"]
    ran = f"{len(trials)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())})"
    if choice.get("pick"):
        pick = choice["pick"]
        return [(f"Trial `{m['trial_id']}` ({m['family']}, epoch {m['best_epoch']}, seed "
                 f"{m['seed']}), picked by `--pick fastest-within {pick['within']}` among {ran}: "
                 f"{choice['rule']}. It takes {pick['latency_ms']:.3f} ms a sentence; the best, "
                 f"trial `{pick['best_trial_id']}`, {pick['best_latency_ms']:.3f} ms. The test "
                 "split was read once, here.")]
    if not choice["candidates"]:
        return [(f"Trial `{m['trial_id']}` (epoch {m['best_epoch']}, seed {m['seed']}), chosen on "
                 f"validation macro-F1 among {ran}: one seed per configuration. The test split "
                 "was read once, here.")]
    search = int((trials["phase"] == "search").sum())
    return [
        (f"Chosen on validation only, in two phases, among {ran}. The search ran {search} "
         f"configurations (TPE + ASHA); its top {len(choice['candidates'])} then ran again with "
         f"further seeds for every epoch, and the configuration with the best **mean** "
         f"validation macro-F1 over its seeds won: {choice['mean_val_f1']:.4f} ± "
         f"{choice['std_val_f1']:.4f} (std over {len(choice['seeds'])} seeds). The model "
         f"evaluated is its best seed, trial `{m['trial_id']}` (epoch {m['best_epoch']}, seed "
         f"{m['seed']}). The test split was read once, here."),
        "## The winner's seeds (validation)",
        _table(choice["seeds"], ["trial_id", "phase", "seed", "val_f1", "epoch"]),
        "## The candidates (validation macro-F1 over their seeds)",
        _table([{**c, "trial_ids": ", ".join(c["trial_ids"])} for c in choice["candidates"]],
               ["rank", "mean_val_f1", "std_val_f1", "n_seeds", "trial_ids"]),
    ]


def write_report(out: Path, m: dict, base: list[dict], importance: dict, reseeds: list[dict],
                 trials: pd.DataFrame, experiment: str) -> None:
    counts = trials["status"].value_counts().to_dict()
    parts = [
        f"# Best model of experiment `{experiment}`",
        *how_chosen(m, trials, counts),
        "## Validation vs test",
        _table([{"split": "validation", "accuracy": m["val_acc"], "macro-F1": m["val_f1"]},
                {"split": "test", "accuracy": m["accuracy"], "macro-F1": m["f1_macro"],
                 "weighted-F1": m["f1_weighted"]}],
               ["split", "accuracy", "macro-F1", "weighted-F1"]),
        "## Against baselines (same splits, same run)",
        _table([{"model": f"tuned {m.get('family', 'rnn')} (this)", "val_accuracy": m["val_acc"],
                 "val_f1_macro": m["val_f1"], "test_accuracy": m["accuracy"],
                 "test_f1_macro": m["f1_macro"]}] + base,
               ["model", "val_accuracy", "val_f1_macro", "test_accuracy", "test_f1_macro"]),
    ]
    if reseeds:
        acc = np.array([r["test_accuracy"] for r in reseeds if r["test_accuracy"] is not None])
        f1 = np.array([r["test_f1_macro"] for r in reseeds if r["test_f1_macro"] is not None])
        parts += ["## Other seeds (same config, full epochs)",
                  _table(reseeds, ["seed", "val_f1", "test_accuracy", "test_f1_macro"]),
                  f"Test accuracy {acc.mean():.4f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.4f}, "
                  f"macro-F1 {f1.mean():.4f} ± {f1.std(ddof=1) if len(f1) > 1 else 0:.4f} "
                  f"over {len(acc)} seeds." if len(acc) else "No reseeded run finished."]
    parts += [
        *frontier_section(m, trials),
        "## Per class (test)",
        _table([{"label": k, **v} for k, v in m["per_class"].items()],
               ["label", "precision", "recall", "f1-score", "support"]),
        "![confusion matrix](confusion_matrix.png)",
        "## Best configuration",
        "```json\n" + json.dumps(m["config"], indent=2, sort_keys=True) + "\n```",
        "## Hyperparameter importance (Optuna fANOVA over the trials' best val_f1)",
        _table([{"hyperparameter": k, "importance": v} for k, v in importance.items()],
               ["hyperparameter", "importance"]) if importance else
        "Not enough finished trials to estimate importance.",
        "## Curves",
        "![learning curve](learning_curve.png)\n\n![search history](search_history.png)",
    ]
    (out / "report.md").write_text("\n\n".join(parts) + "\n")
