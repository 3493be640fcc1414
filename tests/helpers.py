"""What the search tests share: reading a search's outputs, running one in the background,
waiting on it. (Fixtures and the process helpers are in conftest.py.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tests.conftest import read_live_csv, start_background

# an epoch's wall-clock figures: the only metrics that differ between two runs of one seed
TIMING = {"sentences_per_s", "epoch_s"}


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def checkpoints_kept(folder, trial) -> list[str]:
    """The checkpoint folders, by name, that `trial` (a trial id, or a trial that has one)
    holds in `folder`, where each trial has a folder named by its id (retention's unit tests)."""
    trial_id = getattr(trial, "trial_id", trial)
    return sorted(p.name for p in (Path(folder) / trial_id).glob("checkpoint_*"))


def stored_options(text: str | bytes) -> dict:
    """The options in a search_options.json's text (the envelope {sha256, options}), its hash
    checked here, by hand."""
    import hashlib
    import json

    doc = json.loads(text)
    body = json.dumps(doc["options"], sort_keys=True, separators=(",", ":")).encode()
    assert hashlib.sha256(body).hexdigest() == doc["sha256"]
    return doc["options"]


def trials_table(rows) -> pd.DataFrame:
    """A trials.csv-like table of hand-written rows: (trial_id, phase, hidden_size, status,
    best_val_f1[, seed[, latency_ms]]); the seed defaults to the row's index, the latency to
    none measured."""
    return pd.DataFrame([{
        "trial_id": t, "phase": ph, "replicate": int(ph == "intensify"), "hidden_size": h,
        "lr": 0.003, "status": st, "best_val_f1": f1, "best_epoch": 2,
        "seed": rest[0] if rest else i, "latency_ms": rest[1] if len(rest) > 1 else float("nan")}
        for i, (t, ph, h, st, f1, *rest) in enumerate(rows)])


def trials_csv(root, name) -> pd.DataFrame:
    # (trial ids as text: an id such as 96e07768 reads as a float, inf, otherwise)
    return pd.read_csv(root / "artifacts" / "search" / name / "trials.csv",
                       dtype={"trial_id": str})


def asha_cuts_by_hand(exp, search: pd.DataFrame, rungs: tuple[int, ...],
                      reduction_factor: float) -> dict[str, int]:
    """trial id -> the epoch at which ASHA must stop it, for `search` trials (trials.csv rows,
    in the order they were created) run one at a time, worked out from their progress.csv in
    folder `exp` by Ray's rung rule (async_hyperband.py, `_Bracket.on_result`): at a rung's
    epoch, a trial whose val_f1 is below the (1 - 1/reduction_factor) quantile (linear, as
    numpy's) of the values the trials before it recorded at that rung is stopped (the first to
    get there goes on), its own value recorded there whether it goes on or not. (One at a time,
    every earlier trial has passed, or stopped at, each rung before a later one gets there.)"""
    import numpy as np

    recorded: dict[int, list[float]] = {rung: [] for rung in rungs}
    cut = {}
    for trial_id in search["trial_id"]:
        curve = pd.read_csv(exp / f"trial_{trial_id}" / "progress.csv")["val_f1"].tolist()
        for epoch, value in enumerate(curve, 1):
            if epoch not in recorded:
                continue
            earlier = list(recorded[epoch])
            recorded[epoch].append(value)
            if earlier and value < np.percentile(earlier, (1 - 1 / reduction_factor) * 100):
                cut[trial_id] = epoch
                break
    return cut


# ---- expected values worked out by hand from trials.csv's plain columns ---------------------
# (not by the harness's own ranking: tuning.selection's leaders, config_key, choose)

# the keys of the search space (tuning/space.py's SPACE), written out here: a trial's
# hyperparameters as trials.csv has them
SPACE_KEYS = ["family", "rnn", "embedding_dim", "hidden_size", "num_layers", "bidirectional",
              "pooling", "embedding_dropout", "rnn_dropout", "dropout", "cnn_widths",
              "cnn_filters", "transformer_layers", "transformer_heads", "transformer_ff",
              "transformer_dropout", "transformer_positions", "transformer_pooling",
              "bag_pooling", "lr", "weight_decay", "batch_size"]
# the statuses whose best val macro-F1 measured the trial's seed (not a run the time budget, an
# error or an interruption cut short)
MEASURED = {"completed", "early_stopped", "diverged", "asha_stopped"}
LEADERS = 5  # retention keeps the top 5 configurations (README, --keep-checkpoints)


def config_of(row) -> str:
    """A trial's hyperparameters (a trials.csv row) as one comparable string, a family's empty
    columns left out: two rows of one configuration have the same."""
    return json.dumps({k: row[k] for k in SPACE_KEYS if k in row and pd.notna(row[k])},
                      sort_keys=True, default=str)


def undominated(rows: pd.DataFrame) -> set[str]:
    """The trial ids of `rows` that no other row beats: at least as high a best_val_f1 and as
    low a latency_ms, and better in one (of equal rows, all are kept)."""
    f1, ms = rows["best_val_f1"], rows["latency_ms"]
    return {row["trial_id"] for _, row in rows.iterrows()
            if not ((f1 >= row["best_val_f1"]) & (ms <= row["latency_ms"])
                    & ((f1 > row["best_val_f1"]) | (ms < row["latency_ms"]))).any()}


def frontier_by_hand(table: pd.DataFrame) -> set[str]:
    """The trial ids on trials.csv's F1/latency frontier: undominated among the search trials
    that measured their seed and a latency."""
    return undominated(table[(table["phase"] == "search") & table["status"].isin(MEASURED)
                             & table["best_val_f1"].notna() & table["latency_ms"].notna()])


def kept_by_retention(table: pd.DataFrame) -> set[str]:
    """The configurations (`config_of`) whose ended trials keep their best checkpoint when a
    search ends, as retention promises: the top 5 distinct configurations by best val
    macro-F1 (ties at the edge kept; an errored trial does not rank: it is never the winner),
    every replicated configuration, and those of the search trials on the F1/latency
    frontier."""
    config = pd.Series([config_of(row) for _, row in table.iterrows()], index=table.index)
    ranked = table["best_val_f1"].notna() & (table["status"] != "error")
    best = table.loc[ranked, "best_val_f1"].groupby(config[ranked]).max()\
        .sort_values(ascending=False)
    edge = best.iloc[min(LEADERS, len(best)) - 1] if len(best) else float("inf")
    keep = set(best[best >= edge].index)
    keep |= set(config[table["replicate"] > 0])
    keep |= set(config[table["trial_id"].isin(frontier_by_hand(table))])
    return keep


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


def kill_9(driver) -> str:
    """kill -9 a search's driver (a `start_search` process) and wait for it; asserts that the
    signal is what ended it (a driver that had already exited, its search done, fails here).
    Returns what it wrote to stderr."""
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    err = stderr_of(driver)
    assert driver.returncode == -signal.SIGKILL, (driver.returncode, err[-2000:])
    return err


def progress_rows(exp) -> int:
    """The epochs reported so far by all the trials of the experiment in folder `exp`."""
    return sum(len(read_live_csv(f)) for f in exp.glob("trial_*/progress.csv"))


ENDED = ("TERMINATED", "ERROR")  # Tune's statuses of a trial that a resume will not run again


def saved_trials(where, name: str) -> dict[str, str]:
    """trial id -> Tune's status of it (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) in the
    state a resume of experiment `name` restores (its last whole save, saved_state.py).
    `where`: the folder holding the experiments (a project root's ray_results), or a folder or
    a bucket as test_lifecycle's `Where` names it (its `fs` and `experiment(name)`)."""
    import pyarrow.fs as pafs

    from tuning.search.saved_state import saved_trials as restored

    if isinstance(where, str | os.PathLike):
        fs, exp = pafs.LocalFileSystem(), str(Path(where) / name)
    else:
        fs, exp = where.fs, where.experiment(name)
    trials = restored(fs, exp)
    assert trials, f"no experiment state saved in {exp}"
    return {t["trial_id"]: t["status"] for t in trials}


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
    (its bundle, what a resume restores, rewritten: saved_state.py): then everything that
    happened before this call is in the saved state, however slow the machine."""
    def state():
        found = {}
        for f in exp.glob("harness/tune_state.pkl"):
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
