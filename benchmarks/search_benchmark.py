"""The product's headline run: the default search, then evaluate_best, each timed.

    python benchmarks/search_benchmark.py [--samples 50] [-- extra search flags]

Runs `python -m tuning.search --samples N --name bench-<time>` and
`python -m tuning.evaluate_best --experiment ray_results/bench-<time>` on the prepared data (run
`make data` first), samples CPU use while the search runs, and prints a JSON line last with
wall_s (the search), evaluate_s, test_accuracy, test_f1_macro, val_f1, epochs_total, trials,
cpu_busy (mean fraction of all cores in use during the search) and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import pandas as pd
from common import (  # benchmarks/common.py (scripts run from here)
    cpu_model,
    finish,
    run_evaluate,
    run_search,
)

from plumbing.paths import paths


def cpu_times() -> tuple[float, float]:
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("extra", nargs="*", help="more flags for tuning.search (after --)")
    args = ap.parse_args()
    p = paths()
    name = time.strftime("bench-%Y%m%d-%H%M%S")
    busy_samples: list[float] = []
    stop = threading.Event()

    def sample_cpu():
        last = cpu_times()
        while not stop.wait(2.0):
            now = cpu_times()
            busy_samples.append((now[0] - last[0]) / max(1e-9, now[1] - last[1]))
            last = now

    sampler = threading.Thread(target=sample_cpu, daemon=True)
    sampler.start()
    try:
        wall = run_search(name, args.samples, args.extra)
    finally:
        stop.set()
    evaluate_s = run_evaluate(p.ray_results / name)
    metrics = json.loads((p.best / "metrics.json").read_text())
    trials = pd.read_csv(p.search_reports / name / "trials.csv", dtype={"trial_id": str})
    result = {
        "wall_s": round(wall, 1),
        "evaluate_s": round(evaluate_s, 1),
        "test_accuracy": round(metrics["accuracy"], 4),
        "test_f1_macro": round(metrics["f1_macro"], 4),
        "val_f1": round(metrics["val_f1"], 4),
        "epochs_total": int(trials["epochs_run"].sum()),
        "trials": len(trials),
        "statuses": trials["status"].value_counts().to_dict(),
        "cpu_busy": round(sum(busy_samples) / max(1, len(busy_samples)), 3),
        "experiment": name,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    return finish(f"search {wall:.0f} s ({result['trials']} trials, {result['epochs_total']} epochs, "
                  f"CPU {result['cpu_busy']:.0%} busy); evaluate {evaluate_s:.0f} s; test accuracy "
                  f"{result['test_accuracy']:.4f}, macro-F1 {result['test_f1_macro']:.4f}", result)


if __name__ == "__main__":
    sys.exit(main())
