"""What ASHA's early stopping buys: the same search with and without it, side by side.

    python benchmarks/asha_vs_fifo.py [--samples 50] [--max-epochs 4]

Runs `python -m tuning.search` twice with the same seed and samples: with the default ASHA
(grace 1, reduction 3) and with ASHA turned off (grace period = max epochs, i.e. FIFO: every trial
runs all its epochs). Counts epochs trained by each, and the epochs ASHA had trained (all trials,
in time order) when its best val_f1 first reached the FIFO run's best. Prints a JSON line last
with fifo_best_val_f1, asha_best_val_f1, fifo_epochs, asha_epochs, asha_epochs_to_fifo_best and
epoch_ratio (asha_epochs_to_fifo_best / fifo_epochs; target <= 1/3; null if never reached).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import pandas as pd

from dataprep.paths import paths


def run(name: str, samples: int, max_epochs: int, grace: int) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuning.search", "--samples", str(samples),
                           "--max-epochs", str(max_epochs), "--grace-period", str(grace),
                           "--name", name, "--no-dashboard"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    wall = time.perf_counter() - start
    rows = [pd.read_csv(f) for f in (paths().ray_results / name).glob("trial_*/progress.csv")]
    return wall, pd.concat(rows).sort_values("timestamp", kind="stable").reset_index(drop=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--max-epochs", type=int, default=4)
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fifo_wall, fifo = run(f"fifo-{stamp}", args.samples, args.max_epochs, args.max_epochs)
    asha_wall, asha = run(f"asha-{stamp}", args.samples, args.max_epochs, 1)
    target = fifo["val_f1"].max()
    reached = asha.index[asha["val_f1"].cummax() >= target]
    to_target = int(reached[0]) + 1 if len(reached) else None
    result = {
        "fifo_best_val_f1": round(float(target), 4),
        "asha_best_val_f1": round(float(asha["val_f1"].max()), 4),
        "fifo_epochs": len(fifo), "asha_epochs": len(asha),
        "asha_epochs_to_fifo_best": to_target,
        "epoch_ratio": round(to_target / len(fifo), 3) if to_target else None,
        "fifo_wall_s": round(fifo_wall, 1), "asha_wall_s": round(asha_wall, 1),
        "samples": args.samples, "max_epochs": args.max_epochs,
    }
    print(f"FIFO: {len(fifo)} epochs, best val_f1 {target:.4f}, {fifo_wall:.0f} s; ASHA: "
          f"{len(asha)} epochs, best {result['asha_best_val_f1']:.4f}, {asha_wall:.0f} s; ASHA "
          f"reached FIFO's best after {to_target} epochs", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
