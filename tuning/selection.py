"""Which trial wins, read off trials.csv's rows or the searcher's running figures: the two
phases' names, a configuration's key (two trials of one key are one run, seed for seed), the
leading configurations, and the winner rule (`choose`, `fastest_within`).

No Ray import: the search's stage and retention rank by it while running, the readers of a
finished experiment by the same rule.
"""
from __future__ import annotations

import json

import pandas as pd

from model.config import REPLICATE_KEY, family_of, seed_keys
from tuning.outcome import LATENCY, MEASURED

SEARCH, INTENSIFY = "search", "intensify"  # the two phases, as trials.csv and MLflow name them


def phase(config: dict) -> str:
    return INTENSIFY if config.get(REPLICATE_KEY, 0) else SEARCH


def config_key(config) -> str:
    """The hyperparameters of a trial (its params or a trials.csv row), as one comparable key:
    those its family reads (an rnn's: as before families)."""
    return json.dumps({k: _plain(config[k]) for k in seed_keys(family_of(config)) if k in config},
                      sort_keys=True)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def config_keys(trials: pd.DataFrame) -> list[str]:
    """`config_key` of each row of a trials.csv table."""
    return [config_key(row) for _, row in trials.iterrows()]


def leaders(params: dict, best: dict[str, float], top: int) -> list:
    """The `top` distinct configurations by best metric: `params[trial_id]` of each leader, in
    rank order. Trials with no figure in `best` are not ranked."""
    ranked = sorted((t for t in params if t in best), key=lambda t: -best[t])
    found, seen = [], set()
    for trial_id in ranked:
        key = config_key(params[trial_id])
        if key not in seen:  # the same hyperparameters twice are the same seed, the same run
            seen.add(key)
            found.append(params[trial_id])
    return found[:top]


def table_leaders(trials: pd.DataFrame, top: int) -> list[str]:
    """The config keys of the `top` distinct configurations of trials.csv rows by best val_f1
    (`leaders`' ranking, read off a table). Errored rows are not ranked, whatever they reported
    before the error (as `Intensify` drops an errored trial)."""
    measured = trials[trials["best_val_f1"].notna() & (trials["status"] != "error")]
    rows = {row["trial_id"]: row for _, row in measured.iterrows()}
    best = dict(zip(measured["trial_id"], measured["best_val_f1"].astype(float), strict=True))
    return [config_key(row) for row in leaders(rows, best, top)]


def search_leaders(trials: pd.DataFrame, top: int) -> list[str]:
    """The config keys of the configurations a `top` x S stage replicates, read off trials.csv's
    search rows (the same ranking `Intensify` makes while the search runs)."""
    return table_leaders(trials[trials["phase"] == SEARCH], top)


def _pool(done: pd.DataFrame, replicated: set) -> tuple[pd.DataFrame, str]:
    """The rows `choose` ranks and its rule: with a stage, the replicated configurations' measured
    runs; when none of those has one, the single-trial rule over the measured trials; without a
    stage, the single-trial rule over every trial with a figure."""
    if not replicated:
        return done, "best validation macro-F1 of a single trial (one seed per configuration)"
    measured = done[done["status"].isin(MEASURED)]  # not a run cut short (unfinished, budget)
    pool = measured[measured["config"].isin(replicated)]
    if not pool.empty:
        return pool, (f"mean validation macro-F1 over seeds: the search's top {len(replicated)} "
                      f"configurations, each run again with further seeds")
    if measured.empty:
        raise ValueError(f"no trial measured its seed (none finished or was cut by ASHA, the "
                         f"runs of the stage's {len(replicated)} configurations included)")
    return measured, (f"best validation macro-F1 of a single measured trial, since none of the "
                      f"stage's {len(replicated)} replicated configurations has a measured run "
                      f"(finished or cut by ASHA; theirs were cut short or errored)")


