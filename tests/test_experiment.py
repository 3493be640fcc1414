"""One experiment's lifecycle (tuning/search/experiment.py): the study is set up once whatever
path a resume takes, the kept tuner state is checked by its content, options survive
extension. The real call sequences, replayed as Tune makes them."""
from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.trial import TrialState

from tuning.search.searcher import EpochOptunaSearch
from tuning.space import ConditionalSpace

SPACE = {"family": "rnn", "hidden_size": {"choice": [64, 128, 192]},
         "lr": {"loguniform": [1e-3, 1e-2]}}
POINTS = [{"hidden_size": 192, "lr": 0.005}, {"hidden_size": 64, "lr": 0.002}]
WARM = [{"trial_id": "w1", "source": "elsewhere", "state": "COMPLETE",
         "params": {"hidden_size": 128, "lr": 0.003}, "value": 0.6,
         "intermediate_values": {"1": 0.5, "2": 0.6}}]


def _searcher(db: str) -> EpochOptunaSearch:
    """The searcher as tuner.pkl holds it: made, never set up."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return EpochOptunaSearch(space=ConditionalSpace(SPACE), metric="val_f1", mode="max",
                             max_epochs=2, warm=WARM, search_id="s1", points_to_evaluate=POINTS,
                             sampler=optuna.samplers.TPESampler(seed=0), study_name="exp",
                             storage=optuna.storages.RDBStorage(db))


def _run(searcher, trial_id: str) -> dict:
    params = searcher.suggest(trial_id)
    for epoch, value in ((1, 0.4), (2, 0.5)):
        result = {"epoch": epoch, "val_f1": value, "status": "completed" if epoch == 2 else
                  "running", "done": epoch == 2, "training_iteration": epoch}
        if epoch == 2:
            searcher.on_trial_complete(trial_id, result)
        else:
            searcher.on_trial_result(trial_id, result)
    return params


@pytest.mark.parametrize("saved_state", [True, False], ids=["state-saved", "killed-before-save"])
def test_a_resume_sets_a_stored_study_up_once(tmp_path, saved_state):
    """Tune calls set_search_properties on every resume, before it restores the searcher's
    state (ray/tune/tune.py): Ray's OptunaSearch then enqueued its points again into the
    database the restored study reads, and the warm trials were added twice."""
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = _searcher(db)
    assert first.set_search_properties("val_f1", "max", {"epochs": 2})
    ran = [_run(first, "t1"), _run(first, "t2")]
    assert [{k: p[k] for k in POINTS[0]} for p in ran] == POINTS  # the points, in order
    first.save(str(tmp_path / "searcher.pkl"))

    resumed = _searcher(db)  # a resume: tuner.pkl's searcher, set up by Tune again
    assert resumed.set_search_properties("val_f1", "max", {"epochs": 2})
    if saved_state:
        resumed.restore(str(tmp_path / "searcher.pkl"))
    third = _run(resumed, "t3")

    study = optuna.load_study(study_name="exp", storage=db)
    states = [t.state for t in study.trials]
    assert TrialState.WAITING not in states
    assert len(study.trials) == 1 + 3  # the warm trial once, and three trials of this search
    assert sum(t.user_attrs.get("trial_id") == "w1" for t in study.trials) == 1
    assert {k: third[k] for k in POINTS[0]} not in POINTS  # no known point suggested again


def test_a_new_search_sets_its_study_up_with_its_points_and_warm_trials(tmp_path):
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _searcher(db)
    searcher.set_search_properties("val_f1", "max", {"epochs": 2})
    study = optuna.load_study(study_name="exp", storage=db)
    assert [t.state for t in study.trials] == [TrialState.WAITING, TrialState.WAITING,
                                               TrialState.COMPLETE]
    assert [t.system_attrs["fixed_params"] for t in study.trials[:2]] == POINTS
    assert study.trials[2].params == WARM[0]["params"] and study.trials[2].value == 0.6


def test_the_kept_tuner_state_is_checked_by_its_content(tmp_path):
    """A tuner.pkl cut anywhere, even on a byte that ends a pickle ('.'), is not whole."""
    import pyarrow.fs as pafs

    from tuning.search.tuner_state import whole_pickle

    data = pickle.dumps({"a": "x." * 50, "b": list(range(100))})
    cuts = [i for i in range(1, len(data)) if data[i - 1:i] == b"."]
    assert cuts  # (the old check took each of these for whole)
    fs = pafs.LocalFileSystem()
    for cut in [*cuts, len(data) // 2]:
        (tmp_path / "t.pkl").write_bytes(data[:cut])
        assert not whole_pickle(fs, str(tmp_path / "t.pkl")), cut
    (tmp_path / "t.pkl").write_bytes(data)
    assert whole_pickle(fs, str(tmp_path / "t.pkl"))
    assert not whole_pickle(fs, str(tmp_path / "missing.pkl"))


def test_a_warm_start_with_the_sources_seed_draws_other_configurations():
    """TPE's first draws come from its seed alone: a search warm-started from one that ran
    with the same --seed drew (and trained, seed for seed) the same configurations again (the
    lifecycle test saw it). Replayed on real samplers: the first draws of the source, then of
    the warm start's sampler with the source's trials in its study."""
    from tuning.options import SearchOptions
    from tuning.search.tuner import make_searcher

    def draws(options, n=3) -> list[dict]:
        searcher = make_searcher(options.replace(points=[]))
        searcher.set_search_properties("val_f1", "max", {"epochs": 2})
        searched = [k for k, spec in SPACE.items() if isinstance(spec, dict)]
        return [{k: v for k, v in searcher.suggest(f"t{i}").items() if k in searched}
                for i in range(n)]

    source = SearchOptions(name="a", seed=3, max_epochs=2, space=SPACE, concurrency=1)
    first = draws(source)
    warm = [{"trial_id": f"a{i}", "source": "a", "state": "COMPLETE", "params": p,
             "value": 0.5, "intermediate_values": {"1": 0.5}} for i, p in enumerate(first)]
    again = draws(source.replace(name="b", warm_start=warm))
    assert not [p for p in again if p in first], (first, again)
    # and the same warm start draws the same again: reproducible
    assert draws(source.replace(name="c", warm_start=warm)) == again


def test_a_tracked_searchs_artifacts_land_beside_its_store_wherever_commands_run(tmp_path,
                                                                                 monkeypatch):
    """MLflow gives an experiment created without a location `./mlruns` of the folder the
    command ran in: evaluate_best's report, plots and model landed in an untracked mlruns/ at
    the project root. The search creates its experiment with them beside the SQLite file."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tuning.tracking import create_experiment

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    create_experiment(uri, "exp")
    create_experiment(uri, "exp")  # (once: a resume finds it as it is)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # evaluate_best run from another folder
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("exp")
    (tmp_path / "report.md").write_text("# report\n")
    with mlflow.start_run():
        mlflow.log_artifact(str(tmp_path / "report.md"))
    found = MlflowClient(uri).get_experiment_by_name("exp")
    assert found.artifact_location == (tmp_path / "store" / "mlartifacts").as_uri()
    assert list((tmp_path / "store" / "mlartifacts").rglob("report.md"))
    assert not list(elsewhere.iterdir())  # no mlruns/ where the command ran


