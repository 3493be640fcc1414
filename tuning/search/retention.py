"""Which checkpoints a search keeps (`--keep-checkpoints`, default `leaders`).

Tune's own cap (`CheckpointConfig(num_to_keep=K)`) forces an experiment-state snapshot each time
a trial has written K checkpoints since the last (ray #31613: a snapshot, and a warning, per
epoch with K = 1), and deleting a checkpoint behind Tune's back could remove the one a stale
snapshot resumes a trial from after a kill -9. So, through the storage's filesystem (a folder or
a bucket alike):

While the search runs (`Retention`, a Tune callback): a trial that has ended (completed, cut,
errored) is pruned two experiment-state snapshots after it ended and once the state saved in
the storage (uploaded in the background, even to a local folder) says it ended, so that no
resume will want its latest. It then keeps its best-validation checkpoint if its configuration
is among the top `max(LEADERS, --intensify-top)` distinct ones of the trials ended so far (ties
at the edge kept), has been replicated by a stage, or is on the frontier of val macro-F1 and
latency of the search trials ended so far (what `evaluate_best --pick fastest-within` picks
from), and none otherwise; a kept trial that
falls out of that top later is emptied then. (A trial outside the top of the trials ended so
far is outside the top of all of them; a stage's leaders are in it.) Its best is Tune's own
record of its checkpoints (restored with the experiment), not the results this driver saw: a
trial resumed after a kill -9 may have had its best epoch before. Running trials keep every
epoch's. So the search holds the few running trials' checkpoints and about `LEADERS` others.

When the search ends (`prune`):

  leaders  a search that ended: the best-validation checkpoint of each trial of the top
           `LEADERS` distinct configurations by best val macro-F1 (and of any tied with the
           last of them, as while running) and of every replicated
           configuration (the winner, a stage's replicates, and what a later stage over the same
           trials could pick) and of the F1/latency frontier's trials, and no other. An interrupted search: unfinished trials keep all of theirs (a resume goes on
           from their latest); ended trials keep their best. evaluate_best reads the winner's;
           `--reseed`, the stage and `model.train --config` read configurations, not checkpoints.
  all      nothing is deleted.
"""
from __future__ import annotations

import math

import pyarrow.fs as pafs
from ray.tune import Callback

from model.config import REPLICATE_KEY
from tuning.outcome import LATENCY, MEASURED, METRIC, MODE, frontier, trial_status
from tuning.selection import config_key, config_keys, leaders

LEADERS = 5
CHECKPOINT_PREFIX = "checkpoint_"


def trim(fs, trial_folder: str, keep: str | None) -> tuple[int, int]:
    """Delete the checkpoint folders in a trial's folder (on the storage's filesystem) except
    `keep` (a path or a base name; None: delete them all). Deletes nothing if `keep` is not
    there: a trial that should keep a checkpoint is never left with none. Returns (kept,
    deleted)."""
    infos = fs.get_file_info(pafs.FileSelector(trial_folder, allow_not_found=True))
    found = [i for i in infos
             if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)]
    wanted = keep.rstrip("/").rsplit("/", 1)[-1] if keep is not None else None
    if wanted is not None and wanted not in {i.base_name for i in found}:
        return 0, 0
    for info in found:
        if info.base_name != wanted:
            fs.delete_dir(info.path)
    return int(wanted is not None), len(found) - int(wanted is not None)


def best_checkpoint_path(trial) -> str | None:
    """The trial's best-validation checkpoint as Tune records it (its checkpoint manager, which
    a resume restores with the experiment: epochs from before a kill -9 included), by the rule
    of `ExperimentAnalysis.get_best_checkpoint`, which evaluate_best reads: the highest val_f1,
    NaN left out, the first of equals."""
    scored = _scored(trial)
    sign = 1 if MODE == "max" else -1
    return max(scored, key=lambda s: sign * s[1])[0] if scored else None


