"""--warm-start: another finished experiment's search trials, for a new search's searcher to
learn from before its first suggestion (EpochOptunaSearch adds them to its study once)."""
from __future__ import annotations

import pandas as pd
from optuna.trial import TrialState

from model.config import FAMILY_KEY, family_keys, family_of
from plumbing.errors import UsageError
from tuning.options import SearchOptions, read_options
from tuning.outcome import METRIC
from tuning.search.searcher import STATES
from tuning.selection import SEARCH


def check_comparable(source: str, theirs: SearchOptions, mine: SearchOptions) -> None:
    """A UsageError, naming what differs, unless the other experiment searched the same space
    with the same max epochs, training rows and objectives (its figures would not compare)."""
    from tuning.space import differing_keys, stored_space

    differ = differing_keys(stored_space(mine.space), stored_space(theirs.space))
    if differ:
        raise UsageError(f"--warm-start {source}: its search space differs in {', '.join(differ)}")
    for key, flag in (("max_epochs", "--max-epochs"), ("subset", "--subset")):
        if getattr(theirs, key) != getattr(mine, key):
            raise UsageError(f"--warm-start {source}: it ran with {flag} {getattr(theirs, key)}, "
                             f"this search with {getattr(mine, key)}; their figures would not "
                             f"compare")
    if theirs.objectives != mine.objectives:
        raise UsageError(f"--warm-start {source}: it searched --objectives "
                         f"{','.join(theirs.objectives)}, this search {','.join(mine.objectives)}")


def warm_trials(storage, name: str, mine: SearchOptions) -> list[dict]:
    """The search trials of experiment `name` (in `storage`): each ended trial's params, state
    (as `EpochOptunaSearch` told it), value and per-epoch val_f1."""

    from plumbing.errors import DataError
    from tuning.results.tables import load_experiment, trials_frame

    source = storage.uri(name)
    try:
        theirs = read_options(storage, name)
    except DataError as e:
        raise UsageError(f"--warm-start {source}: {e}") from None
    check_comparable(source, theirs, mine)
    analysis = load_experiment(storage, name)
    frames, table = analysis.trial_dataframes, trials_frame(analysis)
    searched = [k for k, v in mine.space.items() if isinstance(v, dict)]
    warm = []
    for _, row in table[table["phase"] == SEARCH].iterrows():
        state = STATES.get(row["status"])
        if state not in (TrialState.COMPLETE, TrialState.PRUNED) or not row["epochs_run"]:
            continue
        history = frames[row["trial_id"]]
        curve = {int(e): float(v) for e, v in zip(history["epoch"], history[METRIC], strict=True)}
        keys = {FAMILY_KEY, *family_keys(family_of(row))}  # (the others' columns are empty)
        value = float(row["best_val_f1"]) if state == TrialState.COMPLETE else curve[max(curve)]
        if len(mine.objectives) > 1:
            if state == TrialState.COMPLETE and pd.isna(row.get("latency_ms")):
                continue  # (no latency measured: nothing to tell)
            value = [value, float(row["latency_ms"])] if state == TrialState.COMPLETE else None
        warm.append({
            "trial_id": row["trial_id"], "source": source, "state": state.name,
            "params": {k: (row[k].item() if hasattr(row[k], "item") else row[k])
                       for k in searched if k in keys},
            "value": value, "intermediate_values": curve})
    return warm
