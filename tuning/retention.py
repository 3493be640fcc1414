"""Which checkpoints a search keeps (`--keep-checkpoints`, default `leaders`).

Tune's own cap (`CheckpointConfig(num_to_keep=K)`) forces an experiment-state snapshot each time
a trial has written K checkpoints since the last (ray #31613: a snapshot, and a warning, per
epoch with K = 1), and deleting a checkpoint behind Tune's back could remove the one a stale
snapshot resumes a trial from after a kill -9. So, through the storage's filesystem (a folder or
a bucket alike):

While the search runs (`Retention`, a Tune callback): a trial that has ended (completed, cut,
errored) keeps only its best-validation checkpoint, pruned two experiment-state snapshots after
it ended, when every saved state already says it ended (no resume will want its latest). Its
best is read off Tune's own record of its checkpoints (restored with the experiment), not off
the results this driver saw: a trial resumed after a kill -9 may have had its best epoch
before.
Running trials keep theirs. So the search holds one checkpoint per ended trial and every epoch's
of the few trials running.

When the search ends (`prune`):

  leaders  a search that ended: the best-validation checkpoint of each trial of the top
           `LEADERS` distinct configurations by best val macro-F1 and of every replicated
           configuration (the winner, a stage's replicates, and what a later stage over the same
           trials could pick), and no other. An interrupted search: unfinished trials keep all of theirs (a resume goes on
           from their latest); ended trials keep their best. evaluate_best reads the winner's;
           `--reseed`, the stage and `model.train --config` read configurations, not checkpoints.
  all      nothing is deleted.
"""
from __future__ import annotations

import math

import pyarrow.fs as pafs
from ray.tune import Callback

from tuning.intensify import config_keys, table_leaders
from tuning.outcome import METRIC, MODE

LEADERS = 5
CHECKPOINT_PREFIX = "checkpoint_"


def _checkpoint_dirs(storage, name: str, trial_id: str) -> list[str]:
    infos = storage.fs.get_file_info(pafs.FileSelector(storage.path(name, f"trial_{trial_id}"),
                                                       allow_not_found=True))
    return sorted(i.path for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))


def best_checkpoint_path(trial) -> str | None:
    """The trial's best-validation checkpoint as Tune records it (its checkpoint manager, which
    a resume restores with the experiment: epochs from before a kill -9 included), by the rule
    of `ExperimentAnalysis.get_best_checkpoint`, which evaluate_best reads: the highest val_f1,
    NaN left out, the first of equals."""
    scored = [(r.checkpoint.path, r.metrics.get(METRIC)) for r in
              trial.run_metadata.checkpoint_manager.best_checkpoint_results]
    scored = [(path, v) for path, v in scored if isinstance(v, int | float) and not math.isnan(v)]
    sign = 1 if MODE == "max" else -1
    return max(scored, key=lambda s: sign * s[1])[0] if scored else None


def kept_checkpoints(analysis, table) -> dict[str, str | None]:
    """trial id -> the one checkpoint path (on the storage's filesystem) an ended trial keeps,
    None for none; unfinished trials are not in it (they keep all)."""
    # (configurations compared as trials.csv has them: every hyperparameter, defaults filled
    # in; a trial's Tune config holds only the searched and fixed keys)
    table = table.assign(config=config_keys(table))
    leaders = set(table_leaders(table, LEADERS))  # of both phases: a replicate is a leader's
    # and every replicated configuration (the winner is one: after an extension, an earlier
    # stage's leader can win on its mean yet rank below 5 others by best single trial)
    leaders |= set(table.loc[table["phase"] == "intensify", "config"])
    interrupted = (table["status"] == "unfinished").any()
    rows = table.set_index("trial_id")
    keep = {}
    for trial in analysis.trials:
        if trial.trial_id not in rows.index or rows.at[trial.trial_id, "status"] == "unfinished":
            continue
        wanted = interrupted or rows.at[trial.trial_id, "config"] in leaders
        keep[trial.trial_id] = best_checkpoint_path(trial) if wanted else None
    return keep


def prune(storage, name: str, analysis, table) -> tuple[int, int]:
    """Delete what `kept_checkpoints` does not keep. Returns (checkpoints kept, deleted)."""
    kept = deleted = 0
    for trial_id, keep in kept_checkpoints(analysis, table).items():
        paths = _checkpoint_dirs(storage, name, trial_id)
        if keep is not None and _base(keep) not in {_base(p) for p in paths}:
            continue  # (never leave a trial that should keep a checkpoint with none)
        for path in paths:
            if _base(path) == _base(keep or ""):
                kept += 1
                continue
            storage.fs.delete_dir(path)
            deleted += 1
    return kept, deleted


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


class Retention(Callback):
    """Prunes each ended trial to its best-validation checkpoint while the search runs."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.ended: dict[str, tuple[object, int]] = {}  # trial id -> (trial, snapshot it ended at)
        self.snapshots = 0

    def setup(self, **info) -> None:
        self._reset()  # (a resumed search unpickles this callback with the last run's state)

    def on_trial_complete(self, iteration: int, trials, trial, **info) -> None:
        self.ended.setdefault(trial.trial_id, (trial, self.snapshots))

    def on_trial_error(self, iteration: int, trials, trial, **info) -> None:
        self.ended.setdefault(trial.trial_id, (trial, self.snapshots))

    def get_state(self) -> None:
        """Called as Tune saves the experiment state: the moment to prune the trials that every
        saved state knows as ended (ended before the previous save began)."""
        self.snapshots += 1
        for trial_id, (trial, at) in list(self.ended.items()):
            if at <= self.snapshots - 2:
                del self.ended[trial_id]
                self._prune(trial)
        # (stateless: a resumed search prunes what is left when it ends)

    def _prune(self, trial) -> None:
        # Tune's record, not the results this driver saw: a trial resumed after a kill may have
        # had its best epoch before it
        best = best_checkpoint_path(trial)
        if best is None:
            return
        try:
            fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
            found = [i for i in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
                     if i.type == pafs.FileType.Directory
                     and i.base_name.startswith(CHECKPOINT_PREFIX)]
            if _base(best) not in {i.base_name for i in found}:
                return  # (never leave it with none)
            for info in found:
                if info.base_name != _base(best):
                    fs.delete_dir(info.path)
        except OSError:  # a bucket hiccup: what is left is pruned when the search ends
            pass
