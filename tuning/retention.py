"""Which checkpoints a search keeps (`--keep-checkpoints`, default `leaders`).

Tune's own cap (`CheckpointConfig(num_to_keep=K)`) forces an experiment-state snapshot each time
a trial has written K checkpoints since the last (ray #31613: a snapshot, and a warning, per
epoch with K = 1), and deleting a checkpoint behind Tune's back could remove the one a stale
snapshot resumes a trial from after a kill -9. So, through the storage's filesystem (a folder or
a bucket alike):

While the search runs (`Retention`, a Tune callback): a trial that has ended (completed, cut,
errored) keeps only its best-validation checkpoint, pruned two experiment-state snapshots after
it ended, when every saved state already says it ended (no resume will want its latest).
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
        best = analysis.get_best_checkpoint(trial, METRIC, MODE) if wanted else None
        keep[trial.trial_id] = best.path if best is not None else None
    return keep


def prune(storage, name: str, analysis, table) -> tuple[int, int]:
    """Delete what `kept_checkpoints` does not keep. Returns (checkpoints kept, deleted)."""
    kept = deleted = 0
    for trial_id, keep in kept_checkpoints(analysis, table).items():
        for path in _checkpoint_dirs(storage, name, trial_id):
            if path.rstrip("/") == (keep or "").rstrip("/"):
                kept += 1
                continue
            storage.fs.delete_dir(path)
            deleted += 1
    return kept, deleted


class Retention(Callback):
    """Prunes each ended trial to its best-validation checkpoint while the search runs."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.best: dict[str, tuple[float, str]] = {}  # trial id -> (best val_f1, its checkpoint)
        self.ended: dict[str, tuple[object, int]] = {}  # trial id -> (trial, snapshot it ended at)
        self.snapshots = 0

    def setup(self, **info) -> None:
        self._reset()  # (a resumed search unpickles this callback with the last run's state)

    def on_trial_result(self, iteration: int, trials, trial, result: dict, **info) -> None:
        value, folder = result.get(METRIC), result.get("checkpoint_dir_name")
        best = self.best.get(trial.trial_id)
        if isinstance(value, int | float) and folder and (best is None or value > best[0]):
            self.best[trial.trial_id] = (float(value), folder)

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
        best = self.best.pop(trial.trial_id, (None, None))[1]
        try:
            fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
            for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                if (info.type == pafs.FileType.Directory and info.base_name != best
                        and info.base_name.startswith(CHECKPOINT_PREFIX)):
                    fs.delete_dir(info.path)
        except OSError:  # a bucket hiccup: what is left is pruned when the search ends
            pass
