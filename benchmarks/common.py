"""What the benchmarks share: the machine they ran on, running a search, reading its trials, and
the closing lines (a summary on stderr, then the JSON line last on stdout)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def trials_in_start_order(exp_dir) -> list[tuple[dict, object]]:
    """A finished Ray Tune experiment's trials as (params, progress), in the order they started
    (each trial's first report time less that epoch's duration)."""
    import pandas as pd

    trials = []
    for trial_dir in exp_dir.glob("trial_*"):
        progress = pd.read_csv(trial_dir / "progress.csv")
        started = progress["timestamp"].min() - progress["time_this_iter_s"].iloc[0]
        trials.append((started, json.loads((trial_dir / "params.json").read_text()), progress))
    trials.sort(key=lambda t: t[0])
    return [(params, progress) for _, params, progress in trials]


# Ray Tune's warning when it snapshots the experiment state too often (issue #11 counted ~75 in a
# default run): every benchmark search counts them, so a regression shows in its figures
SNAPSHOT_WARNING = "may become a bottleneck"
snapshot_warnings: dict[str, int] = {}


def run_search(name: str, samples: int, flags: list[str]) -> float:
    """`python -m tuning.search` without the dashboard, timed end to end; a failed search ends the
    benchmark with the search's last lines of stderr (exit 1). Counts its snapshot warnings in
    `snapshot_warnings[name]`."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuning.search", "--samples", str(samples),
                           "--name", name, "--no-dashboard", *flags],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    snapshot_warnings[name] = proc.stderr.count(SNAPSHOT_WARNING)
    return time.perf_counter() - start


def run_evaluate(experiment_dir) -> float:
    """`python -m tuning.evaluate_best --experiment DIR`, timed end to end (it rewrites
    artifacts/best/); a failed evaluation ends the benchmark with its last lines of stderr."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuning.evaluate_best", "--experiment",
                           str(experiment_dir)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return time.perf_counter() - start


def finish(summary: str, result: dict) -> int:
    print(summary, file=sys.stderr)
    print(json.dumps(result))
    return 0


SPLITS = None  # a worker process's splits (load_splits is a pool's initializer)


def load_splits(subset: int | None, with_test: bool = False) -> None:
    """The processed splits the search trained on (its --subset too; the whole test split)."""
    global SPLITS
    from model.data import load_processed
    from plumbing.paths import paths

    splits = load_processed(paths(), with_test=with_test)
    SPLITS = splits.head(subset, subset) if subset else splits