def choose(trials: pd.DataFrame) -> dict:
    """The winner among trials.csv's rows (results.trials_frame) and how it was chosen.

    With intensification trials: among the replicated configurations, the one with the best
    mean best_val_f1 over its measured seeds (MEASURED statuses: not a run the time budget or
    an interruption cut short; its search trial and its replicates, a seed counted once); the
    winning trial is that configuration's best seed; when no replicated configuration has a
    measured run, the measured trial with the best val_f1, the rule says so. Without: the trial
    with the best val_f1.
    Returns {rule, trial_id, mean_val_f1, std_val_f1, seeds: [{trial_id, phase, seed, val_f1,
    epoch}], candidates: [{rank, mean_val_f1, std_val_f1, n_seeds, trial_ids}]}. Errored trials
    are left out, whatever they reported before the error."""
    # (trials.csv is in the order the trials were created: a tie goes to the earlier trial)
    done = trials[trials["best_val_f1"].notna()]
    if done.empty:
        raise ValueError("no trial reported val_f1")
    done = done[done["status"] != "error"]  # never a leader (`table_leaders`), nor the winner
    if done.empty:
        raise ValueError("only errored trials reported val_f1 (an errored trial is never chosen)")
    done = done.assign(config=config_keys(done))
    # two trials of the same hyperparameters and seed are one run twice (TPE can suggest a
    # configuration again): one seed, measured by the longer of the two
    done = done.sort_values("best_val_f1", ascending=False, kind="stable").drop_duplicates(
        ["config", "seed"]).sort_index()
    # the configurations a stage ran again (an errored replicate's included: it measured no seed)
    replicated = set(config_keys(trials[trials["phase"] == INTENSIFY]))
    pool, rule = _pool(done, replicated)
    by_mean = pool["config"].isin(replicated).any()
    groups = []
    for key, group in pool.groupby("config", sort=False):
        f1 = group["best_val_f1"].astype(float)
        groups.append({"config": key, "rows": group.sort_values("best_val_f1", ascending=False),
                       "mean_val_f1": float(f1.mean()),
                       "std_val_f1": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0})
    # best mean first; a tie goes to the better best seed, then to the earlier trial
    groups.sort(key=lambda g: (-g["mean_val_f1"], -float(g["rows"]["best_val_f1"].iloc[0])))
    winner = groups[0]
    seeds = [{"trial_id": r["trial_id"], "phase": r["phase"], "seed": int(r["seed"]),
              "val_f1": float(r["best_val_f1"]), "epoch": int(r["best_epoch"])}
             for _, r in winner["rows"].iterrows()]
    return {
        "rule": rule, "trial_id": seeds[0]["trial_id"], "mean_val_f1": winner["mean_val_f1"],
        "std_val_f1": winner["std_val_f1"], "seeds": seeds,
        "candidates": [{"rank": i, "mean_val_f1": g["mean_val_f1"], "std_val_f1": g["std_val_f1"],
                        "n_seeds": len(g["rows"]), "trial_ids": list(g["rows"]["trial_id"])}
                       for i, g in enumerate(groups, 1)] if by_mean else [],
    }


def fastest_within(trials: pd.DataFrame, delta: float, best: dict | None = None) -> dict:
    """`evaluate_best --pick fastest-within DELTA`: among the search trials whose best val
    macro-F1 measured their seed (MEASURED), the one with the lowest single-sentence latency
    whose best val macro-F1 is within `delta` of the best's (`choose`'s winner: its mean over
    seeds when a stage ran); a tie goes to the higher val macro-F1, then the earlier trial. So
    the pick is on the F1/latency frontier (whose checkpoints a search keeps). Returns `choose`'s
    keys for that trial, and `pick`: {rule, within, reference_val_f1, best_trial_id,
    best_latency_ms, latency_ms, n_within}."""
    best = best or choose(trials)
    reference = best["mean_val_f1"]
    pool = trials[(trials["phase"] == SEARCH) & trials["status"].isin(MEASURED)
                  & trials["best_val_f1"].notna() & trials[LATENCY].notna()]
    close = pool[pool["best_val_f1"] >= reference - delta]
    if close.empty:
        raise ValueError(f"no search trial with a measured latency is within {delta} of the "
                         f"best val macro-F1 ({reference:.4f})")
    ranked = close.assign(order=range(len(close))).sort_values(
        [LATENCY, "best_val_f1", "order"], ascending=[True, False, True], kind="stable")
    row = ranked.iloc[0]
    best_row = trials[trials["trial_id"] == best["trial_id"]].iloc[0]
    return {
        "rule": (f"the fastest (single-sentence latency) of the {len(close)} search trials whose "
                 f"best validation macro-F1 is within {delta} of the best's ({reference:.4f})"),
        "trial_id": row["trial_id"], "mean_val_f1": float(row["best_val_f1"]), "std_val_f1": 0.0,
        "seeds": [{"trial_id": row["trial_id"], "phase": row["phase"], "seed": int(row["seed"]),
                   "val_f1": float(row["best_val_f1"]), "epoch": int(row["best_epoch"])}],
        "candidates": [],
        "pick": {"rule": "fastest-within", "within": delta, "reference_val_f1": reference,
                 "best_trial_id": best["trial_id"], "best_latency_ms": float(best_row[LATENCY]),
                 "latency_ms": float(row[LATENCY]), "n_within": len(close)},
    }