@pytest.mark.slow
def test_the_terminal_shows_no_ray_worker_info_lines(tiny_experiment):
    """Ray's trainables log `Checkpoint successfully created at: ...` at INFO once per epoch of
    every trial (78 of the 140 lines a default search printed to a pipe): a trial's worker
    logs Ray Train's and Tune's INFO lines only with --verbose (their warnings, with the
    worker's prefix, always)."""
    log = (tiny_experiment / "search.log").read_text()
    assert "Checkpoint successfully created" not in log
    assert not [line for line in log.splitlines() if " INFO " in line and "(" in line]
    # a line per ended trial, and a few of the search's own
    ended = [line for line in log.splitlines() if line.startswith("trial ")]
    assert len(ended) == 6 and len(log.splitlines()) <= len(ended) + 15, log


@pytest.mark.parametrize("error, printed", [("SystemExit(1)", False), ("ValueError('x')", True)])
def test_a_trial_worker_prints_no_traceback_for_rays_sigterm_exit_in_a_finalizer(error, printed):
    """Ray ends idle workers with SIGTERM when a search ends; its handler's SystemExit, raised
    inside a finalizer, is what Python prints as "Exception ignored in" (CI saw 9 such lines
    after a search that went well). Any other exception there is still printed."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from tuning.search.trainable import _quiet_exit_in_finalizer\n"
            "sys.unraisablehook = _quiet_exit_in_finalizer\n"
            "class Finalized:\n"
            f"    def __del__(self): raise {error}\n"
            "Finalized()\n"
            "print('went on')\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "went on\n", done
    assert ("Exception ignored in" in done.stderr) == printed, done.stderr


def test_settling_a_study_fails_a_trial_a_kill_cut_between_ask_and_its_trial_id(tmp_path,
                                                                                monkeypatch):
    """A trial is asked for, then named with Tune's trial id: a kill -9 between the two left a
    RUNNING trial with no id that no search would end (CI saw it). Settling fails such a trial
    once NAMING_S have passed since its ask, waiting for one asked more recently: one that is
    named meanwhile (another search of the same study) stays; one that is not is failed."""
    import datetime
    import threading

    import pandas as pd

    from tuning.search import searcher

    monkeypatch.setattr(searcher, "NAMING_S", 6)  # (the namer has 5.5 s to spare on 2 busy cores)
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="exp", storage=db)
    now = datetime.datetime.now()
    for started in (now - datetime.timedelta(seconds=60), now, now):
        trial = optuna.trial.create_trial(state=TrialState.RUNNING, params={}, distributions={})
        trial.datetime_start = started
        study.add_trial(trial)
    namer = threading.Timer(0.5, lambda: study._storage.set_trial_user_attr(
        study.trials[2]._trial_id, searcher.TRIAL_ID_ATTR, "theirs"))
    namer.start()
    trials = pd.DataFrame({"trial_id": ["t1"], "status": ["completed"]})
    told = searcher.settle_study(db, "exp", trials, search_id="s1")
    namer.join()
    assert told["unknown"] == 2
    assert [t.state for t in optuna.load_study(study_name="exp", storage=db).trials] == [
        TrialState.FAIL, TrialState.FAIL, TrialState.RUNNING]


def test_a_suggested_trial_is_named_before_its_space_is_sampled(tmp_path):
    """The trial id is written before the sampler runs, so a kill -9 while sampling leaves a
    named trial (settle_study ends it by name) rather than an anonymous one."""
    from tuning.search.searcher import SEARCH_ID_ATTR, TRIAL_ID_ATTR, EpochOptunaSearch
    from tuning.space import ConditionalSpace

    seen = {}

    class Spy(ConditionalSpace):
        def __call__(self, trial):
            seen.update(study.trials[-1].user_attrs)  # (what the storage holds at sampling)
            return super().__call__(trial)

    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = EpochOptunaSearch(space=Spy({"lr": {"loguniform": [1e-4, 1e-2]}}), metric="val_f1",
                               mode="max", max_epochs=2, search_id="s1", storage=
                               optuna.storages.RDBStorage(db), study_name="exp")
    search.set_search_properties("val_f1", "max", {})
    study = optuna.load_study(study_name="exp", storage=db)
    assert 1e-4 <= search.suggest("t1")["lr"] <= 1e-2
    assert seen == {TRIAL_ID_ATTR: "t1", SEARCH_ID_ATTR: "s1"}
    assert list(study.trials[0].params) == ["lr"]  # (sampled, by the study, on that trial)
