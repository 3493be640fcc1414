"""What ASHA's early stopping buys: the same trials with and without it, side by side.

    python benchmarks/asha_vs_fifo.py [--samples 50] [-- extra search flags]

1. FIFO: the default `python -m tuning.search` (OptunaSearch/TPE, same seed and samples) with
   early stopping off (grace period = max epochs: every trial runs all its epochs).
2. ASHA: the default search (grace 1, reduction 3) given FIFO's trials, in the order FIFO started
   them, as `--points`: the same hyperparameters, hence the same derived seeds and the same
   val_f1 epoch by epoch, so the only difference is which trials ASHA stops.
Like for like, as a real run sees it: each run's total epochs and wall time, the best val_f1 it
reached, and the epochs it had trained (all trials, in time order) when it first reached its own
best. The goal: ASHA reaches FIFO's best with at most 1/3 of FIFO's epochs, counting every epoch
ASHA trained (epoch_ratio = asha_epochs / fifo_epochs; no stopping at a target a run cannot
know). Prints a JSON line last.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import pandas as pd
from common import (  # benchmarks/common.py
    cpu_model,
    finish,
    run_search,
    snapshot_warnings,
    trials_in_start_order,
)

from plumbing.paths import paths


def run(name: str, samples: int, flags: list[str] | None) -> tuple[float, pd.DataFrame, list[dict]]:
    """Run a search (flags None: read the finished one); its epochs in time order, and its
    trials' params in the order they started."""
    wall = run_search(name, samples, flags) if flags is not None else None
    trials = trials_in_start_order(paths().ray_results / name)
    epochs = pd.concat([progress for _, progress in trials]).sort_values("timestamp", kind="stable")
    return wall, epochs.reset_index(drop=True), [params for params, _ in trials]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--asha-grace", type=int, default=1, help="ASHA's grace period (default 1)")
    ap.add_argument("--fifo", metavar="NAME", help="reuse this finished FIFO run of ray_results/ "
                    "(its wall time is then not known: null)")
    ap.add_argument("extra", nargs="*", help="more flags for tuning.search (after --)")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from tuning.search.flags import parse_args

    max_epochs = parse_args(args.extra).max_epochs
    # the search phase only: intensification would add the same full runs to both
    extra = ["--intensify-top", "0", *args.extra]
    fifo_wall, fifo, configs = run(args.fifo or f"fifo-{stamp}", args.samples, None if args.fifo
                                   else ["--grace-period", str(max_epochs), *extra])
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(configs, f)
    asha_wall, asha, _ = run(f"asha-{stamp}", args.samples, ["--points", f.name, "--grace-period",
                                                             str(args.asha_grace), *extra])
    runs = {"fifo": (fifo_wall, fifo), "asha": (asha_wall, asha)}
    result = {}
    for run_name, (wall, epochs) in runs.items():
        best = float(epochs["val_f1"].max())
        result.update({f"{run_name}_epochs": len(epochs), f"{run_name}_wall_s": wall and round(wall, 1),
                       f"{run_name}_best_val_f1": round(best, 4),
                       f"{run_name}_epochs_to_best": epochs_to(epochs, best)})
    fifo_best = fifo["val_f1"].max()
    result.update(
        asha_reached_fifo_best=bool(asha["val_f1"].max() >= fifo_best - 1e-9),
        epoch_ratio=round(len(asha) / len(fifo), 3), wall_ratio=fifo_wall and round(asha_wall / fifo_wall, 3),
        asha_grace=args.asha_grace,
        snapshot_warnings=sum(snapshot_warnings.values()),
        samples=args.samples, max_epochs=max_epochs, cpu=cpu_model())
    lines = [f"{run_name.upper()}: {result[f'{run_name}_epochs']} epochs in "
             f"{result[f'{run_name}_wall_s']} s, best val_f1 {result[f'{run_name}_best_val_f1']:.4f}"
             f" first reached after {result[f'{run_name}_epochs_to_best']} epochs" for run_name in runs]
    return finish("; ".join(lines) + f"; ASHA/FIFO epochs {result['epoch_ratio']}, wall "
                  f"{result['wall_ratio']}; ASHA reached FIFO's best: "
                  f"{result['asha_reached_fifo_best']}", result)


def epochs_to(epochs: pd.DataFrame, value: float) -> int:
    """Epochs trained (all trials, in time order) when the running best first reached `value`."""
    return int(epochs.index[epochs["val_f1"].cummax() >= value - 1e-9][0]) + 1


if __name__ == "__main__":
    sys.exit(main())
