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
values: a finished trial is told [its best val_f1, its latency_ms], a cut one PRUNED.
"""
from __future__ import annotations

import logging
import math

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from model.config import FAMILY_KEY, family_keys, family_of
from tuning.outcome import METRIC, trial_status

logger = logging.getLogger(__name__)
TRIAL_ID_ATTR = "trial_id"
SEARCH_ID_ATTR = "search_id"
WARM_ATTR = "warm_start"  # on a trial learnt from another experiment: that experiment
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
        """The study, then the warm-start trials in it, as they ended there (before any
        suggestion: Tune sets the search properties first; a resume restores the study)."""
        import optuna

        from tuning.space import distributions

        super()._setup_study(mode)
        space = getattr(self._space, "space", self._space)  # (ConditionalSpace's dict)
        for w in self.warm:
            multi = self.multi
            self._ot_study.add_trial(optuna.trial.create_trial(
                state=TrialState[w["state"]], params=w["params"],
                distributions=distributions(space, w["params"]),
                value=None if multi else w["value"], values=w["value"] if multi else None,
                intermediate_values=({} if multi else
                                     {int(e): v for e, v in w["intermediate_values"].items()}),
                user_attrs={TRIAL_ID_ATTR: w["trial_id"], WARM_ATTR: w["source"]}))

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(TRIAL_ID_ATTR, trial_id)
        if getattr(self, "search_id", None):  # (a searcher pickled before search ids: none)
            self._ot_trials[trial_id].set_user_attr(SEARCH_ID_ATTR, self.search_id)
        return params

    def _report(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(METRIC), result.get("epoch")
        seen = self.values.setdefault(trial_id, {})
        if self.multi:
            self.others[trial_id] = [result.get(m) for m in self._metric[1:]]
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
            if any(not isinstance(v, int | float) or math.isnan(v) for v in value):
                value, state = None, TrialState.FAIL  # (no latency: nothing to learn from)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state,
                                skip_if_finished=True)
        except Exception as exc:  # noqa: BLE001 - as Ray's OptunaSearch: a study's refusal
            logger.warning("Optuna refused trial %s as %s: %s", trial_id, state.name, exc)
        self._completed_trials.add(trial_id)


def settle_study(storage_url: str, study_name: str, trials,
                 search_id: str | None = None) -> dict[str, int]:
    """After a search, end the trials of a stored study (--optuna-storage) that nothing else
    will end, by trials.csv (`trials`, the search's rows):
      budget_stopped: PRUNED, as an ASHA cut (Tune tells the searcher nothing of them);
      a trial the experiment does not know (started after the state a kill -9 resume began
      from; the searcher suggested another in its place): FAIL, as Optuna's own heartbeat
      marks a lost worker's trial, so the study keeps no trial RUNNING forever.
    Trials still unfinished (an interrupted search) stay RUNNING: a resume goes on with them.
    Returns how many of each were told."""
    import optuna

    stopped = set(trials.loc[trials["status"] == "budget_stopped", "trial_id"])
    known = set(trials["trial_id"])
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    told = {"budget_stopped": 0, "unknown": 0}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if search_id and t.user_attrs.get(SEARCH_ID_ATTR) != search_id:
            continue  # another search's of the same name in the same database
        trial_id = t.user_attrs.get(TRIAL_ID_ATTR)
        if trial_id in stopped:
            study.tell(t.number, state=TrialState.PRUNED)
            told["budget_stopped"] += 1
        elif trial_id not in known:
            study.tell(t.number, state=TrialState.FAIL)
            told["unknown"] += 1
    return told


def warm_trials(storage, name: str, space: dict, opts: dict) -> list[dict]:
    """The search trials of experiment `name` (in `storage`) for a new search to learn from
    (--warm-start): each ended trial's params, state (as `EpochOptunaSearch` told it), value and
    per-epoch val_f1. A UsageError, naming what differs, unless the experiment searched the same
    space with the same max epochs and training rows (its figures would not compare)."""
    from pathlib import Path

    import pandas as pd

    from plumbing.errors import UsageError
    from tuning.intensify import SEARCH
    from tuning.results import load_experiment, search_options, trials_frame
    from tuning.space import differing_keys, stored_space

    source = storage.uri(name)
    theirs = search_options(Path(storage.path(name)), storage, name)
    if theirs is None:
        raise UsageError(f"--warm-start {source}: no search_options.json beside the experiment")
    differ = differing_keys(space, stored_space(theirs.get("space")))
    if differ:
        raise UsageError(f"--warm-start {source}: its search space differs in {', '.join(differ)}")
    for key, flag in (("max_epochs", "--max-epochs"), ("subset", "--subset")):
        if theirs.get(key) != opts[key]:
            raise UsageError(f"--warm-start {source}: it ran with {flag} {theirs.get(key)}, this "
                             f"search with {opts[key]}; their figures would not compare")
    mine = opts.get("objectives") or ["f1"]
    if (theirs.get("objectives") or ["f1"]) != mine:
        raise UsageError(f"--warm-start {source}: it searched --objectives "
                         f"{','.join(theirs.get('objectives') or ['f1'])}, this search "
                         f"{','.join(mine)}")
    analysis = load_experiment(storage, name)
    frames = analysis.trial_dataframes
    table = trials_frame(analysis)
    searched = [k for k, v in space.items() if isinstance(v, dict)]
    warm = []
    for _, row in table[table["phase"] == SEARCH].iterrows():
        state = STATES.get(row["status"])
        if state not in (TrialState.COMPLETE, TrialState.PRUNED) or not row["epochs_run"]:
            continue
        history = frames[row["trial_id"]]
        curve = {int(e): float(v) for e, v in zip(history["epoch"], history[METRIC], strict=True)}
        keys = {FAMILY_KEY, *family_keys(family_of(row))}  # (the others' columns are empty)
        value = float(row["best_val_f1"]) if state == TrialState.COMPLETE else curve[max(curve)]
        if len(mine) > 1:
            if state == TrialState.COMPLETE and pd.isna(row.get("latency_ms")):
                continue  # (no latency measured: nothing to tell)
            value = [value, float(row["latency_ms"])] if state == TrialState.COMPLETE else None
        warm.append({
            "trial_id": row["trial_id"], "source": source, "state": state.name,
            "params": {k: (row[k].item() if hasattr(row[k], "item") else row[k])
                       for k in searched if k in keys},
            "value": value, "intermediate_values": curve})
    return warm