def _scored(trial) -> list[tuple[str, float]]:
    """(path, val_f1) of each checkpoint Tune recorded for the trial, NaN left out."""
    scored = [(r.checkpoint.path, r.metrics.get(METRIC)) for r in
              trial.run_metadata.checkpoint_manager.best_checkpoint_results]
    return [(path, v) for path, v in scored if isinstance(v, int | float) and not math.isnan(v)]


def leading(params: dict, best: dict[str, float], top: int) -> set[str]:
    """The config keys of the `top` distinct configurations by best val_f1 and of any tied with
    the last of them (a tie at the edge is kept, whichever trial came first: the winner rule
    may break it either way once more trials end). The caller leaves errored trials out."""
    per_config: dict[str, float] = {}  # each configuration's best over its trials
    for trial_id, value in best.items():
        key = config_key(params[trial_id])
        per_config[key] = max(value, per_config.get(key, value))
    top_keys = {config_key(p) for p in leaders(params, best, top)}
    edge = min((per_config[k] for k in top_keys), default=math.inf)
    return {k for k, v in per_config.items() if v >= edge}


def kept_checkpoints(analysis, table) -> dict[str, str | None]:
    """trial id -> the one checkpoint path (on the storage's filesystem) an ended trial keeps,
    None for none; unfinished trials are not in it (they keep all)."""
    # (configurations compared as trials.csv has them: every hyperparameter, defaults filled
    # in; a trial's Tune config holds only the searched and fixed keys)
    table = table.assign(config=config_keys(table))
    measured = table[table["best_val_f1"].notna() & (table["status"] != "error")]
    # of both phases: a replicate is a leader's (an errored trial is none: selection.choose)
    keeping = leading({row["trial_id"]: row for _, row in measured.iterrows()},
                      dict(zip(measured["trial_id"], measured["best_val_f1"].astype(float),
                               strict=True)), LEADERS)
    # and every replicated configuration (the winner is one: after an extension, an earlier
    # stage's leader can win on its mean yet rank below 5 others by best single trial)
    keeping |= set(table.loc[table["phase"] == "intensify", "config"])
    # and the F1/latency frontier's: `evaluate_best --pick fastest-within` picks on it
    keeping |= set(table.loc[table["pareto"], "config"]) if "pareto" in table else set()
    interrupted = (table["status"] == "unfinished").any()
    rows = table.set_index("trial_id")
    keep = {}
    for trial in analysis.trials:
        if trial.trial_id not in rows.index or rows.at[trial.trial_id, "status"] == "unfinished":
            continue
        wanted = interrupted or rows.at[trial.trial_id, "config"] in keeping
        keep[trial.trial_id] = best_checkpoint_path(trial) if wanted else None
    return keep


def prune(storage, name: str, analysis, table) -> tuple[int, int]:
    """Delete what `kept_checkpoints` does not keep. Returns (checkpoints kept, deleted)."""
    kept = deleted = 0
    for trial_id, keep in kept_checkpoints(analysis, table).items():
        k, d = trim(storage.fs, storage.path(name, f"trial_{trial_id}"), keep)
        kept, deleted = kept + k, deleted + d
    return kept, deleted


def saved_as_ended(fs, experiment: str) -> set[str]:
    """The trials that the state a resume would restore (saved_state.py: the last whole save
    uploaded) has as TERMINATED or ERROR; none when it cannot be read yet."""
    import pickle

    from tuning.search.saved_state import saved_trials

    try:
        return {t["trial_id"] for t in saved_trials(fs, experiment)
                if t.get("status") in ("TERMINATED", "ERROR")}
    except (OSError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError):
        return set()  # (a bucket hiccup, a bundle replaced as it was read: the next save)


def best_value(trial) -> float | None:
    """The best val_f1 of the trial's checkpoints, as Tune records them."""
    return max((v for _, v in _scored(trial)), default=None)


