"""Where one trial's time goes: torch.profiler over one epoch of a search trial, outside Ray.

    python benchmarks/profile_trial.py [--config FILE.json]

Profiles epoch 2 (epoch 1 warms up allocators and kernels) of the default search's known-good
unidirectional LSTM (embedding 128, hidden 192, batch 64, one thread) on the real data: training
plus the validation pass, as a trial runs it. Prints the top operators by self CPU time, and a JSON
line last with epoch_s and the share of the epoch in each of the top operators.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import cpu_model, finish  # benchmarks/common.py (scripts run from this folder)
from torch.profiler import ProfilerActivity, profile

from model.config import TrainConfig
from model.data import load_processed
from model.loop import train_epochs
from plumbing.paths import paths
from tuning.space import KNOWN_GOOD


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="JSON config overrides instead of the known-good LSTM")
    args = ap.parse_args()
    overrides = json.loads(Path(args.config).read_text()) if args.config else KNOWN_GOOD[1]
    cfg = TrainConfig.from_flat({**overrides, "epochs": 6, "threads": 1})
    splits = load_processed(paths())
    epochs = train_epochs(cfg, splits)
    next(epochs)  # warm-up epoch
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        next(epochs)
        wall = time.perf_counter() - start
    table = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in table)
    top = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    shares = {e.key: round(e.self_cpu_time_total / total, 3) for e in top}
    return finish(table.table(sort_by="self_cpu_time_total", row_limit=12),
                  {"epoch_s": round(wall, 2), "self_cpu_share": shares, "config": overrides,
                   "cpu": cpu_model()})


if __name__ == "__main__":
    sys.exit(main())
