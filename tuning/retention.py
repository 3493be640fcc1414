"""Which checkpoints a search keeps once it ends (`--keep-checkpoints`, default `leaders`).

While a search runs, Tune keeps every epoch's checkpoint (10-25 MB each: weights and AdamW
state): a cap (`CheckpointConfig(num_to_keep=K)`) makes Tune force an experiment-state snapshot
each time a trial has written K checkpoints since the last (ray #31613), and deleting behind
Tune's back could remove the checkpoint a stale snapshot resumes from after a kill -9. When the
search ends, the driver prunes through the storage's filesystem (a folder or a bucket alike):

  leaders  a search that ended: the best-validation checkpoint of each trial of the top
           `LEADERS` distinct configurations by best val macro-F1 (the winner, a stage's
           replicates of them, and what a later stage over the same trials could pick), and no
           other. An interrupted search: unfinished trials keep all of theirs (a resume goes on
           from their latest); ended trials keep their best. evaluate_best reads the winner's;
           `--reseed`, the stage and `model.train --config` read configurations, not checkpoints.
  all      nothing is deleted.
"""
from __future__ import annotations

import pyarrow.fs as pafs

from tuning.intensify import config_key, config_keys
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
    measured = table[table["best_val_f1"].notna()]
    ranked = measured.assign(config=config_keys(measured)).sort_values(
        "best_val_f1", ascending=False, kind="stable")
    leaders = set(ranked["config"].drop_duplicates().head(LEADERS))
    ended = table[table["status"] != "unfinished"]
    interrupted = len(ended) < len(table)
    status = dict(zip(table["trial_id"], table["status"], strict=True))
    keep = {}
    for trial in analysis.trials:
        if status.get(trial.trial_id, "unfinished") == "unfinished":
            continue
        wanted = interrupted or config_key(trial.config) in leaders
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
