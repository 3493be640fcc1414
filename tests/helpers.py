"""What the search tests share: reading a search's outputs, running one in the background,
waiting on it. (Fixtures and the process helpers are in conftest.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd

from tests.conftest import read_live_csv, start_background


def trials_csv(root, name) -> pd.DataFrame:
    return pd.read_csv(root / "artifacts" / "search" / name / "trials.csv")


def finished_progress(exp, max_epochs):
    done = {}
    for d in exp.glob("trial_*"):
        f = d / "progress.csv"
        rows = read_live_csv(f)
        if len(rows) and rows["epoch"].iloc[-1] == max_epochs:
            done[d.name] = f.read_bytes()
    return done


def start_search(root, args):
    """The search as a background process; its stderr goes to a file (a pipe nobody reads
    would fill up and stall it). Returns the process; `stderr_of(proc)` reads what it wrote."""
    env = {**os.environ, "EMOTION_ROOT": str(root), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("EMOTION_DATA_DIR", None)
    log = open(root / f"search-{time.time_ns()}.log", "w+")  # noqa: SIM115 - closed by stderr_of
    proc = start_background([sys.executable, "-m", "tuning.search", *args], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log = log
    return proc


def stderr_of(proc) -> str:
    proc.log.seek(0)
    text = proc.log.read()
    proc.log.close()
    return text


def wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


# Tune saves the experiment state every 10 s or more by default; the kill tests have it saved
# every second (a user's knob too: README, "Failure modes"), so they need not wait long
SNAPSHOT_S = 1


def wait_for_state_saves(exp, saves: int = 2, timeout: float = 120) -> bool:
    """Wait until Tune has saved the experiment state in folder `exp` `saves` more times
    (experiment_state-*.json rewritten): then everything that happened before this call is in
    the saved state, however slow the machine."""
    def state():
        found = {}
        for f in exp.glob("experiment_state-*.json"):
            try:
                found[f.name] = f.stat().st_mtime_ns
            except FileNotFoundError:  # (replaced as we looked)
                pass
        return found

    last, seen = state(), 0
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.05)
        now = state()
        if now != last:
            last, seen = now, seen + 1
            if seen >= saves:
                return True
    return False


def assert_epochs(progress: pd.DataFrame, epochs: int, trial_id: str) -> None:
    """Epochs 1..n, each once, except an epoch that a resume after kill -9 ran again (reported
    after the last saved experiment state): it repeats with the very same numbers."""
    assert progress.drop_duplicates("epoch")["epoch"].tolist() == list(range(1, epochs + 1)), \
        trial_id
    replayed = progress[progress["epoch"].duplicated(keep=False)]
    assert (replayed.groupby("epoch")[["val_f1", "val_loss", "train_loss"]].nunique() == 1)\
        .all().all(), trial_id


def answers(url: str) -> bool:
    """Whether a server a test started answers 200 at `url` yet."""
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False
