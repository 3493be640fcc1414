"""Checkpoint retention's cost and gain: the default search with `--keep-checkpoints leaders` (the
default) against `all`, alternating order (A B B A for two rounds), one machine, one run.

    python benchmarks/retention.py [--rounds 2] [--samples 50] [-- extra search flags]

For each search: its wall time, the experiment folder's size on disk when it ends and its peak
while it ran (sampled every 2 s), how many checkpoint folders it holds at the end, and Ray Tune's
"experiment state snapshotting ... may become a bottleneck" warnings. Goals (issue #21): after
≤ 300 MB, peak ≤ 1 GB, zero warnings, wall within 3 % of `all`. Prints a JSON line last.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from common import cpu_model, finish, run_search, snapshot_warnings

from plumbing.paths import paths

MB = 1e6


def folder_bytes(root: Path) -> int:
    """Bytes of the files under root (files deleted while we walk are skipped)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def measured_search(name: str, samples: int, flags: list[str]) -> dict:
    exp_dir = paths().ray_results / name
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.wait(2.0):
            peak[0] = max(peak[0], folder_bytes(exp_dir))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        wall = run_search(name, samples, flags)
    finally:
        stop.set()
        sampler.join()
    after = folder_bytes(exp_dir)
    return {"wall_s": round(wall, 1), "after_mb": round(after / MB, 1),
            "peak_mb": round(max(peak[0], after) / MB, 1),
            "checkpoints_after": sum(1 for _ in exp_dir.glob("trial_*/checkpoint_*")),
            "snapshot_warnings": snapshot_warnings[name], "experiment": name}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("extra", nargs="*", help="more flags for tuning.search (after --)")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs: dict[str, list[dict]] = {"leaders": [], "all": []}
    for r in range(args.rounds):
        order = ["leaders", "all"] if r % 2 == 0 else ["all", "leaders"]
        for keep in order:
            run = measured_search(f"retention-{stamp}-{keep}-{r}", args.samples,
                                  ["--keep-checkpoints", keep, *args.extra])
            runs[keep].append(run)
            print(f"round {r} {keep}: {run}", file=sys.stderr, flush=True)
    wall = {k: statistics.mean(x["wall_s"] for x in v) for k, v in runs.items()}
    leaders = runs["leaders"]
    result = {
        "runs": runs,
        "after_mb_max": max(x["after_mb"] for x in leaders),
        "peak_mb_max": max(x["peak_mb"] for x in leaders),
        "snapshot_warnings": sum(x["snapshot_warnings"] for x in leaders),
        "all_after_mb": [x["after_mb"] for x in runs["all"]],
        "all_snapshot_warnings": sum(x["snapshot_warnings"] for x in runs["all"]),
        "wall_ratio": round(wall["leaders"] / wall["all"], 4),
        "cpu": cpu_model(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
    }
    return finish(f"leaders: after ≤ {result['after_mb_max']} MB, peak ≤ {result['peak_mb_max']} MB, "
                  f"{result['snapshot_warnings']} snapshot warnings; all: after "
                  f"{result['all_after_mb']} MB; wall leaders/all {result['wall_ratio']}", result)


if __name__ == "__main__":
    sys.exit(main())
