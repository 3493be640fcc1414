"""ASHA for the search trials, refilled after a resume; the stage's replicates run every epoch."""
from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tuning.selection import INTENSIFY, phase


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
        """Each trial's per-epoch values, in epoch order, through ASHA's own bookkeeping
        (`_Bracket.on_result`, its decisions ignored): a trial is recorded, once per rung, at
        the highest milestone its result reached that does not hold it yet, with the metric
        times its sign. So the rungs hold what ASHA recorded as the results came: at a milestone
        that is no epoch (2.5, 6.25 with `--reduction-factor 2.5`), the first epoch past it.
        (Exact while no two milestones lie between two consecutive epochs: with grace 1, any
        reduction factor of 1.5 or more. Else ASHA records a trial at a lower milestone once
        more each time Tune hands it the trial's last result again, which nothing saves.)"""
        self._refilled = True
        values = getattr(self.searcher, "values", None) or {}
        for trial_id, curve in values.items():
            trial = SimpleNamespace(trial_id=trial_id)
            for bracket in self._brackets:
                for epoch in sorted(curve):
                    bracket.on_result(trial, epoch, self._metric_op * curve[epoch])

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if not self._refilled:
            self._refill()
        if phase(trial.config) == INTENSIFY:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if not self._refilled:  # (a trial restored at its end may complete with no new result)
            self._refill()
        if phase(trial.config) == INTENSIFY:
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)
