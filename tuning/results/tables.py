"""Read a finished (or interrupted) experiment back: one row per trial, the best trial, the
search's reports (trials.csv, best_config.json), and what mattered (hyperparameter importance)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from ray.tune import ExperimentAnalysis

from model.config import (
    FAMILIES,
    FAMILY_KEY,
    HYPERPARAMETERS,
    REPLICATE_KEY,
    family_defaults,
    family_keys,
    family_of,
    from_trial_params,
)
from model.speed import FIGURES
from plumbing.errors import DataError
from plumbing.files import write_text
from tuning.outcome import LATENCY, MEASURED, METRIC, MODE, frontier, trial_status
from tuning.selection import SEARCH, choose, fastest_within, phase
from tuning.storage import Storage

# trials.csv's columns of configuration: every hyperparameter (a trial's row fills those its
# family reads; the others are empty), and the epochs a trial could run
CONFIG_COLUMNS = [*HYPERPARAMETERS, "epochs"]
_DEFAULTS = {k: v for f in reversed(FAMILIES) for k, v in family_defaults(f).items()}
INT_COLUMNS = [k for k in CONFIG_COLUMNS if type(_DEFAULTS[k]) is int]  # (stay int when empty)


def load_experiment(storage: Storage, name: str) -> ExperimentAnalysis:
    """The experiment `name` where it lives (a folder or a bucket: read through its filesystem)."""
    where = storage.uri(name)
    if not storage.is_experiment(name):
        raise DataError(f"{where}: not a Ray Tune experiment (no experiment_state-*.json)")
    try:
        return ExperimentAnalysis(storage.path(name), default_metric=METRIC, default_mode=MODE,
                                  storage_filesystem=storage.fs)
    except Exception as e:  # noqa: BLE001 - a corrupt state file
        raise DataError(f"{where}: cannot read the experiment ({type(e).__name__}: {e})") from None


def trials_frame(analysis: ExperimentAnalysis) -> pd.DataFrame:
    """trial id, status, phase (search or intensify) and replicate, every hyperparameter (its
    family's), seed, best and last val_f1, epochs run, time, failures, size and speed
    (model/speed.py), mean epoch time, and whether it is on the Pareto frontier of val macro-F1
    and latency (`pareto`)."""
    frames = analysis.trial_dataframes
    rows = []
    # in the order the trials were created (Tune's tag starts with its counter), not in Tune's
    # own order, which a resume changes: ties in the selection go to the earlier trial
    for trial in sorted(analysis.trials, key=_created):
        history = frames.get(trial.trial_id)
        has = history is not None and len(history) and METRIC in history
        cfg = trial.config
        last = history.iloc[-1] if has else None
        row = {"trial_id": trial.trial_id,
               "status": trial_status(trial.status, last, cfg.get("epochs", 0)),
               "phase": phase(cfg), "replicate": cfg.get(REPLICATE_KEY, 0)}
        family = family_of(cfg)
        defaults, reads = family_defaults(family), {FAMILY_KEY, "epochs", *family_keys(family)}
        row.update({k: cfg.get(k, defaults[k]) if k in reads else None for k in CONFIG_COLUMNS})
        row["seed"] = int(history["seed"].iloc[-1]) if has and "seed" in history else None
        if has:
            best = history[METRIC].idxmax()
            row.update(best_val_f1=float(history[METRIC].max()),
                       best_epoch=int(history["epoch"][best]),
                       last_val_f1=float(history[METRIC].iloc[-1]),
                       epochs_run=int(history["epoch"].iloc[-1]),
                       time_s=round(float(history["time_total_s"].iloc[-1]), 2))
        else:
            row.update(best_val_f1=math.nan, best_epoch=None, last_val_f1=math.nan, epochs_run=0,
                       time_s=0.0)
        row["failures"] = int(trial.run_metadata.num_failures)  # crashes Tune retried (or not)
        for key in FIGURES:  # what the trial measured of its network (model/speed.py)
            measured = history[key].dropna() if has and key in history else ()
            row[key] = float(measured.iloc[-1]) if len(measured) else math.nan
        # what it trained in, and what its latency was measured in (the precision it is
        # served in on a CPU: model/precision.py on_this_cpu); fp32 before precisions
        row["precision"] = cfg.get("precision", "fp32")
        served = history.get("latency_precision") if has else None
        served = served.dropna() if served is not None else ()
        measured_before = "fp32" if not math.isnan(row["latency_ms"]) else None
        row["latency_precision"] = str(served.iloc[-1]) if len(served) else measured_before
        epochs = history["epoch_s"].dropna() if has and "epoch_s" in history else ()
        row["epoch_s"] = round(float(epochs.mean()), 3) if len(epochs) else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for key in [*INT_COLUMNS, "params"]:  # (an int column with empty cells stays int)
        table[key] = table[key].astype("Int64")
    table["pareto"] = pareto(table)
    return table


def pareto(trials: pd.DataFrame) -> pd.Series:
    """Whether each search trial is on the frontier of best val macro-F1 (higher) and latency
    (lower): no other search trial is at least as good in both and better in one. Trials whose
    best measured their seed (MEASURED: not one the time budget cut), as `fastest_within`."""
    ok = ((trials["phase"] == SEARCH) & trials["status"].isin(MEASURED)
          & trials["best_val_f1"].notna() & trials[LATENCY].notna())
    on = frontier({i: (trials.at[i, "best_val_f1"], trials.at[i, LATENCY])
                   for i in trials.index[ok]})
    return pd.Series([i in on for i in trials.index], index=trials.index)


def _created(trial) -> int:
    number = str(trial.experiment_tag).split("_", 1)[0]
    return int(number) if number.isdigit() else 0


def winner(analysis: ExperimentAnalysis, trials: pd.DataFrame, within: float | None = None):
    """The winning trial (tuning.intensify.choose: the best mean over seeds when the leaders
    were replicated, else the best single trial; with `within`, `fastest_within` that many of
    it), its best-val_f1 checkpoint, and the choice."""
    try:
        choice = choose(trials)
    except ValueError as e:
        raise DataError(f"{analysis.experiment_path}: {e}") from None
    if within is not None:
        try:
            choice = fastest_within(trials, within, choice)
        except ValueError as e:
            raise DataError(f"{analysis.experiment_path}: {e}") from None
    trial = next(t for t in analysis.trials if t.trial_id == choice["trial_id"])
    checkpoint = analysis.get_best_checkpoint(trial, METRIC, MODE)
    if checkpoint is None:
        raise DataError(f"{analysis.experiment_path}: best trial {trial.trial_id} kept no checkpoint")
    return trial, checkpoint, choice


def write_reports(analysis: ExperimentAnalysis, out_dir: Path) -> tuple[pd.DataFrame, dict | None]:
    """trials.csv and best_config.json of an experiment, into `out_dir`; returns the trials and
    best_config.json's content (None: no trial but errored ones finished an epoch)."""
    table = trials_frame(analysis)
    write_text(out_dir / "trials.csv", table.to_csv(index=False))
    best = None
    if ((table["epochs_run"] > 0) & (table["status"] != "error")).any():
        trial, _, choice = winner(analysis, table)
        row = table[table["trial_id"] == trial.trial_id].iloc[0]
        # "config" is what the winner trained with, its seed included: `python -m model.train
        # --config best_config.json` retrains it to the same numbers. "selection": how it won
        # (the rule, its seeds' mean, std and each seed's figure, the other candidates)
        best = {"trial_id": trial.trial_id, "val_f1": float(row["best_val_f1"]),
                "epoch": int(row["best_epoch"]), "seed": int(row["seed"]),
                "config": from_trial_params(trial.config), "selection": choice}
        write_text(out_dir / "best_config.json", json.dumps(best, indent=2, sort_keys=True) + "\n")
    return table, best
