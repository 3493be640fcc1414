"""The model families against each other at equal wall budget: each family searched alone, and
one search across all four, each with 2 search seeds, on this machine.

    python benchmarks/families.py [--seeds 0 1] [--budget-s S] [-- extra search flags]

First the default search (family rnn: `python -m tuning.search`, 50 trials) for each seed, timed:
its mean wall time is the budget S of every other search (`--budget-s` sets it instead). Then,
for each seed, `--space family: F` for cnn, transformer and bag, and `--space family: {choice:
[all four]}`, each with `--time-budget-s S` and more samples than fit in it. For each search:
the picked configuration (the harness's rule: the best val macro-F1) and its test figures (read
here, once per pick), its parameters and single-sentence latency (model/speed.py, measured
here on an idle machine), the trials run, and its mean epoch time.

Goals (issue #23): every family alone reaches the tuned TF-IDF baseline's test macro-F1
(0.8437); a configuration within 0.01 val macro-F1 of the default winner at >= 5x lower latency
(the search-time latencies of both, measured alike), if one exists. Prints a JSON line last;
the same JSON is rewritten after every search to artifacts/bench/families-STAMP.json, so an
interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from common import cpu_model, finish, run_search

from plumbing.paths import paths

TFIDF_TEST_F1 = 0.8437  # tuned TF-IDF + LinearSVC, test macro-F1 (evaluate_best's baseline)
FAMILIES = ("rnn", "cnn", "transformer", "bag")
MANY = 2000  # samples for a budgeted search: the budget ends it


def space_file(folder: Path, family: str) -> str:
    path = folder / f"space-{family}.json"
    spec = {"choice": list(FAMILIES)} if family == "mixed" else family
    path.write_text(json.dumps({"family": spec}))
    return str(path)


def measure_pick(name: str) -> dict:
    """The search's pick (best val macro-F1), tested once, and its speed on this idle machine."""
    from model.checkpoint import model_from_checkpoint
    from model.data import load_processed
    from model.loop import evaluate
    from model.speed import measure
    from tuning.results.tables import load_experiment, trials_frame, winner
    from tuning.search.trainable import read_checkpoint
    from tuning.storage import open_storage

    p = paths()
    analysis = load_experiment(open_storage(None, p.ray_results), name)
    trials = trials_frame(analysis)
    trial, checkpoint, _ = winner(analysis, trials)
    state = read_checkpoint(checkpoint)
    splits = load_processed(p, with_test=True)
    model = model_from_checkpoint(state)
    test = evaluate(model, splits.test)
    speed = measure(model, splits.val)
    row = trials[trials["trial_id"] == trial.trial_id].iloc[0]
    by_family = trials[trials["best_val_f1"].notna()].groupby("family")
    return {
        "experiment": name, "trials": len(trials),
        "trials_by_family": {f: len(g) for f, g in by_family},
        "best_val_f1_by_family": {f: round(float(g["best_val_f1"].max()), 4) for f, g in by_family},
        "pick": trial.trial_id, "pick_family": row["family"],
        "val_f1": round(float(row["best_val_f1"]), 4),
        "test_acc": round(test["acc"], 4), "test_f1": round(test["f1"], 4),
        "params": speed["params"], "latency_ms": round(speed["latency_ms"], 4),
        "sentences_per_s_b256": round(speed["sentences_per_s_b256"]),
        "search_latency_ms": round(float(row["latency_ms"]), 4),
        "epoch_s": round(float(row["epoch_s"]), 2),
        "config": {k: (v.item() if hasattr(v, "item") else v)
                   for k, v in state["config"].items()},
        "trials_table": trials[["trial_id", "family", "phase", "status", "best_val_f1",
                                "latency_ms"]].to_dict("records"),
    }


