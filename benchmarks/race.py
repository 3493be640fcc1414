"""A race at equal wall time: which search finds the best configuration for the compute it spends.

    python benchmarks/race.py [--budget-s 1190] [--search-seeds 0 1 2] [--subset N]
                              [--variants old-default asha-g1 ...] [--old-code DIR]
    python benchmarks/race.py --variants fp32 bf16 --samples 50   # issue #29: precisions
    python benchmarks/race.py --variants default optuna --samples 50 [--precision bf16]
                                                        # #29: Ray against a plain study

Every variant gets the same wall budget (`--time-budget-s`, and the peer stops at it too), one
after another on this machine, in an order rotated from one search seed to the next:
  old-default  the default search before the search-loop fixes (a checkout given by --old-code)
  asha-g1      the fixed loop, ASHA grace 1, reduction 3 (the old default's schedule)
  asha-g2      the fixed loop, ASHA grace 2
  fifo         the fixed loop without early stopping (grace = max epochs): fewer, whole trials
  random-asha  random search + ASHA grace 1 (does TPE earn its place?)
  optuna       the peer a user would write instead of Ray: a plain Optuna study (TPE +
               HyperbandPruner, 2 worker processes sharing a journal file) over the same space,
               the same known-good points first, the same training loop and trial seeds, in
               the default search's precision (fp32, or --precision's)
  default      the default search as a user runs it (with --precision if given)
With --samples N every search runs N trials and no budget (the peer: N/2 in each process).
Each search's *pick* (its best_config.json; the study's best complete trial) is scored by
retraining it with 3 fresh seeds (seeds no search uses) for the full epochs: the mean ± std of
their best val macro-F1, and, read only for the report, their mean test accuracy / macro-F1 at
each run's best-val epoch. The test split never chooses anything.
Prints a table (medians and worst over the search seeds), writes race.json and race.png
(best-so-far val macro-F1 against wall time) under artifacts/race/STAMP/, and a JSON line last.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import common  # benchmarks/common.py
from common import cpu_model, finish, load_splits

from plumbing.paths import paths

VARIANTS = {  # name -> flags for tuning.search (None: not a tuning.search run)
    "old-default": ["--grace-period", "1"],
    "asha-g1": ["--grace-period", "1"],
    "asha-g2": ["--grace-period", "2"],
    "fifo": ["--grace-period", "{max_epochs}"],
    "random-asha": ["--grace-period", "1", "--sampler", "random"],
    "optuna": None,
    "default": [],
    # issue #29: the default search in each precision (with --samples 50: the whole search, no
    # budget); bf16 where the CPU has it natively (tuning.search refuses it elsewhere)
    "fp32": ["--grace-period", "1", "--precision", "fp32"],
    "bf16": ["--grace-period", "1", "--precision", "bf16"],
}
RACE = ["old-default", "asha-g1", "asha-g2", "fifo", "random-asha", "optuna"]  # the default race
FRESH_SEEDS = (1_000_003, 1_000_033, 1_000_037)  # for scoring picks; no search derives these
DISTILBERT = {"accuracy": 0.927, "f1_macro": 0.8825}


def run_ray_search(variant: str, name: str, seed: int, args) -> dict:
    """One tuning.search run of `variant` under the budget; returns its trace and pick."""
    flags = [f.format(max_epochs=args.max_epochs) for f in VARIANTS[variant]]
    if variant == "default" and args.precision:
        flags += ["--precision", args.precision]
    cmd = [sys.executable, "-m", "tuning.search", "--name", name,
           "--no-dashboard", "--seed", str(seed), "--max-epochs", str(args.max_epochs),
           "--intensify-top", "0", *flags]
    cmd += (["--samples", str(args.samples)] if args.samples else
            ["--samples", "1000", "--time-budget-s", str(args.budget_s)])
    if args.subset:
        cmd += ["--subset", str(args.subset)]
    env = dict(os.environ)
    cwd = None
    if variant == "old-default":
        cwd = args.old_code
        env["PYTHONPATH"] = str(args.old_code)
    start = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"{variant}: search failed\n{proc.stderr[-3000:]}")
    import pandas as pd

    p = paths()
    best = json.loads((p.search_reports / name / "best_config.json").read_text())
    trials = pd.read_csv(p.search_reports / name / "trials.csv", dtype={"trial_id": str})
    trace = []  # (seconds since the start, val_f1) of every epoch any trial reported
    for progress_csv in (p.ray_results / name).glob("trial_*/progress.csv"):
        progress = pd.read_csv(progress_csv)
        trace += [(float(t) - start, float(v)) for t, v in zip(progress["timestamp"],
                                                               progress["val_f1"], strict=True)]
    return {"wall_s": round(wall, 1), "epochs": int(trials["epochs_run"].sum()),
            "trials": len(trials), "search_best_val_f1": float(trials["best_val_f1"].max()),
            "pick": best["config"], "pick_val_f1": float(best["val_f1"]), "trace": sorted(trace)}


# ---- the plain Optuna peer --------------------------------------------------------------------

def _peer_worker(journal: str, name: str, seed: int, worker: int, deadline: float,
                 max_epochs: int, subset: int | None, precision: str,
                 n_trials: int | None) -> None:
    """One of the peer's processes: trials of the shared study until the deadline, or
    `n_trials` of them."""
    import optuna

    from model.config import SEARCH_SEED_KEY, from_trial_params
    from model.loop import train_epochs
    from tuning import space as space_mod

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_splits(subset)
    space = space_mod.load_space(None)
    sample = space_mod.ConditionalSpace(space)  # (the harness's define-by-run space)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.load_study(study_name=name, storage=storage,
                              sampler=optuna.samplers.TPESampler(seed=seed * 1000 + worker),
                              pruner=optuna.pruners.HyperbandPruner(
                                  min_resource=1, max_resource=max_epochs, reduction_factor=3))

    def objective(trial: optuna.Trial) -> float:
        fixed = sample(trial)
        config = from_trial_params({**fixed, **trial.params, SEARCH_SEED_KEY: seed,
                                    "epochs": max_epochs, "threads": 1,
                                    "precision": precision})
        best = None
        for epoch in train_epochs(config, common.SPLITS):
            if time.time() > deadline:  # the budget ends the trial, as Tune's does
                raise optuna.TrialPruned()
            value = epoch.metrics["val_f1"]
            trial.report(value, epoch.epoch)
            trial.set_user_attr(f"t{epoch.epoch}", time.time())
            best = value if best is None else max(best, value)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    if n_trials:
        study.optimize(objective, n_trials=n_trials)
    else:
        study.optimize(objective, timeout=max(deadline - time.time(), 0))


def run_optuna_peer(name: str, seed: int, args, folder: Path) -> dict:
    import optuna

    from tuning import points as points_mod
    from tuning import space as space_mod

    journal = str(folder / f"{name}.journal")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    space = space_mod.load_space(None)
    for point in points_mod.known_good_points(space):
        study.enqueue_trial({k: v for k, v in point.items() if k in space_mod.to_optuna(space)})
    from model.precision import resolve

    precision = resolve(args.precision or "fp32").precision  # what the default search trains in
    start = time.time()
    deadline = start + (float("inf") if args.samples else args.budget_s)
    per_worker = [args.samples // 2 + (w < args.samples % 2) for w in range(2)] \
        if args.samples else [None, None]
    with ProcessPoolExecutor(2) as pool:
        jobs = [pool.submit(_peer_worker, journal, name, seed, w, deadline, args.max_epochs,
                            args.subset, precision, per_worker[w]) for w in range(2)]
        for job in jobs:
            job.result()
    wall = time.time() - start
    study = optuna.load_study(study_name=name, storage=storage)
    trace = [(float(t.user_attrs[f"t{e}"]) - start, float(v))
             for t in study.trials for e, v in t.intermediate_values.items()
             if f"t{e}" in t.user_attrs]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        sys.exit(f"optuna peer {name}: no trial completed within the budget")
    best = max(complete, key=lambda t: t.value)
    fixed = space_mod.ConditionalSpace(space)(optuna.trial.FixedTrial(best.params))
    return {"wall_s": round(wall, 1), "trials": len(study.trials),
            "epochs": sum(len(t.intermediate_values) for t in study.trials),
            "search_best_val_f1": max(v for _, v in trace),
            "pick": {**fixed, **best.params, "epochs": args.max_epochs, "threads": 1,
                     "precision": precision},
            "pick_val_f1": float(best.value), "trace": sorted(trace)}


# ---- scoring a pick ---------------------------------------------------------------------------

def _retrain(config: dict, seed: int, max_epochs: int) -> dict:
    """Best val macro-F1 of `config` trained with `seed`, and test figures at that epoch
    (evaluate_best's own --reseed)."""
    from tuning.results.reseed import reseed

    [row] = reseed({**config, "epochs": max_epochs, "threads": 1}, common.SPLITS, [seed])
    return {"val_f1": row["val_f1"], "accuracy": row["test_accuracy"],
            "f1_macro": row["test_f1_macro"]}


def score(picks: list[dict], args) -> list[dict]:
    """Each pick's 3 fresh-seed retrains (a configuration picked twice is trained once)."""
    keys = [json.dumps({k: v for k, v in p.items() if k != "seed"}, sort_keys=True) for p in picks]
    unique = dict.fromkeys(keys)
    with ProcessPoolExecutor(2, initializer=load_splits, initargs=(args.subset, True)) as pool:
        runs = {k: [pool.submit(_retrain, json.loads(k), s, args.max_epochs) for s in FRESH_SEEDS]
                for k in unique}
        done = {k: [f.result() for f in fs] for k, fs in runs.items()}
    out = []
    for k in keys:
        rs = done[k]
        val = [r["val_f1"] for r in rs]
        out.append({"fresh_val_f1_mean": statistics.mean(val),
                    "fresh_val_f1_std": statistics.stdev(val),
                    "test_accuracy_mean": statistics.mean(r["accuracy"] for r in rs),
                    "test_f1_macro_mean": statistics.mean(r["f1_macro"] for r in rs)})
    return out


def plot(rows: list[dict], budget: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    labelled = set()
    for r in rows:
        xs, ys, best = [], [], None
        for t, v in r["trace"]:
            best = v if best is None else max(best, v)
            xs.append(t)
            ys.append(best)
        ax.step(xs, ys, where="post", color=colors[r["variant"]], alpha=0.8,
                label=None if r["variant"] in labelled else r["variant"])
        labelled.add(r["variant"])
    ax.axvline(budget, color="grey", linestyle=":", label="budget")
    ax.set_xlabel("wall time since the search started (s)")
    ax.set_ylabel("best val macro-F1 so far")
    # from a quarter of the budget on, where the searches differ
    lows = [max((v for t, v in r["trace"] if t <= budget / 4), default=None) for r in rows]
    lows = [v for v in lows if v is not None]
    if lows:
        ax.set_ylim(bottom=min(lows) - 0.005)
        ax.set_xlim(left=budget / 8)
    ax.legend()
    ax.set_title("Best-so-far val macro-F1 at equal wall budget (one line per search seed)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=1190.0,
                    help="wall budget of every search (default: a default 50-trial search's)")
    ap.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=RACE)
    ap.add_argument("--samples", type=int, default=None,
                    help="run this many trials each, with no wall budget (e.g. 50 with "
                         "--variants fp32 bf16, or default optuna: issue #29's comparisons)")
    ap.add_argument("--max-epochs", type=int, default=6)
    ap.add_argument("--precision", default=None,
                    help="for the default variant and the optuna peer (default: the default "
                         "search's, fp32)")
    ap.add_argument("--subset", type=int, default=None,
                    help="train on the first N train rows (all searches and the scoring)")
    ap.add_argument("--old-code", type=Path,
                    help="a checkout of the code before the fixes (for old-default), e.g. "
                         "`git worktree add /tmp/old d161dce`")
    args = ap.parse_args()
    if "old-default" in args.variants and args.old_code is None:
        ap.error("old-default needs --old-code DIR")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = paths().artifacts / "race" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, seed in enumerate(args.search_seeds):
        order = args.variants[i % len(args.variants):] + args.variants[:i % len(args.variants)]
        for variant in order:
            name = f"race-{stamp}-{variant}-s{seed}"
            found = (run_optuna_peer(name, seed, args, folder) if variant == "optuna"
                     else run_ray_search(variant, name, seed, args))
            rows.append({"variant": variant, "seed": seed, "name": name, **found})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "trace"}), file=sys.stderr)
            (folder / "race.json").write_text(json.dumps(rows, indent=1))
    for row, scored in zip(rows, score([r["pick"] for r in rows], args), strict=True):
        row.update(scored)
    (folder / "race.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.budget_s, folder / "race.png")

    summary, lines = {}, [(
        "variant | pick's 3-fresh-seed val macro-F1: median (worst) | test acc / macro-F1: median "
        "(worst) | epochs | wall s | best val the search saw")]
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]

        def med(key, mine=mine):
            return statistics.median(r[key] for r in mine)

        def worst(key, mine=mine):
            return min(r[key] for r in mine)

        summary[variant] = {k: {"median": med(k), "worst": worst(k)} for k in (
            "fresh_val_f1_mean", "test_accuracy_mean", "test_f1_macro_mean",
            "search_best_val_f1")}
        summary[variant].update(epochs=med("epochs"), wall_s=med("wall_s"),
                                fresh_val_f1_std=med("fresh_val_f1_std"))
        s = summary[variant]
        lines.append(
            f"{variant} | {s['fresh_val_f1_mean']['median']:.4f} ({s['fresh_val_f1_mean']['worst']:.4f})"
            f" ± {s['fresh_val_f1_std']:.4f} | {s['test_accuracy_mean']['median']:.4f} / "
            f"{s['test_f1_macro_mean']['median']:.4f} ({s['test_accuracy_mean']['worst']:.4f} / "
            f"{s['test_f1_macro_mean']['worst']:.4f}) | {s['epochs']:.0f} | {s['wall_s']:.0f} | "
            f"{s['search_best_val_f1']['median']:.4f}")
    result = {"budget_s": args.budget_s, "subset": args.subset, "max_epochs": args.max_epochs,
              "search_seeds": args.search_seeds, "summary": summary, "cpu": cpu_model(),
              "folder": str(folder),
              "runs": [{k: v for k, v in r.items() if k not in ("trace", "pick")} for r in rows]}
    return finish("\n".join(lines), result)


if __name__ == "__main__":
    sys.exit(main())
