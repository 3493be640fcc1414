"""What ASHA's early stopping buys: the same trials with and without it, side by side.

    python benchmarks/asha_vs_fifo.py [--samples 50] [-- extra search flags]

1. FIFO: the default `python -m tuning.search` (OptunaSearch/TPE, same seed and samples) with
   early stopping off (grace period = max epochs: every trial runs all its epochs).
2. ASHA: the default search (grace 1, reduction 3) given FIFO's trials, in the order FIFO started
   them, as `--points`: the same hyperparameters, hence the same derived seeds and the same
   val_f1 epoch by epoch, so the only difference is which trials ASHA stops.
Counts the epochs each trained and the epochs ASHA had trained (all trials, in time order) when
its best val_f1 first reached FIFO's best. Prints a JSON line last with fifo_best_val_f1,
asha_best_val_f1, fifo_epochs, asha_epochs, asha_epochs_to_fifo_best and epoch_ratio
(asha_epochs_to_fifo_best / fifo_epochs; target <= 1/3; null if ASHA stopped FIFO's best trial
before its best epoch).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import pandas as pd
from common import cpu_model, finish, run_search, trials_in_start_order  # benchmarks/common.py

from dataprep.paths import paths


def run(name: str, samples: int, flags: list[str]) -> tuple[float, pd.DataFrame, list[dict]]:
    """Run a search; its epochs in time order, and its trials' params in the order they started."""
    wall = run_search(name, samples, flags)
    trials = trials_in_start_order(paths().ray_results / name)
    epochs = pd.concat([progress for _, progress in trials]).sort_values("timestamp", kind="stable")
    return wall, epochs.reset_index(drop=True), [params for params, _ in trials]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("extra", nargs="*", help="more flags for tuning.search (after --)")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from tuning.search import parse_args

    max_epochs = parse_args(args.extra).max_epochs
    fifo_wall, fifo, configs = run(f"fifo-{stamp}", args.samples,
                                   ["--grace-period", str(max_epochs), *args.extra])
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(configs, f)
    asha_wall, asha, _ = run(f"asha-{stamp}", args.samples, ["--points", f.name, *args.extra])
    target = fifo["val_f1"].max()
    reached = asha.index[asha["val_f1"].cummax() >= target - 1e-9]
    to_target = int(reached[0]) + 1 if len(reached) else None
    result = {
        "fifo_best_val_f1": round(float(target), 4),
        "asha_best_val_f1": round(float(asha["val_f1"].max()), 4),
        "fifo_epochs": len(fifo), "asha_epochs": len(asha),
        "asha_epochs_to_fifo_best": to_target,
        "epoch_ratio": round(to_target / len(fifo), 3) if to_target else None,
        "fifo_wall_s": round(fifo_wall, 1), "asha_wall_s": round(asha_wall, 1),
        "samples": args.samples, "max_epochs": max_epochs, "cpu": cpu_model(),
    }
    return finish(f"FIFO: {len(fifo)} epochs, best val_f1 {target:.4f}, {fifo_wall:.0f} s; ASHA on "
                  f"the same trials: {len(asha)} epochs, best {result['asha_best_val_f1']:.4f}, "
                  f"{asha_wall:.0f} s; ASHA reached FIFO's best after {to_target} epochs", result)


if __name__ == "__main__":
    sys.exit(main())