def faster_near(default: dict, searches: list[dict], within: float = 0.01) -> dict | None:
    """Among every trial of `searches`, the fastest (search-time latency) within `within` val
    macro-F1 of the default winner, and how many times faster than it (search-time, alike)."""
    rows = [r for s in searches for r in s["trials_table"]
            if r["phase"] == "search" and not math.isnan(r["latency_ms"])
            and r["best_val_f1"] >= default["val_f1"] - within]  # (NaN >= x is False)
    if not rows:
        return None
    fastest = min(rows, key=lambda r: r["latency_ms"])
    return {"trial_id": fastest["trial_id"], "family": fastest["family"],
            "val_f1": round(fastest["best_val_f1"], 4), "latency_ms": round(fastest["latency_ms"], 4),
            "speedup": round(default["search_latency_ms"] / fastest["latency_ms"], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall budget of each non-default search (default: the default search's "
                         "mean wall time, measured first)")
    ap.add_argument("--default-samples", type=int, default=50)
    ap.add_argument("--only", nargs="+", choices=["rnn", "cnn", "transformer", "bag", "mixed"],
                    help="run only these searches (without rnn: --budget-s is needed)")
    ap.add_argument("extra", nargs="*", help="more flags for tuning.search (after --)")
    args = ap.parse_args()
    only = args.only or ["rnn", "cnn", "transformer", "bag", "mixed"]
    if "rnn" not in only and args.budget_s is None:
        ap.error("--only without rnn needs --budget-s (the default search's wall time)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = paths().root / "artifacts" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    record = out / f"families-{stamp}.json"
    result = {"runs": {}, "cpu": cpu_model(), "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), "seeds": args.seeds}

    def run(label: str, seed: int, flags: list[str], samples: int) -> None:
        name = f"families-{stamp}-{label}-s{seed}"
        wall = run_search(name, samples, ["--seed", str(seed), *flags, *args.extra])
        measured = {"wall_s": round(wall, 1), **measure_pick(name)}
        result["runs"].setdefault(label, []).append(measured)
        record.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"{label} seed {seed}: {wall:.0f} s, {measured['trials']} trials, pick "
              f"{measured['pick_family']} val {measured['val_f1']} test {measured['test_f1']} "
              f"({measured['latency_ms']} ms, {measured['params']:,} params)", file=sys.stderr,
              flush=True)

    for seed in args.seeds if "rnn" in only else []:  # the default search: 50 trials, no budget
        run("rnn", seed, [], args.default_samples)
    budget = args.budget_s or round(statistics.mean(r["wall_s"] for r in result["runs"]["rnn"]))
    result["budget_s"] = budget
    for label in [f for f in ("cnn", "transformer", "bag", "mixed") if f in only]:
        for seed in args.seeds:
            run(label, seed, ["--space", space_file(out, label), "--time-budget-s", str(budget)],
                MANY)

    table = {}
    for label, runs in result["runs"].items():
        table[label] = {
            "val_f1": [r["val_f1"] for r in runs], "test_f1": [r["test_f1"] for r in runs],
            "test_acc": [r["test_acc"] for r in runs], "trials": [r["trials"] for r in runs],
            "params": [r["params"] for r in runs], "latency_ms": [r["latency_ms"] for r in runs],
            "pick_family": [r["pick_family"] for r in runs],
            "beats_tfidf": all(r["test_f1"] >= TFIDF_TEST_F1 for r in runs)}
    result["table"] = table
    result["faster_within_0.01"] = [
        faster_near(default, [r for runs in result["runs"].values() for r in runs
                              if r["experiment"].endswith(f"-s{seed}")])
        for default, seed in zip(result["runs"].get("rnn", []), args.seeds, strict=False)]
    for runs in result["runs"].values():
        for r in runs:
            del r["trials_table"]  # (kept in the per-search record only while running)
    record.write_text(json.dumps(result, indent=1, default=str) + "\n")
    lines = [f"{label:12s} val {t['val_f1']}  test F1 {t['test_f1']}  acc {t['test_acc']}  "
             f"trials {t['trials']}  params {t['params']}  latency ms {t['latency_ms']}  "
             f"picks {t['pick_family']}" for label, t in table.items()]
    return finish("\n".join(lines) + f"\nbudget {budget} s; {result['faster_within_0.01']}", result)


if __name__ == "__main__":
    sys.exit(main())
