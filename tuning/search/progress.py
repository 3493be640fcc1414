"""What the terminal shows of a running search, instead of Tune's status tables (--verbose).

On a terminal: one line redrawn in place (trials done / total, epochs, the best val macro-F1 so
far and its trial, elapsed, a rough ETA), with a line printed above it as each trial ends. Not on
a terminal (CI, `ray job logs`, the dashboard's driver log): the line per finished trial only.
"""
from __future__ import annotations

import sys
import time

from ray.tune import Callback

from tuning.outcome import METRIC, trial_status


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class Progress(Callback):
    def __init__(self, total: int, max_epochs: int):
        self.total, self.max_epochs = total, max_epochs
        self._reset()

    def _reset(self) -> None:
        self.start = time.monotonic()
        self.epochs = 0
        self.trial_best: dict[str, tuple[float, int]] = {}  # trial id -> (best val_f1, epoch)
        self.best: tuple[float, str] | None = None           # (val_f1, trial id)
        self.ended: set[str] = set()
        self.ended_before: int | None = None  # trials a resumed search finds already ended
        self.drawn = 0.0

    def setup(self, **info) -> None:
        self._reset()  # (a resumed search unpickles this callback with the last run's counts)
        self.total = info.get("total_num_samples") or self.total  # (an extension has more)

    def on_step_begin(self, iteration: int, trials, **info) -> None:
        if self.ended_before is None:
            self.ended_before = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        self._draw()

    def on_experiment_end(self, trials, **info) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # the bar stays, the summary goes below it

    def on_trial_result(self, iteration: int, trials, trial, result: dict, **info) -> None:
        self.epochs += 1
        value, epoch = result.get(METRIC), result.get("epoch")
        if isinstance(value, int | float):
            if trial.trial_id not in self.trial_best or value > self.trial_best[trial.trial_id][0]:
                self.trial_best[trial.trial_id] = (float(value), int(epoch or 0))
            if self.best is None or value > self.best[0]:
                self.best = (float(value), trial.trial_id)
        self._draw()

    def on_trial_complete(self, iteration: int, trials, trial, **info) -> None:
        self._ended(trial, trial_status("TERMINATED", trial.last_result or None, self.max_epochs))

    def on_trial_error(self, iteration: int, trials, trial, **info) -> None:
        self._ended(trial, "error")

    def _ended(self, trial, status: str) -> None:
        if trial.trial_id in self.ended:
            return
        self.ended.add(trial.trial_id)
        epochs = (trial.last_result or {}).get("epoch", 0)
        best = self.trial_best.get(trial.trial_id)
        figure = f"best val_f1 {best[0]:.4f} (epoch {best[1]})" if best else "no val_f1"
        line = (f"trial {trial.trial_id} {status}: {epochs} epoch(s), {figure} | "
                f"{self._done()}/{self.total} ended, {self._best_text()}, "
                f"{_clock(time.monotonic() - self.start)} elapsed")
        self._print(line)

    def _done(self) -> int:
        return (self.ended_before or 0) + len(self.ended)

    def _best_text(self) -> str:
        return (f"best {self.best[0]:.4f} ({self.best[1]})" if self.best else "best -")

    def _print(self, line: str) -> None:
        out = sys.stderr
        if out.isatty():
            out.write("\r\x1b[K" + line + "\n")
            self.drawn = 0.0
            self._draw()
        else:
            out.write(line + "\n")
        out.flush()

    def _draw(self) -> None:
        out = sys.stderr
        now = time.monotonic()
        if not out.isatty() or now - self.drawn < 1.0:
            return
        self.drawn = now
        done, elapsed = self._done(), now - self.start
        ran = len(self.ended)  # trials this run ended (a resume's earlier ones took no time here)
        eta = f"ETA ~{_clock(elapsed / ran * (self.total - done))}" if ran else "ETA -"
        width = 20
        filled = int(width * done / self.total) if self.total else width
        out.write(f"\r\x1b[K[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} trials, "
                  f"{self.epochs} epochs, {self._best_text()}, {_clock(elapsed)} elapsed, {eta}")
        out.flush()
