"""Read a finished (or interrupted) experiment back: one row per trial, and the best trial."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from ray.tune import ExperimentAnalysis

from dataprep.schema import DataError
from model.train import DEFAULTS, HYPERPARAMETERS

METRIC, MODE = "val_f1", "max"
# trials.csv's columns of configuration: every hyperparameter, and the epochs a trial could run
CONFIG_COLUMNS = [*HYPERPARAMETERS, "epochs"]


def load_experiment(exp_dir: Path) -> ExperimentAnalysis:
    if not exp_dir.is_dir() or not list(exp_dir.glob("experiment_state-*.json")):
        raise DataError(f"{exp_dir}: not a Ray Tune experiment (no experiment_state-*.json)")
    try:
        return ExperimentAnalysis(str(exp_dir.resolve()), default_metric=METRIC, default_mode=MODE)
    except Exception as e:  # noqa: BLE001 - a corrupt state file
        raise DataError(f"{exp_dir}: cannot read the experiment ({type(e).__name__}: {e})") from None


def _status(trial, history: pd.DataFrame | None, max_epochs: int) -> str:
    if trial.status == "ERROR":
        return "error"
    if trial.status != "TERMINATED":
        return "unfinished"
    last = history.iloc[-1] if history is not None and len(history) else None
    if last is None:
        return "no_result"
    own = last.get("status")
    if own in ("completed", "early_stopped", "diverged"):
        return own  # ran to max epochs / stopped by its own patience / its loss became NaN
    return "asha_stopped" if int(last["epoch"]) < max_epochs else "completed"


def trials_frame(analysis: ExperimentAnalysis) -> pd.DataFrame:
    """trial id, status, every hyperparameter, best and last val_f1, epochs run, time."""
    frames = analysis.trial_dataframes
    rows = []
    for trial in analysis.trials:
        history = frames.get(trial.trial_id)
        has = history is not None and len(history) and METRIC in history
        cfg = trial.config
        row = {"trial_id": trial.trial_id,
               "status": _status(trial, history if has else None, cfg.get("epochs", 0))}
        row.update({k: cfg.get(k, DEFAULTS[k]) for k in CONFIG_COLUMNS})
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
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(analysis: ExperimentAnalysis):
    """The trial with the highest val_f1 over all its epochs, and that trial's best checkpoint."""
    trial = analysis.get_best_trial(METRIC, MODE, scope="all")
    if trial is None:
        raise DataError(f"{analysis.experiment_path}: no trial reported {METRIC}")
    checkpoint = analysis.get_best_checkpoint(trial, METRIC, MODE)
    if checkpoint is None:
        raise DataError(f"{analysis.experiment_path}: best trial {trial.trial_id} kept no checkpoint")
    return trial, checkpoint
