"""What mattered: Optuna's fANOVA importance of each searched hyperparameter over a finished
experiment's search trials (report.md's table)."""
from __future__ import annotations

import pandas as pd

from model.config import FAMILY_KEY, family_keys, family_of
from tuning.selection import SEARCH


def hyperparameter_importance(trials: pd.DataFrame, space: dict) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched hyperparameter for the trials' best val_f1."""
    import optuna

    from tuning.space import to_optuna

    dists = to_optuna(space)
    # the search trials only: a replicate adds a seed, not a configuration
    done = trials[trials["best_val_f1"].notna() & (trials["phase"] == SEARCH)]
    if len(done) < 3 or not dists:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, row in done.iterrows():
        # a trial's own family's keys: across families, fANOVA ranks the keys they all have
        # (the family itself among them)
        reads = {FAMILY_KEY, *family_keys(family_of(row))}
        params = {k: (row[k].item() if hasattr(row[k], "item") else row[k])
                  for k in dists if k in reads}
        try:
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={k: dists[k] for k in params},
                value=float(row["best_val_f1"])))
        except ValueError:  # a value outside the (overridden) space: leave that trial out
            continue
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return {k: float(v) for k, v in optuna.importance.get_param_importances(
            study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError):  # too few distinct trials
        return {}
