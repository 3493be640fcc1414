"""Ray Tune's overhead against a plain Optuna loop doing the same work.

    python benchmarks/ray_overhead.py [--samples 8] [--epochs 2] [--workers 2]

1. `python -m tuning.search` with ASHA turned off (grace period = max epochs), timed end to end
   (Ray start, object store, per-epoch checkpoints and reports included).
2. A plain Optuna ask-and-tell loop with a pool of worker processes that replays exactly those
   trials (the same hyperparameters, so the same derived seeds, epochs and numbers) through the
   same `model.train.fit`, timed end to end (worker start and data loading included).
Prints both walls, checks the two runs reached the same val_f1 per trial, and prints a JSON line
last with ray_wall_s, optuna_wall_s and overhead (ray / optuna - 1). Target: overhead <= 0.05.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import pandas as pd

from dataprep.paths import paths

_SPLITS = None


def _load():
    global _SPLITS
    from model.data import load_processed

    _SPLITS = load_processed(paths())


def _train(config: dict) -> float:
    from model.train import fit
    from tuning.trainable import model_config

    best = 0.0
    for epoch in fit(model_config(config), _SPLITS):
        best = max(best, epoch.metrics["val_f1"])
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    p = paths()
    name = time.strftime("overhead-%Y%m%d-%H%M%S")

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuning.search", "--samples", str(args.samples),
                           "--max-epochs", str(args.epochs), "--grace-period", str(args.epochs),
                           "--concurrency", str(args.workers), "--name", name, "--no-dashboard"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    ray_wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
    trials = pd.read_csv(p.search_reports / name / "trials.csv")
    configs = [json.loads((p.ray_results / name / f"trial_{t}" / "params.json").read_text())
               for t in trials["trial_id"]]

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    study = optuna.create_study(direction="maximize")
    values = {}
    with ProcessPoolExecutor(args.workers, initializer=_load) as pool:
        pending, queue = {}, list(configs)
        while queue or pending:
            while queue and len(pending) < args.workers:
                cfg = queue.pop(0)
                trial = study.ask()
                pending[pool.submit(_train, cfg)] = (trial, cfg)
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                trial, cfg = pending.pop(fut)
                study.tell(trial, fut.result())
                values[json.dumps(cfg, sort_keys=True)] = fut.result()
    optuna_wall = time.perf_counter() - start

    same = all(abs(values[json.dumps(c, sort_keys=True)] - v) < 1e-9
               for c, v in zip(configs, trials["best_val_f1"]))
    result = {"ray_wall_s": round(ray_wall, 1), "optuna_wall_s": round(optuna_wall, 1),
              "overhead": round(ray_wall / optuna_wall - 1, 3), "trials": len(configs),
              "epochs_per_trial": args.epochs, "workers": args.workers,
              "same_val_f1_per_trial": same}
    print(f"Ray Tune {ray_wall:.1f} s vs plain Optuna loop {optuna_wall:.1f} s for the same "
          f"{len(configs)} trials x {args.epochs} epochs: overhead {result['overhead']:+.1%} "
          f"(same results: {same})", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
