"""Intensification: after the search phase, the top K configurations run again with S further
seeds each, and the winner is the configuration with the best *mean* validation macro-F1 over
its seeds (SMAC's rule: a challenger wins on more than one seed's luck).

The extra runs are trials of the same experiment, suggested by the same searcher (`Intensify`
wraps OptunaSearch) once every search trial has ended, so they share its data, resources,
storage, TensorBoard, trials.csv and `--resume`. Each is its configuration's params plus
`replicate: r` (r = 1..S), which gives it its own seed (model/config.py, `trial_seed`). ASHA
leaves them alone: they run every epoch, like the runs they are compared with should.
"""
from __future__ import annotations

import copy
import json

import pandas as pd
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

from model.config import REPLICATE_KEY, family_of, seed_keys
from tuning.outcome import LATENCY, MEASURED

SEARCH, INTENSIFY = "search", "intensify"  # the two phases, as trials.csv and MLflow name them


def phase(config: dict) -> str:
    return INTENSIFY if config.get(REPLICATE_KEY, 0) else SEARCH


class Intensify(Searcher):
    """The search phase's searcher for `samples` trials, then `top` x `seeds` replicate trials.

    Wrapped like ConcurrencyLimiter (a `.searcher` attribute and get_state/set_state), so Tune
    saves and restores its state with the experiment's, and the limiter above it caps both
    phases."""

    def __init__(self, searcher: Searcher, samples: int, top: int, seeds: int):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.samples, self.top, self.seeds = samples, top, seeds
        self.params: dict[str, dict] = {}   # search trial id -> the params suggested for it
        self.best: dict[str, float] = {}    # search trial id -> its best metric so far
        self.ended: set[str] = set()        # search trials that ended (completed or errored)
        self.queue: list[dict] | None = None  # the replicates still to suggest, once known
        self.replicated: list[dict] = []      # the replicates suggested so far (every stage)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = _set_search_properties_backwards_compatible(
            self.searcher.set_search_properties, metric, mode, config, **spec)
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return ok

    def suggest(self, trial_id: str):
        if len(self.params) < self.samples:
            params = self.searcher.suggest(trial_id)
            if params not in (None, Searcher.FINISHED):
                self.params[trial_id] = params
            return params
        if self.queue is None:
            if not set(self.params) <= self.ended:
                return None  # the leaders are known only once every search trial has ended
            # (after an extension: the leaders an earlier stage replicated are not run again)
            self.queue = [r for r in replicates(self.params, self.best, self.top, self.seeds)
                          if r not in self.replicated]
        if not self.queue:
            return Searcher.FINISHED
        self.replicated.append(self.queue.pop(0))
        return self.replicated[-1]

    def extend(self, samples: int) -> None:
        """`samples` search trials instead (`--resume --samples`): the new ones, then a stage
        over all of them, which replicates the leaders no earlier stage did."""
        if samples > self.samples:
            self.samples, self.queue = samples, None

    def _rank(self, trial_id: str, result: dict | None) -> None:
        if result and isinstance(result.get(self.metric), int | float):
            value = result[self.metric] * (1 if self.mode == "max" else -1)
            self.best[trial_id] = max(value, self.best.get(trial_id, value))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.params:
            self.searcher.on_trial_result(trial_id, result)
            self._rank(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        # Tune hands the result at which a trial stops (an ASHA cut, max_t) to this call only,
        # never to on_trial_result: without it the leaders would be ranked on all but the last
        # epoch, and a trial stopped at its first result not at all
        if trial_id in self.params:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            self._rank(trial_id, result)
            self.ended.add(trial_id)

    def get_state(self) -> dict:
        state = self.__dict__.copy()
        del state["searcher"]
        return copy.deepcopy(state)

    def set_state(self, state: dict) -> None:
        if "replicated" not in state:  # (saved before stages could follow an extension)
            done = [r for r in replicates(state["params"], state["best"], state["top"],
                                          state["seeds"]) if r not in (state["queue"] or [])]
            state = {**state, "replicated": done if state["queue"] is not None else []}
        self.__dict__.update(copy.deepcopy(state))  # (not sharing the caller's lists)


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


def replicates(params: dict[str, dict], best: dict[str, float], top: int, seeds: int) -> list[dict]:
    """The replicate trials' params: the `top` leaders, `seeds` times each, in rounds (every
    leader's replicate 1, then every replicate 2, ...), so that a stage cut short leaves the
    leaders with equal numbers of seeds."""
    return [{**p, REPLICATE_KEY: r} for r in range(1, seeds + 1) for p in leaders(params, best, top)]


def table_leaders(trials: pd.DataFrame, top: int) -> list[str]:
    """The config keys of the `top` distinct configurations of trials.csv rows by best val_f1
    (`leaders`' ranking, read off a table)."""
    measured = trials[trials["best_val_f1"].notna()]
    rows = {row["trial_id"]: row for _, row in measured.iterrows()}
    best = dict(zip(measured["trial_id"], measured["best_val_f1"].astype(float), strict=True))
    return [config_key(row) for row in leaders(rows, best, top)]


def search_leaders(trials: pd.DataFrame, top: int) -> list[str]:
    """The config keys of the configurations a `top` x S stage replicates, read off trials.csv's
    search rows (the same ranking `Intensify` makes while the search runs)."""
    return table_leaders(trials[trials["phase"] == SEARCH], top)


class StagedASHA(ASHAScheduler):
    """ASHA for the search trials; the replicate trials run every epoch.

    Tune does not save a scheduler with the experiment: a resumed search gets the one built
    when the search started, with empty rungs, which cut no trial until they fill again. So
    the rungs are refilled, at the first result, from the per-epoch values of `searcher`
    (tuning.searcher.EpochOptunaSearch, restored with the experiment; the same object, since
    Tune pickles searcher and scheduler together)."""

    searcher = None  # (a scheduler unpickled from before the refill has neither attribute)
    _refilled = False

    def __init__(self, *args, searcher=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.searcher = searcher

    def _refill(self) -> None:
        self._refilled = True
        values = getattr(self.searcher, "values", None) or {}
        for bracket in self._brackets:
            for milestone, recorded in bracket._rungs:  # (ASHA's own bookkeeping)
                for trial_id, curve in values.items():
                    if milestone in curve:  # (what ASHA recorded: the value at that epoch)
                        recorded.setdefault(trial_id, self._metric_op * curve[milestone])

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not self._refilled:
            self._refill()
        if phase(trial.config) == INTENSIFY:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if phase(trial.config) == INTENSIFY:
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)


def choose(trials: pd.DataFrame) -> dict:
    """The winner among trials.csv's rows (results.trials_frame) and how it was chosen.

    With intensification trials: among the replicated configurations, the one with the best
    mean best_val_f1 over its measured seeds (MEASURED statuses: not a run the time budget or
    an interruption cut short; its search trial and its replicates, a seed counted once); the
    winning trial is that configuration's best seed. Without: the trial with the best val_f1.
    Returns {rule, trial_id, mean_val_f1, std_val_f1, seeds: [{trial_id, phase, seed, val_f1,
    epoch}], candidates: [{rank, mean_val_f1, std_val_f1, n_seeds, trial_ids}]}."""
    # (trials.csv is in the order the trials were created: a tie goes to the earlier trial)
    done = trials[trials["best_val_f1"].notna()]
    if done.empty:
        raise ValueError("no trial reported val_f1")
    done = done.assign(config=config_keys(done))
    # two trials of the same hyperparameters and seed are one run twice (TPE can suggest a
    # configuration again): one seed, measured by the longer of the two
    done = done.sort_values("best_val_f1", ascending=False, kind="stable").drop_duplicates(
        ["config", "seed"]).sort_index()
    replicated = set(done.loc[done["phase"] == INTENSIFY, "config"])
    if replicated:  # a replicate cut short (unfinished, error) does not measure its seed
        pool = done[done["config"].isin(replicated) & done["status"].isin(MEASURED)]
        rule = (f"mean validation macro-F1 over seeds: the search's top {len(replicated)} "
                f"configurations, each run again with further seeds")
    else:
        pool = done
        rule = "best validation macro-F1 of a single trial (one seed per configuration)"
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
                       for i, g in enumerate(groups, 1)] if replicated else [],
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


def stage_trials(opts: dict) -> int:
    """How many intensification trials a search's options ask for (0: the stage is off)."""
    return opts.get("intensify_top", 0) * opts.get("intensify_seeds", 0)


def expected_trials(trials: pd.DataFrame, opts: dict) -> int:
    """How many trials a finished search has: its samples, and a replicate per further seed of
    each leader (fewer leaders when the search had fewer distinct measured configurations),
    and the replicates an earlier stage (before an extension) ran of other configurations."""
    top, seeds = opts.get("intensify_top", 0), opts.get("intensify_seeds", 0)
    leading = set(search_leaders(trials, top))
    earlier = [k for k in config_keys(trials[trials["phase"] == INTENSIFY]) if k not in leading]
    return opts["samples"] + len(leading) * seeds + len(earlier)
