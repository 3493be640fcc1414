"""Intensification: after the search phase, the top K configurations run again with S further
seeds each, and the winner is the configuration with the best *mean* validation macro-F1 over
its seeds (SMAC's rule: a challenger wins on more than one seed's luck; tuning/selection.py).

The extra runs are trials of the same experiment, suggested by the same searcher (`Intensify`
wraps OptunaSearch) once every search trial has ended, so they share its data, resources,
storage, TensorBoard, trials.csv and `--resume`. Each is its configuration's params plus
`replicate: r` (r = 1..S), which gives it its own seed (model/config.py, `trial_seed`). ASHA
leaves them alone (scheduler.py): they run every epoch, like the runs they are compared with.
"""
from __future__ import annotations

import copy

import pandas as pd
from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

from model.config import REPLICATE_KEY
from tuning.selection import INTENSIFY, config_keys, leaders, search_leaders


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
        self.best: dict[str, float] = {}    # search trial id -> its best metric so far (an
        #                                     errored trial's dropped: it measured nothing whole)
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
        # An errored trial (its retries spent) is never a leader, whatever it reported before
        # it crashed: the stage replicates measured configurations only (as `search_leaders`)
        if trial_id in self.params:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            if error:
                self.best.pop(trial_id, None)
            else:
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


def replicates(params: dict[str, dict], best: dict[str, float], top: int, seeds: int) -> list[dict]:
    """The replicate trials' params: the `top` leaders, `seeds` times each, in rounds (every
    leader's replicate 1, then every replicate 2, ...), so that a stage cut short leaves the
    leaders with equal numbers of seeds."""
    return [{**p, REPLICATE_KEY: r} for r in range(1, seeds + 1) for p in leaders(params, best, top)]


def expected_trials(trials: pd.DataFrame, options) -> int:
    """How many trials a finished search has: its samples, and a replicate per further seed of
    each leader (fewer leaders when the search had fewer distinct measured configurations),
    and the replicates an earlier stage (before an extension) ran of other configurations."""
    leading = set(search_leaders(trials, options.intensify_top))
    earlier = [k for k in config_keys(trials[trials["phase"] == INTENSIFY]) if k not in leading]
    return options.samples + len(leading) * options.intensify_seeds + len(earlier)
