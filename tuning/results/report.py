"""artifacts/best/'s plots and report.md: what evaluate_best measured, for a reader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tuning.selection import fastest_within

NEAR = 0.01  # the report's "fastest within": what `--pick fastest-within NEAR` would evaluate


def frontier_section(m: dict, trials: pd.DataFrame) -> list[str]:
    """report.md's families and frontier: the best trial of each family (test figures for the
    evaluated one only: the test split is read once), and the fastest trial near the winner
    (what `--pick fastest-within 0.01` would evaluate)."""
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
              f"trials. The evaluated model, measured here alone in "
              f"{m.get('precision', 'fp32')}: {m['speed']['latency_ms']:.3f} "
              f"ms a sentence, {m['speed']['sentences_per_s_b256']:,.0f} sentences/s at batch "
              f"256, {m['speed']['params']:,} parameters.")]
    if done["latency_ms"].notna().any():  # (an experiment from before families measured none)
        parts += _fastest_within_line(trials)
    parts.append("![accuracy against latency](frontier.png)")
    return parts


def _fastest_within_line(trials: pd.DataFrame) -> list[str]:
    """What `evaluate_best --pick fastest-within NEAR` would evaluate, by its own rule
    (`fastest_within`: the measured search trials with a latency, within NEAR of the winner's
    val macro-F1), against the winner's latency; nothing if no trial qualifies."""
    try:
        pick = fastest_within(trials, NEAR)
    except ValueError:  # (no measured search trial with a latency within NEAR)
        return []
    rule, row = pick["pick"], trials[trials["trial_id"] == pick["trial_id"]].iloc[0]
    text = (f"Of the {rule['n_within']} measured search trials within {NEAR} val macro-F1 of "
            f"the winner (trial `{rule['best_trial_id']}`, {rule['reference_val_f1']:.4f}, "
            f"{rule['best_latency_ms']:.3f} ms), the fastest is trial `{pick['trial_id']}` "
            f"({row['family']}, {pick['mean_val_f1']:.4f}, {rule['latency_ms']:.3f} ms)")
    ratio = rule["best_latency_ms"] / rule["latency_ms"] if rule["latency_ms"] > 0 else np.nan
    if np.isfinite(ratio):  # (the winner's own latency may be unmeasured)
        text += f": {ratio:.1f}x lower latency" + ("" if ratio >= 5 else "; none is 5x faster")
    return [text + f". `--pick fastest-within {NEAR}` evaluates it."]


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
                 f"validation only among {ran}, by the {choice['rule']}. The test split was "
                 "read once, here.")]
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
