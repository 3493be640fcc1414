"""What a trial measured and what became of it: the metric the search maximises, and one status
per trial that trials.csv, the Optuna study, MLflow and the selection rule all read the same way.

No Ray import and no project import beyond this: every other module of `tuning` can use it.
"""
from __future__ import annotations

from collections.abc import Mapping

METRIC, MODE = "val_f1", "max"
# A trial's status:
#   completed       ran its max epochs
#   early_stopped   its own patience stopped it (it measured its best)
#   diverged        its training loss became NaN (it ends with val_f1 0)
#   asha_stopped    ASHA cut it at a rung (a truncated run: its best is a lower bound)
#   budget_stopped  --time-budget-s ended the search while it ran (truncated too)
#   error           it crashed more often than the retries allow
#   unfinished      the search was interrupted while it ran or waited (a resume goes on)
#   no_result       it ended before its first epoch
FINISHED = ("completed", "early_stopped", "diverged")  # a full measurement of its seed
# statuses whose best val_f1 measures its seed (a diverged run counts, at 0: that seed failed);
# a run ASHA cut counts too (it was measured up to where it was no longer in the running), a run
# the time budget cut does not
MEASURED = (*FINISHED, "asha_stopped")


def trial_status(ray_status: str, last: Mapping | None, max_epochs: int) -> str:
    """What became of a trial, from Ray's status and its last logged result.

    Tune marks the result at which a scheduler stops a trial `done` (ASHA's cut, or max_t);
    the time budget stops running trials without a result, so their last one is not `done`."""
    if ray_status == "ERROR":
        return "error"
    if ray_status != "TERMINATED":
        return "unfinished"
    if last is None:
        return "no_result"
    own = last.get("status")
    if own in FINISHED:
        return own  # ran to max epochs / stopped by its own patience / its loss became NaN
    if last.get("epoch") is None:  # (Tune's own end-of-trial result carries no epoch)
        return "no_result"
    if int(last["epoch"]) >= max_epochs:
        return "completed"
    return "asha_stopped" if _true(last.get("done")) else "budget_stopped"


def _true(value) -> bool:
    """`done` as Tune logged it: a bool in a result, a bool or 'True' read back from a CSV."""
    return value is True or str(value).strip().lower() == "true" or value == 1


LATENCY = "latency_ms"  # a trial's single-sentence CPU latency (model/speed.py): lower is better


def frontier(points: Mapping) -> set:
    """The keys of `points` ({key: (val macro-F1, latency)}) on the Pareto frontier: no other
    point is at least as good in both and better in one (of equal points, all are on it)."""
    return {k for k, (f1, ms) in points.items()
            if not any(f >= f1 and m <= ms and (f > f1 or m < ms) for f, m in points.values())}
