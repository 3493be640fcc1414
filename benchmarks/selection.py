"""Does intensification make the winner dependable? Default searches with different --seed,
each winner chosen with and without the stage, tested.

    python benchmarks/selection.py [--seeds 0 1 2] [--samples 50] [-- extra search flags]

For each search seed:
1. with: `python -m tuning.search --seed S --intensify-top 5 --intensify-seeds 2` (the default
   search and the stage as measured), then `python -m tuning.evaluate_best` on it, each timed:
   the whole pipeline.
2. without: the same experiment's search-phase trials only, the winner chosen as the search did
   before the stage (best single trial), its best checkpoint tested once. Its phase-one trials
   are the very trials of (1), so the only difference is the choice. Its wall time is the
   search's until its last search-phase epoch (the stage ran after it).
Prints each run's test accuracy / macro-F1, wall time and epochs, then the median and the worst
over seeds, and a JSON line last. Goals: every winner with the stage at or above fine-tuned
DistilBERT (test acc >= 0.927 and macro-F1 >= 0.8825), the median >= 0.932 / 0.892, the pipeline
<= 12 minutes. The test split is read only by evaluate_best and by the one test pass of (2).

    python benchmarks/selection.py --reuse NAME [NAME ...] --stages 5x1 3x2 0x0

reads smaller stages off finished searches instead (see `picks`): per experiment and stage
K x S, the pick's test figures, epochs, the search phase's wall (from its first trial's start)
and the stage's estimated wall; then the median and worst over experiments.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import cpu_model, finish, run_search  # benchmarks/common.py

from plumbing.paths import paths

DISTILBERT = {"accuracy": 0.927, "f1_macro": 0.8825}
MEDIAN_GOAL = {"accuracy": 0.932, "f1_macro": 0.892}
PIPELINE_GOAL_S = 12 * 60
STAGE = ["--intensify-top", "5", "--intensify-seeds", "2"]  # the stage measured (off by default)


def evaluate_cli(name: str) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuning.evaluate_best", "--experiment",
                           str(paths().ray_results / name)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - start, json.loads(proc.stdout.strip().splitlines()[-1])


def picks(name: str, stages: list[tuple[int, int]], started_at: float | None = None) -> list[dict]:
    """Each stage K x S read off a finished experiment, its pick tested once. The stage ran its
    leaders' replicates in rounds and each replicate's seed is fixed by its configuration and
    index, so the top K leaders' first S replicates are exactly the trials `--intensify-top K
    --intensify-seeds S` would have run (0 x 0: the search's own pick, the best single trial).
    The search phase's wall runs from `started_at` (else its first trial's start) to its last
    epoch; a stage's wall is estimated as its trials' time over the search's concurrency."""
    import pandas as pd

    from model.checkpoint import model_from_checkpoint
    from model.data import load_processed
    from model.loop import evaluate
    from tuning.options import read_options
    from tuning.results.tables import load_experiment, trials_frame, winner
    from tuning.search.trainable import read_checkpoint
    from tuning.selection import INTENSIFY, SEARCH, config_keys, search_leaders
    from tuning.storage import open_storage

    storage = open_storage(None, paths().ray_results)
    analysis = load_experiment(storage, name)
    opts = read_options(storage, name)
    trials = trials_frame(analysis)
    trials["config"] = config_keys(trials)
    search, stage = trials[trials["phase"] == SEARCH], trials[trials["phase"] == INTENSIFY]
    frames = analysis.trial_dataframes
    if started_at is None:
        started_at = min(f["timestamp"].min() - f["time_this_iter_s"].iloc[0]
                         for f in frames.values())
    phase_end = max(frames[t]["timestamp"].max() for t in search["trial_id"]) - started_at
    test = load_processed(paths(), with_test=True).test
    tested = {}
    rows = []
    for top, seeds in stages:
        kept = stage[stage["config"].isin(search_leaders(trials, top)) & (stage["replicate"] <= seeds)]
        trial, checkpoint, choice = winner(analysis, pd.concat([search, kept]))
        if trial.trial_id not in tested:
            tested[trial.trial_id] = evaluate(model_from_checkpoint(read_checkpoint(checkpoint)),
                                              test)
        res = tested[trial.trial_id]
        rows.append({"experiment": name, "stage": f"{top}x{seeds}", "trial_id": trial.trial_id,
                     "val_f1": choice["mean_val_f1"], "accuracy": res["acc"], "f1_macro": res["f1"],
                     "epochs": int(search["epochs_run"].sum() + kept["epochs_run"].sum()),
                     "all_epochs": int(trials["epochs_run"].sum()),
                     "search_phase_s": round(float(phase_end), 1),
                     "stage_s_estimated": round(kept["time_s"].sum() / opts.concurrency, 1)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--stages", nargs="+", default=[], metavar="KxS",
                    help="also read smaller stages off each search (e.g. 5x1 3x2 0x0)")
    ap.add_argument("--reuse", nargs="+", metavar="NAME",
                    help="only read the --stages off these finished experiments (no search)")
    ap.add_argument("extra", nargs="*", help="more flags for tuning.search (after --)")
    args = ap.parse_args()
    stages = [tuple(int(x) for x in v.split("x")) for v in args.stages]
    if args.reuse:
        rows = [row for name in args.reuse for row in picks(name, stages)]
        for row in rows:
            print(json.dumps(row), file=sys.stderr)
        summary = {}
        for stage in dict.fromkeys(r["stage"] for r in rows):
            mine = [r for r in rows if r["stage"] == stage]
            summary[stage] = {k: {"median": statistics.median(r[k] for r in mine),
                                  "worst": min(r[k] for r in mine)}
                              for k in ("accuracy", "f1_macro")}
            summary[stage]["max_s_estimated"] = float(max(r["search_phase_s"] + r["stage_s_estimated"]
                                                          for r in mine))
        return finish("\n".join(f"{k}: {v}" for k, v in summary.items()),
                      {"variants": rows, "summary": summary, "cpu": cpu_model()})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for seed in args.seeds:
        name = f"select-{stamp}-seed{seed}"
        started_at = time.time()
        search_s = run_search(name, args.samples, ["--seed", str(seed), *STAGE, *args.extra])
        evaluate_s, with_ = evaluate_cli(name)
        without = picks(name, [(0, 0)], started_at)[0]
        row = {"seed": seed, "experiment": name,
               "with_accuracy": with_["accuracy"], "with_f1_macro": with_["f1_macro"],
               "with_trial": with_["trial_id"], "with_val_f1": with_["val_f1"],
               "with_epochs": without["all_epochs"], "with_search_s": round(search_s, 1),
               "with_pipeline_s": round(search_s + evaluate_s, 1),
               "without_accuracy": without["accuracy"], "without_f1_macro": without["f1_macro"],
               "without_trial": without["trial_id"], "without_val_f1": without["val_f1"],
               "without_epochs": without["epochs"],
               "without_search_s": without["search_phase_s"],
               "same_pick": with_["trial_id"] == without["trial_id"]}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    def stats(which: str, key: str) -> dict:
        values = [r[f"{which}_{key}"] for r in rows]
        return {"median": statistics.median(values), "worst": min(values)}

    result = {"runs": rows, "samples": args.samples, "cpu": cpu_model()}
    for which in ("with", "without"):
        for key in ("accuracy", "f1_macro"):
            s = stats(which, key)
            result[f"{which}_{key}_median"], result[f"{which}_{key}_worst"] = s["median"], s["worst"]
    result.update(
        every_winner_beats_distilbert=all(r["with_accuracy"] >= DISTILBERT["accuracy"]
                                          and r["with_f1_macro"] >= DISTILBERT["f1_macro"]
                                          for r in rows),
        median_goal_met=all(result[f"with_{k}_median"] >= v for k, v in MEDIAN_GOAL.items()),
        stage_raises_worst=(result["with_f1_macro_worst"] > result["without_f1_macro_worst"]),
        pipeline_max_s=max(r["with_pipeline_s"] for r in rows),
        pipeline_goal_met=max(r["with_pipeline_s"] for r in rows) <= PIPELINE_GOAL_S)
    lines = [("seed | with: test acc / macro-F1, pipeline s, epochs | without: test acc / "
              "macro-F1, search-phase s, epochs | same pick")]
    lines += [f"{r['seed']} | {r['with_accuracy']:.4f} / {r['with_f1_macro']:.4f}, "
              f"{r['with_pipeline_s']:.0f} s, {r['with_epochs']} | {r['without_accuracy']:.4f} / "
              f"{r['without_f1_macro']:.4f}, {r['without_search_s']:.0f} s, {r['without_epochs']}"
              f" | {r['same_pick']}" for r in rows]
    for which in ("with", "without"):
        lines.append(f"{which}: median {result[f'{which}_accuracy_median']:.4f} / "
                     f"{result[f'{which}_f1_macro_median']:.4f}, worst "
                     f"{result[f'{which}_accuracy_worst']:.4f} / "
                     f"{result[f'{which}_f1_macro_worst']:.4f}")
    return finish("\n".join(lines), result)


if __name__ == "__main__":
    sys.exit(main())