class Retention(Callback):
    """Prunes the ended trials' checkpoints while the search runs (the module's docstring)."""

    def __init__(self, top: int = LEADERS):
        self.top = max(LEADERS, top)
        self._reset()

    def _reset(self) -> None:
        self.ended: dict[str, tuple[object, int]] = {}  # trial id -> (trial, snapshot it ended at)
        self.settled: dict[str, object] = {}  # ended, and saved as ended in the storage
        self.trimmed: set[str] = set()  # pruned to their best
        self.emptied: set[str] = set()  # pruned to none
        self.errored: set[str] = set()  # ended in an error
        self.trials: list = []  # every trial of the experiment (Tune's own list)
        self.snapshots = 0

    def setup(self, **info) -> None:
        self._reset()  # (a resumed search unpickles this callback with the last run's state)

    def on_trial_complete(self, iteration: int, trials, trial, **info) -> None:
        self.trials = trials
        self.ended.setdefault(trial.trial_id, (trial, self.snapshots))

    def on_trial_error(self, iteration: int, trials, trial, **info) -> None:
        self.trials = trials
        self.errored.add(trial.trial_id)
        self.ended.setdefault(trial.trial_id, (trial, self.snapshots))

    def _keeping(self) -> set[str]:
        """The configurations whose ended trials keep their best checkpoint for now."""
        ended = [t for t, _ in self.ended.values()] + list(self.settled.values())
        params = {t.trial_id: t.config for t in ended}
        # (an errored trial is no leader: the winner rule and the end's prune leave it out)
        best = {t.trial_id: v for t in ended
                if t.trial_id not in self.errored and (v := best_value(t)) is not None}
        top = leading(params, best, self.top)
        replicated = {config_key(t.config) for t in self.trials if t.config.get(REPLICATE_KEY, 0)}
        # and the F1/latency frontier's (evaluate_best --pick fastest-within picks on it)
        # (of the trials whose best measured their configuration, as trials.csv's `pareto`)
        speed = {t.trial_id: (t.last_result or {}).get(LATENCY) for t in ended
                 if not t.config.get(REPLICATE_KEY, 0) and t.trial_id not in self.errored
                 and trial_status("TERMINATED", t.last_result, t.config.get("epochs", 0))
                 in MEASURED}
        fast = frontier({t: (v, speed[t]) for t, v in best.items()
                         if isinstance(speed.get(t), int | float)})
        return top | replicated | {config_key(params[t]) for t in fast}

    def get_state(self) -> None:
        """Called as Tune saves the experiment state (into the driver's staging folder, which a
        background upload then copies to a bucket, skipping a round while the last one runs):
        the moment to prune the trials that ended before the previous save began, once the
        state saved in the storage itself, which a resume after kill -9 reads, says so."""
        self.snapshots += 1
        due = {t: trial for t, (trial, at) in self.ended.items() if at <= self.snapshots - 2}
        if due:
            storage = next(iter(due.values())).storage
            for trial_id in due.keys() & saved_as_ended(storage.storage_filesystem,
                                                        storage.experiment_fs_path):
                del self.ended[trial_id]
                self.settled[trial_id] = due[trial_id]
        if not self.settled:
            return
        keeping = self._keeping()
        for trial_id, trial in list(self.settled.items()):
            if config_key(trial.config) in keeping:
                if trial_id not in self.trimmed:
                    self._prune(trial, to_best=True)
                    self.trimmed.add(trial_id)
            elif trial_id not in self.emptied:  # (out of the top, now or since)
                self._prune(trial, to_best=False)
                self.emptied.add(trial_id)
        # (stateless: a resumed search prunes what is left when it ends)

    def _prune(self, trial, to_best: bool) -> None:
        # Tune's record, not the results this driver saw: a trial resumed after a kill may have
        # had its best epoch before it
        best = best_checkpoint_path(trial) if to_best else None
        if to_best and best is None:
            return
        try:
            trim(trial.storage.storage_filesystem, trial.storage.trial_fs_path, best)
        except OSError:  # a bucket hiccup: what is left is pruned when the search ends
            pass
