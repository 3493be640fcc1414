"""A finished search and its evaluation against the search's own epoch floor.

    python benchmarks/epoch_floor.py --experiment NAME [--wall-s S]

The floor is the time the search's epochs alone would take, packed without a gap onto as many
workers as it ran trials at once: the worker-seconds its trials spent training and validating
(`epoch_s` in each trial's progress.csv) divided by its concurrency. Everything else the user
waits for is above it: Ray's start, a worker per trial, reports and checkpoints, the searcher,
the tail where one trial runs alone, and `python -m tuning.evaluate_best`, which this script
runs and times (it rewrites artifacts/best/). The search's wall is `--wall-s` (as a benchmark
timed it), else its first trial's start to its last report (a lower bound). Prints a JSON line
last with floor_s, search_wall_s, evaluate_s and ratio ((search + evaluate) / floor).
Goal (#29): ratio <= 1.05.
"""
from __future__ import annotations

import argparse
import sys

from common import cpu_model, finish, run_evaluate, trials_in_start_order  # benchmarks/common.py

from plumbing.paths import paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True, help="a finished search under ray_results/")
    ap.add_argument("--wall-s", type=float, help="the search's wall as timed when it ran")
    args = ap.parse_args()
    p = paths()
    from tuning.options import read_options
    from tuning.storage import open_storage

    options = read_options(open_storage(None, p.ray_results), args.experiment)
    progress = [prog for _, prog in trials_in_start_order(p.ray_results / args.experiment)]
    epoch_s = sum(float(prog["epoch_s"].sum()) for prog in progress)
    first = min(float(prog["timestamp"].min() - prog["time_this_iter_s"].iloc[0])
                for prog in progress)
    last = max(float(prog["timestamp"].max()) for prog in progress)
    search_wall = args.wall_s or last - first
    floor = epoch_s / options.concurrency
    evaluate_s = run_evaluate(p.ray_results / args.experiment)
    result = {"experiment": args.experiment, "trials": len(progress),
              "epochs": sum(len(prog) for prog in progress), "workers": options.concurrency,
              "epoch_worker_s": round(epoch_s, 1), "floor_s": round(floor, 1),
              "search_wall_s": round(search_wall, 1),
              "search_wall_from": "given" if args.wall_s else "timestamps",
              "evaluate_s": round(evaluate_s, 1),
              "search_ratio": round(search_wall / floor, 3),
              "ratio": round((search_wall + evaluate_s) / floor, 3), "cpu": cpu_model()}
    return finish(f"{args.experiment}: search {search_wall:.1f} s + evaluate {evaluate_s:.1f} s "
                  f"against an epoch floor of {floor:.1f} s: {result['ratio']:.3f} x", result)


if __name__ == "__main__":
    sys.exit(main())
