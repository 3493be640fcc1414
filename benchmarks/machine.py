"""What the benchmarks print about the machine they ran on, and how they read finished searches."""
from __future__ import annotations

import platform


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
    import json

    import pandas as pd

    trials = []
    for trial_dir in exp_dir.glob("trial_*"):
        progress = pd.read_csv(trial_dir / "progress.csv")
        started = progress["timestamp"].min() - progress["time_this_iter_s"].iloc[0]
        trials.append((started, json.loads((trial_dir / "params.json").read_text()), progress))
    trials.sort(key=lambda t: t[0])
    return [(params, progress) for _, params, progress in trials]
