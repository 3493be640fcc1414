"""OptunaSearch told what each trial really measured.

Ray's OptunaSearch reports `training_iteration` steps and, when a trial ends, tells Optuna the
trial COMPLETE with the value of its *last* result, whatever ended it. With ASHA that is wrong
twice: a trial cut at the first rung is told as a finished run with its epoch-1 figure, side by
side with full runs (TPE then learns that slow starters are bad configurations), and a finished
trial is told its last epoch while the harness picks by its best. Tune also never hands the
result at which a trial stops to `on_trial_result` ("Only updating search alg if the trial is
not to be stopped", tune_controller.py): it arrives only in `on_trial_complete(result=...)`.

So here, as trials.csv says (tuning/outcome.py, `trial_status`):
  every epoch's val_f1 is an intermediate value at step = epoch, the stopping one included;
  completed / early_stopped / diverged: COMPLETE, value = the best val_f1 over its epochs;
  asha_stopped: PRUNED with its intermediate values (Optuna's TPE ranks pruned trials by the step
    they reached, then by their value there; the study's value is the last intermediate one);
  error: FAIL.
A trial the time budget stopped is never told by Tune; `settle_study` tells a stored study after
the search (PRUNED), and fails the trials a kill -9 left behind. A resume after kill -9 may rerun
a trial that a stored study already holds finished: it is not told twice. Each Optuna trial carries its Tune trial id as the user attribute
`trial_id`, so the study and trials.csv can be laid side by side.

Its space is tuning/space.py's `ConditionalSpace` (define-by-run: a trial holds its family's
keys only). With several objectives (`--objectives f1,latency`) Optuna takes no intermediate
values: a finished trial is told [its best val_f1, the last finite latency_ms it reported], a
cut one PRUNED.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import math

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import validate_warmstart

from tuning.outcome import METRIC, trial_status

logger = logging.getLogger(__name__)
TRIAL_ID_ATTR = "trial_id"
SEARCH_ID_ATTR = "search_id"
WARM_ATTR = "warm_start"  # on a trial learnt from another experiment: that experiment
NAMING_S = 10  # a trial asked for and still unnamed this long after: its suggestion was cut
SET_UP_ATTR = "set_up"  # on the study, per search id: its points and warm trials are in it
STATES = {"completed": TrialState.COMPLETE, "early_stopped": TrialState.COMPLETE,
          "diverged": TrialState.COMPLETE, "asha_stopped": TrialState.PRUNED,
          "budget_stopped": TrialState.PRUNED, "error": TrialState.FAIL}


class EpochOptunaSearch(OptunaSearch):
    """OptunaSearch (single objective, a dict space) with per-epoch intermediate values and a
    trial's outcome told as its state (see the module's docstring)."""

    def __init__(self, *args, max_epochs: int, warm: list[dict] | None = None,
                 search_id: str | None = None, **kwargs):
        # (set before OptunaSearch's __init__, which sets the study up when given a space)
        self.max_epochs = max_epochs
        self.warm = warm or []  # another experiment's trials to learn from first (--warm-start)
        self.search_id = search_id  # on each trial: a study shared by namesakes tells them apart
        self.values: dict[str, dict[int, float]] = {}  # trial id -> {epoch: val_f1} reported
        self.others: dict[str, list] = {}  # trial id -> its last figures of the other objectives
        # The define-by-run space is taken up when Tune sets the search properties, not here:
        # given to OptunaSearch's __init__ it would build the study at once, and Tune pickles
        # the searcher, study and all, into tuner.pkl, which a resume rewrites, a window a
        # kill -9 can leave it empty in (the searcher's own state is saved with the experiment)
        self.conditional_space = kwargs.pop("space", None)
        super().__init__(*args, **kwargs)

    def set_search_properties(self, metric, mode, config: dict, **spec) -> bool:
        if self._space or self.conditional_space is None:  # (restored; or Tune's dict space)
            return super().set_search_properties(metric, mode, config, **spec)
        self._space = self.conditional_space
        self._setup_study(self._mode)
        return True

    @property
    def multi(self) -> bool:
        return isinstance(self._metric, list)

    def _setup_study(self, mode) -> None:
        """The study, then, once per experiment, its points to evaluate and the warm-start
        trials, as they ended there (before any suggestion: Tune sets the search properties
        first). Tune sets them again on every resume, before it restores this searcher's state
        (`tune.py`), and a stored study (--optuna-storage) is the same database then: Ray's
        OptunaSearch would enqueue the points again (`enqueue_trial(skip_if_exists=False)`)
        and the warm trials would be added twice. So the study records that it was set up."""
        points, self._points_to_evaluate = self._points_to_evaluate, None
        try:
            super()._setup_study(mode)  # (created or loaded; nothing enqueued)
        finally:
            self._points_to_evaluate = points
        marker = f"{SET_UP_ATTR}:{getattr(self, 'search_id', None) or self._study_name}"
        if self._ot_study.user_attrs.get(marker):
            return  # a resume or an extension of a stored study: all is in it already
        if points:
            validate_warmstart(self._space, points, None,
                              validate_point_name_lengths=not callable(self._space))
            for point in points:
                # (skip_if_exists: a kill between these and the marker enqueued them already)
                self._ot_study.enqueue_trial(point, skip_if_exists=True)
        self._add_warm_trials()
        self._ot_study.set_user_attr(marker, True)

    def _add_warm_trials(self) -> None:
        import optuna

        from tuning.space import distributions

        space = getattr(self._space, "space", self._space)  # (ConditionalSpace's dict)
        multi = self.multi
        there = {t.user_attrs.get(TRIAL_ID_ATTR) for t in self._ot_study.get_trials(deepcopy=False)
                 if WARM_ATTR in t.user_attrs}  # (a kill before the marker added some)
        for w in (w for w in self.warm if w["trial_id"] not in there):
            self._ot_study.add_trial(optuna.trial.create_trial(
                state=TrialState[w["state"]], params=w["params"],
                distributions=distributions(space, w["params"]),
                value=None if multi else w["value"], values=w["value"] if multi else None,
                intermediate_values=({} if multi else
                                     {int(e): v for e, v in w["intermediate_values"].items()}),
                user_attrs={TRIAL_ID_ATTR: w["trial_id"], WARM_ATTR: w["source"]}))

    def suggest(self, trial_id: str):
        if self._space and self._metric and self._mode and trial_id not in self._ot_trials:
            # asked for and named at once, then sampled (OptunaSearch.suggest samples the trial
            # it finds here): a kill -9 while sampling (TPE over a large study takes seconds)
            # leaves a named trial, which the next settle_study ends; unnamed, only for a write.
            # (A dict space, not the harness's, is sampled inside `ask`, before the name.)
            asked = self._ot_study.ask(None if callable(self._space) else self._space)
            asked.set_user_attr(TRIAL_ID_ATTR, trial_id)
            if getattr(self, "search_id", None):  # (a searcher pickled before search ids: none)
                asked.set_user_attr(SEARCH_ID_ATTR, self.search_id)
            self._ot_trials[trial_id] = asked
        return super().suggest(trial_id)

    def _report(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(METRIC), result.get("epoch")
        seen = self.values.setdefault(trial_id, {})
        if self.multi:
            # the last finite figures heard: a NaN result (a diverged epoch's) unmeasures nothing
            heard = [result.get(m) for m in self._metric[1:]]
            last = self.others.get(trial_id) or [None] * len(heard)
            self.others[trial_id] = [old if _finite(old) and not _finite(new) else new
                                     for new, old in zip(heard, last, strict=True)]
        if isinstance(value, int | float) and epoch is not None and int(epoch) not in seen:
            seen[int(epoch)] = float(value)  # an epoch replayed after a resume is reported once
            if self.multi:
                return  # (Optuna keeps no intermediate values of a multi-objective trial)
            try:
                self._ot_trials[trial_id].report(float(value), int(epoch))
            except UpdateFinishedTrialError:
                # a stored study (--optuna-storage) already holds this trial finished: it ended
                # after the experiment state this resume started from (kill -9), and its rerun
                # from a checkpoint repeats the same numbers
                pass

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self._ot_trials or trial_id in self._completed_trials:
            return
        if result:
            self._report(trial_id, result)
        # Tune's own stop of a trial it never ran to a result (a pending trial at the end): no
        # result and no error, which Ray's OptunaSearch tells as PRUNED too
        status = "error" if error else trial_status("TERMINATED", result, self.max_epochs)
        self._tell(trial_id, STATES.get(status, TrialState.PRUNED))

    def _tell(self, trial_id: str, state: TrialState) -> None:
        values = self.values.get(trial_id, {})
        if state == TrialState.COMPLETE and not values:
            state = TrialState.FAIL  # finished with no figure to tell: nothing to learn from
        value = max(values.values()) if state == TrialState.COMPLETE else None
        if self.multi and value is not None:
            value = [value, *self.others.get(trial_id, [])]
            if not all(_finite(v) for v in value):
                value, state = None, TrialState.FAIL  # (no latency: nothing to learn from)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state,
                                skip_if_finished=True)
        except Exception as exc:  # noqa: BLE001 - as Ray's OptunaSearch: a study's refusal
            logger.warning("Optuna refused trial %s as %s: %s", trial_id, state.name, exc)
        self._completed_trials.add(trial_id)


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def settle_study(storage_url: str, study_name: str, trials,
                 search_id: str | None = None) -> dict[str, int]:
    """After a search, end the trials of a stored study (--optuna-storage) that nothing else
    will end, by trials.csv (`trials`, the search's rows):
      budget_stopped: PRUNED, as an ASHA cut (Tune tells the searcher nothing of them);
      a trial the experiment does not know (started after the state a kill -9 resume began
      from; the searcher suggested another in its place): FAIL, as Optuna's own heartbeat
      marks a lost worker's trial, so the study keeps no trial RUNNING forever; so too a
      trial with no trial id still unnamed NAMING_S after it was asked for (a kill -9 between
      `ask` and the write that names it; a namesake search names its own in that one write):
      one asked for more recently is waited for, then read again.
    Trials still unfinished (an interrupted search) stay RUNNING: a resume goes on with them.
    Returns how many of each were told."""
    import optuna

    stopped = set(trials.loc[trials["status"] == "budget_stopped", "trial_id"])
    known = set(trials["trial_id"])
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    told = {"budget_stopped": 0, "unknown": 0}
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    told["unknown"] += _fail_the_never_named(
        study, [t for t in running if TRIAL_ID_ATTR not in t.user_attrs])
    for t in (t for t in running if TRIAL_ID_ATTR in t.user_attrs):
        trial_id = t.user_attrs[TRIAL_ID_ATTR]
        if search_id and t.user_attrs.get(SEARCH_ID_ATTR) != search_id:
            continue  # another search's of the same name in the same database
        if trial_id in stopped:
            study.tell(t.number, state=TrialState.PRUNED)
            told["budget_stopped"] += 1
        elif trial_id not in known:
            study.tell(t.number, state=TrialState.FAIL)
            told["unknown"] += 1
    return told


def _fail_the_never_named(study, unnamed: list) -> int:
    """FAIL the RUNNING trials with no trial id (asked for, never named: a kill -9 cut their
    suggestion) that are still unnamed and unfinished NAMING_S after the youngest was asked for
    (by the study's clock: RDB and journal storages stamp naive local time), read once again
    after that wait; returns how many were failed."""
    import time

    if not unnamed:
        return 0
    now = datetime.datetime.now()
    youngest = max(t.datetime_start or now for t in unnamed)
    time.sleep(max((youngest + datetime.timedelta(seconds=NAMING_S) - now).total_seconds(), 0))
    numbers, failed = {t.number for t in unnamed}, 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # (named since?)
        if t.number in numbers and TRIAL_ID_ATTR not in t.user_attrs:
            with contextlib.suppress(ValueError, UpdateFinishedTrialError):  # (ended since)
                study.tell(t.number, state=TrialState.FAIL)
                failed += 1
    return failed
