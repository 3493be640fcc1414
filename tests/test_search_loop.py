"""The search's own loop: what the searcher, the stage, Optuna and the selection rule are told of
each trial, replayed as Tune calls them and checked on real searches against trials.csv."""
from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tests.conftest import (
    SEARCH_SMALL,
    assert_study_matches_trials_csv,
    run_cli,
    search_root,
    study_by_trial,
)

slow = pytest.mark.slow
MAX_EPOCHS = 3


def _searcher(top: int, seeds: int, samples: int):
    """The search's searcher (tuning/trainable.py's stack: the stage over the Optuna searcher)
    for a small space, set up as Tune sets it up."""
    from ray import tune

    from tuning.intensify import Intensify
    from tuning.searcher import EpochOptunaSearch

    optuna_search = EpochOptunaSearch(max_epochs=MAX_EPOCHS,
                                      sampler=optuna.samplers.RandomSampler(seed=0))
    searcher = Intensify(optuna_search, samples, top, seeds)
    space = {"hidden_size": tune.choice([64, 128, 192, 256]), "lr": tune.loguniform(1e-3, 1e-2),
             "epochs": MAX_EPOCHS}
    assert searcher.set_search_properties("val_f1", "max", space)
    return searcher, optuna_search


def _result(epoch: int, val_f1: float, **extra) -> dict:
    return {"epoch": epoch, "val_f1": val_f1, "training_iteration": epoch,
            "status": "completed" if epoch == MAX_EPOCHS else "running", "done": False, **extra}


def test_the_searcher_hears_each_trials_stopping_result_as_tune_sends_it():
    """Tune's real sequence: on_trial_result for every result but the one at which a trial
    stops (an ASHA cut, or max_t), which comes only with on_trial_complete(result=...)."""
    searcher, optuna_search = _searcher(top=2, seeds=1, samples=4)
    ids = ["full", "cut", "peaked", "errored"]
    params = {t: searcher.suggest(t) for t in ids}
    # "full" runs 3 epochs: its best is its last, which only on_trial_complete carries
    searcher.on_trial_result("full", _result(1, 0.50))
    searcher.on_trial_result("full", _result(2, 0.60))
    searcher.on_trial_complete("full", _result(3, 0.90, done=True))
    # "cut": ASHA stops it at its first result (grace 1): it never reaches on_trial_result
    searcher.on_trial_complete("cut", _result(1, 0.80, done=True))
    # "peaked": best at epoch 2, lower at the last one
    searcher.on_trial_result("peaked", _result(1, 0.40))
    searcher.on_trial_result("peaked", _result(2, 0.70))
    searcher.on_trial_complete("peaked", _result(3, 0.65, done=True))
    searcher.on_trial_result("errored", _result(1, 0.30))
    searcher.on_trial_complete("errored", error=True)
    # the stage's leaders, by each trial's best over all its epochs: full (0.90), cut (0.80)
    assert searcher.best == pytest.approx({"full": 0.90, "cut": 0.80, "peaked": 0.70,
                                           "errored": 0.30})
    assert [searcher.suggest(f"r{i}") for i in range(2)] == [
        {**params["full"], "replicate": 1}, {**params["cut"], "replicate": 1}]
    # Optuna is told the truth: a finished run's best, a cut run as PRUNED with its values
    told = {t.user_attrs["trial_id"]: t for t in optuna_search._ot_study.trials}
    assert told["full"].state == TrialState.COMPLETE and told["full"].value == 0.90
    assert told["full"].intermediate_values == {1: 0.50, 2: 0.60, 3: 0.90}
    assert told["peaked"].state == TrialState.COMPLETE and told["peaked"].value == 0.70
    assert told["cut"].state == TrialState.PRUNED
    assert told["cut"].intermediate_values == {1: 0.80}
    assert told["errored"].state == TrialState.FAIL


def test_a_trial_stopped_by_the_time_budget_is_not_an_asha_cut():
    from tuning.outcome import trial_status

    # Tune marks the result at which ASHA stops a trial `done`; the budget stops it between two
    assert trial_status("TERMINATED", {"epoch": 1, "status": "running", "done": True}, 3) == \
        "asha_stopped"
    assert trial_status("TERMINATED", {"epoch": 1, "status": "running", "done": False}, 3) == \
        "budget_stopped"
    # as read back from progress.csv (a numpy bool) and from a CSV text
    assert trial_status("TERMINATED", pd.Series({"epoch": 2, "status": "running",
                                                 "done": True}), 3) == "asha_stopped"
    assert trial_status("TERMINATED", {"epoch": 2, "status": "running", "done": "False"}, 3) == \
        "budget_stopped"
    assert trial_status("TERMINATED", {"epoch": 3, "status": "completed", "done": False}, 3) == \
        "completed"
    assert trial_status("RUNNING", {"epoch": 1, "status": "running", "done": False}, 3) == \
        "unfinished"


def _trials(rows):
    """A trials.csv-like table: (trial_id, phase, hidden_size, status, best_val_f1, seed)."""
    return pd.DataFrame([{"trial_id": t, "phase": ph, "replicate": int(ph == "intensify"),
                          "hidden_size": h, "lr": 0.003, "status": st, "best_val_f1": f1,
                          "best_epoch": 2, "seed": seed} for t, ph, h, st, f1, seed in rows])


def test_the_rule_counts_a_seed_once_and_not_a_run_the_budget_cut():
    from tuning.intensify import choose

    trials = _trials([
        ("a", "search", 64, "completed", 0.920, 11),
        ("a-again", "search", 64, "completed", 0.920, 11),  # the same configuration and seed
        ("b", "search", 128, "completed", 0.918, 22),
        ("a2", "intensify", 64, "completed", 0.900, 12),
        ("b2", "intensify", 128, "completed", 0.916, 23),
        ("b3", "intensify", 128, "budget_stopped", 0.700, 24),  # cut short by the budget
    ])
    choice = choose(trials)
    # by hand: a = mean(0.920, 0.900) = 0.910 (its repeat is the same run, not a third seed);
    # b = mean(0.918, 0.916) = 0.917 (b3 measured nothing whole) -> b wins
    assert choice["trial_id"] == "b"
    assert choice["mean_val_f1"] == pytest.approx(0.917)
    assert [s["trial_id"] for s in choice["seeds"]] == ["b", "b2"]
    assert [(c["trial_ids"], round(c["mean_val_f1"], 3)) for c in choice["candidates"]] == [
        (["b", "b2"], 0.917), (["a", "a2"], 0.910)]
    # (counted twice, a would have had mean (0.920 + 0.920 + 0.900) / 3 = 0.9133; with b3 at
    # 0.700, b's mean would have been 0.8447 and a would have won)


@slow
def test_the_study_holds_what_trials_csv_says_asha_cut_and_finished_trials(tiny_experiment):
    root = tiny_experiment
    table = pd.read_csv(root / "artifacts/search/tiny/trials.csv")
    assert (table["status"] == "asha_stopped").any()  # (the fixture's search cuts some)
    # rows in the order the trials were created (a stable tie-break for the selection, whatever
    # order Tune lists them in): the two known-good points first, as suggested
    assert table[["hidden_size", "lr"]].head(2).values.tolist() == [[128, 0.003], [192, 0.007]]
    assert_study_matches_trials_csv(study_by_trial(f"sqlite:///{root / 'optuna.db'}", "tiny"), table)


@slow
def test_a_one_epoch_search_ranks_its_trials_and_runs_its_stage(prepared_root, tmp_path):
    """With --max-epochs 1 every trial stops at its first result (ASHA's max_t), which the
    searcher hears only as the trial completes: the stage still knows its leaders."""
    root = search_root(prepared_root, tmp_path, with_test=False)
    storage = f"sqlite:///{root / 'optuna.db'}"
    proc = run_cli("tuning.search", "--samples", "4", "--max-epochs", "1", "--name", "one",
                   *SEARCH_SMALL, "--intensify-top", "2", "--intensify-seeds", "1",
                   "--optuna-storage", storage, root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "interrupted" not in proc.stderr
    table = pd.read_csv(root / "artifacts/search/one/trials.csv")
    assert table["phase"].value_counts().to_dict() == {"search": 4, "intensify": 2}
    assert (table["status"] == "completed").all() and (table["epochs_run"] == 1).all()
    search = table[table["phase"] == "search"]
    hyper = ["embedding_dim", "hidden_size", "bidirectional", "embedding_dropout", "dropout",
             "lr", "weight_decay", "batch_size"]
    leaders = search.sort_values("best_val_f1", ascending=False).head(2)
    replicated = table[table["phase"] == "intensify"]
    assert sorted(map(tuple, replicated[hyper].values.tolist())) == \
        sorted(map(tuple, leaders[hyper].values.tolist()))
    assert_study_matches_trials_csv(study_by_trial(storage, "one"), table)


@slow
def test_trials_the_time_budget_stopped_are_labelled_told_and_ended(prepared_root, tmp_path):
    """Two trials that cannot finish (1000 epochs, no patience, no ASHA cut) when the budget
    ends the search: budget_stopped in trials.csv, PRUNED in the study, their MLflow runs ended
    with that status."""
    root = search_root(prepared_root, tmp_path, with_test=False)
    (root / "space.yaml").write_text("patience: 0\n")
    storage = f"sqlite:///{root / 'optuna.db'}"
    proc = run_cli("tuning.search", "--samples", "2", "--max-epochs", "1000",
                   "--grace-period", "1000", "--time-budget-s", "15", "--name", "budget",
                   *SEARCH_SMALL, "--subset", "300", "--space", "space.yaml",
                   "--optuna-storage", storage, "--mlflow", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(root / "artifacts/search/budget/trials.csv")
    assert len(table) == 2 and (table["status"] == "budget_stopped").all(), table["status"]
    assert (table["epochs_run"] >= 1).all()
    assert "2 budget_stopped" in proc.stderr
    assert_study_matches_trials_csv(study_by_trial(storage, "budget"), table)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'artifacts/mlflow.db'}")
    exp = client.get_experiment_by_name("budget")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(table["trial_id"])
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "budget_stopped"
    best = json.loads((root / "artifacts/search/budget/best_config.json").read_text())
    assert best["trial_id"] in set(table["trial_id"])
    # the space is stored as ranges, not as the path of a file that may be gone (or elsewhere)
    opts = json.loads((root / "ray_results/budget/search_options.json").read_text())
    assert opts["space"]["patience"] == 0 and opts["space"]["lr"] == {"loguniform": [1e-3, 1e-2]}
    (root / "space.yaml").unlink()
    proc = run_cli("tuning.search", "--name", "budget", "--resume", "--no-dashboard", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_resume_reads_its_own_experiments_options_not_a_namesakes(tmp_path):
    """Two experiments named x in two storages share the local report folder
    artifacts/search/x/; the options stored beside each experiment are the truth."""
    from tuning.results import OPTIONS_FILE, search_options
    from tuning.storage import open_storage

    a, b = open_storage(str(tmp_path / "A"), tmp_path), open_storage(str(tmp_path / "B"), tmp_path)
    report_dir = tmp_path / "artifacts/search/x"
    report_dir.mkdir(parents=True)
    for storage, subset in ((a, 1500), (b, 300)):  # x in A, then x in B (its report last)
        (tmp_path / storage.path("x")).mkdir(parents=True)
        storage.write_json({"name": "x", "subset": subset}, "x", OPTIONS_FILE)
        (report_dir / OPTIONS_FILE).write_text(json.dumps({"name": "x", "subset": subset}))
    assert search_options(report_dir, a, "x")["subset"] == 1500
    assert search_options(report_dir, b, "x")["subset"] == 300


@slow
def test_an_errored_trial_stays_errored_on_resume_and_the_stage_skips_it(prepared_root, tmp_path):
    """A trial that crashes at every start ends as an error (1 + 2 retries); the stage runs on
    the measured leader only; a resume (the crash gone) keeps the error as it is: the searcher,
    the study and the stage took it as ended, so a rerun would be told to nobody."""
    root = search_root(prepared_root, tmp_path, with_test=False)
    storage = f"sqlite:///{root / 'optuna.db'}"
    args = ["--samples", "2", "--max-epochs", "2", "--grace-period", "2", "--name", "crashy",
            *SEARCH_SMALL, "--subset", "800", "--intensify-top", "2", "--intensify-seeds", "1",
            "--optuna-storage", storage]
    # the two known-good points are the two trials: hidden 128 and hidden 192
    crash = {"EMOTION_FAULT_CRASH_IF": "hidden_size=192"}
    proc = run_cli("tuning.search", *args, root=root, env=crash)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(root / "artifacts/search/crashy/trials.csv")
    search = table[table["phase"] == "search"]
    assert search.set_index("hidden_size")["status"].to_dict() == {128: "completed", 192: "error"}
    errored = table[table["status"] == "error"]
    assert len(errored) == 1 and (errored["epochs_run"] == 0).all()
    # it crashed at its first start and at each of its 2 retries; the others never crashed
    assert (errored["failures"] == 3).all() and (table.loc[table["status"] != "error",
                                                            "failures"] == 0).all()
    again = table[table["phase"] == "intensify"]
    assert len(again) == 1 and (again["hidden_size"] == 128).all()  # the measured leader only
    assert_study_matches_trials_csv(study_by_trial(storage, "crashy"), table)
    proc = run_cli("tuning.search", "--name", "crashy", "--resume", "--no-dashboard", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = pd.read_csv(root / "artifacts/search/crashy/trials.csv")
    assert after.sort_values("trial_id").reset_index(drop=True).equals(
        table.sort_values("trial_id").reset_index(drop=True))
    progress = root / "ray_results/crashy" / f"trial_{errored['trial_id'].iloc[0]}" / "progress.csv"
    assert not progress.exists() or not progress.read_text().strip()  # not run again
    assert_study_matches_trials_csv(study_by_trial(storage, "crashy"), after)


def _tune_trial(trial_id: str, folder, values: list[float], storage=None, config=None,
                last_result=None):
    """A trial as retention reads it: its id and config, and Tune's own record of its
    checkpoints (a real checkpoint manager, checkpoint_000000.. scored by val_f1)."""
    from types import SimpleNamespace

    from ray import tune
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    manager = _CheckpointManager(tune.CheckpointConfig(
        num_to_keep=None, checkpoint_score_attribute="val_f1", checkpoint_score_order="max"))
    for epoch, value in enumerate(values):
        manager.register_checkpoint(_TrainingResult(
            checkpoint=tune.Checkpoint(f"{folder}/checkpoint_00000{epoch}"),
            metrics={"val_f1": value, "epoch": epoch + 1}))
    # (a Tune config holds only the searched keys: here none of trials.csv's columns)
    return SimpleNamespace(trial_id=trial_id, config=config or {"epochs": 3}, storage=storage,
                           run_metadata=SimpleNamespace(checkpoint_manager=manager),
                           last_result=last_result or {})


def _stored_trial(root, trial_id: str, best: float, config: dict, last_result=None):
    """A trial of an experiment in folder `root` with two epochs' checkpoint folders on disk
    (val_f1 best - 0.1, then best), as retention reads and prunes it."""
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(),
                              trial_fs_path=str(root / trial_id), experiment_fs_path=str(root))
    for epoch in range(2):
        (root / trial_id / f"checkpoint_00000{epoch}").mkdir(parents=True)
    return _tune_trial(trial_id, root / trial_id, [best - 0.1, best], storage, config, last_result)


def _save_as_ended(retention, root, trials) -> None:
    """Two experiment-state saves, the storage's saved state saying `trials` ended."""
    (root / "experiment_state-x.json").write_text(json.dumps({"trial_data": [
        [json.dumps({"trial_id": t.trial_id, "status": "TERMINATED"}), "{}"] for t in trials]}))
    for _ in range(2):
        retention.get_state()


class _Analysis:
    """What retention reads of an ExperimentAnalysis: its trials."""

    def __init__(self, table: pd.DataFrame):
        self.trials = [_tune_trial(r["trial_id"], f"/x/trial_{r['trial_id']}",
                                   [] if r["status"] == "error" else [0.1, r["best_val_f1"]])
                       for _, r in table.iterrows()]


def test_an_ended_search_keeps_the_best_checkpoint_of_its_five_leading_configurations():
    from tuning.retention import kept_checkpoints

    # 7 configurations (hidden 10..70), one of them twice; f1 rises with hidden_size
    rows = [(f"t{h}", "search", h, "completed", h / 100, 1) for h in range(10, 80, 10)]
    rows.append(("t70b", "search", 70, "asha_stopped", 0.5, 2))  # a leader's other trial
    rows.append(("t5", "search", 5, "error", float("nan"), 3))
    table = _trials(rows)
    keep = kept_checkpoints(_Analysis(table), table)
    leaders = {"t70", "t70b", "t60", "t50", "t40", "t30"}  # the top 5 configurations' trials
    assert {t for t, path in keep.items() if path} == leaders
    assert keep["t70"] == "/x/trial_t70/checkpoint_000001"  # its best epoch's
    assert keep["t20"] is None and keep["t10"] is None and keep["t5"] is None
    # interrupted: the unfinished trial keeps all of its (absent here); every ended one its best
    table.loc[table["trial_id"] == "t10", "status"] = "unfinished"
    keep = kept_checkpoints(_Analysis(table), table)
    assert "t10" not in keep and all(keep[t] for t in keep if t != "t5")


@slow
def test_a_warm_started_search_learns_from_another_experiments_trials_first(tiny_experiment,
                                                                            prepared_root,
                                                                            tmp_path):
    source = tiny_experiment / "ray_results" / "tiny"
    earlier = pd.read_csv(tiny_experiment / "artifacts/search/tiny/trials.csv")
    earlier = earlier[earlier["phase"] == "search"]
    root = search_root(prepared_root, tmp_path, with_test=False)
    storage = f"sqlite:///{root / 'optuna.db'}"
    same = ["--max-epochs", "3", "--grace-period", "1", "--reduction-factor", "2", *SEARCH_SMALL]
    # refused, naming what differs: the epochs, a range
    proc = run_cli("tuning.search", "--samples", "1", "--name", "w", "--warm-start", str(source),
                   *SEARCH_SMALL, "--max-epochs", "2", root=root)
    assert proc.returncode == 2 and "--max-epochs" in proc.stderr, proc.stderr
    (root / "space.yaml").write_text("lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    proc = run_cli("tuning.search", "--samples", "1", "--name", "w", "--warm-start", str(source),
                   *same, "--space", "space.yaml", root=root)
    assert proc.returncode == 2 and "differs in lr" in proc.stderr, proc.stderr
    assert not (root / "ray_results" / "w").exists()

    proc = run_cli("tuning.search", "--samples", "2", "--name", "w", "--warm-start", str(source),
                   *same, "--optuna-storage", storage, root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="w", storage=storage).trials
    # the earlier search's trials come first, as they ended there, then the 2 new ones
    warm, new = trials[:len(earlier)], trials[len(earlier):]
    assert [t.user_attrs["trial_id"] for t in warm] == earlier["trial_id"].tolist()
    assert all(t.user_attrs["warm_start"] == str(source) for t in warm)
    assert_study_matches_trials_csv({t.user_attrs["trial_id"]: t for t in warm}, earlier)
    table = pd.read_csv(root / "artifacts/search/w/trials.csv")
    assert len(new) == 2 and [t.user_attrs["trial_id"] for t in new] == table["trial_id"].tolist()
    assert all("warm_start" not in t.user_attrs for t in new)


@slow
def test_an_ended_search_extended_then_killed_and_resumed_keeps_its_trials(prepared_root, tmp_path,
                                                                            monkeypatch):
    """4 trials, then --resume --samples 6: 2 new trials from the same searcher (the study
    holds all 6), the first 4 untouched; a kill -9 during the extension, then --resume."""
    import signal

    from tests.helpers import SNAPSHOT_S, start_search, stderr_of, wait_for, wait_for_state_saves

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_S))
    root = search_root(prepared_root, tmp_path, with_test=False)
    storage = f"sqlite:///{root / 'optuna.db'}"
    exp = root / "ray_results" / "ext"
    proc = run_cli("tuning.search", "--samples", "4", "--max-epochs", "2", "--reduction-factor",
                   "2", "--name", "ext", *SEARCH_SMALL, "--subset", "800", "--optuna-storage",
                   storage, root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = {d.name: (d / "progress.csv").read_bytes() for d in exp.glob("trial_*")}
    earlier = study_by_trial(storage, "ext")
    for args, needle in ((["--samples", "3"], "already has 4"),
                         (["--samples", "6", "--max-epochs", "3"], "--max-epochs 3 differs")):
        refused = run_cli("tuning.search", "--name", "ext", "--resume", "--no-dashboard", *args,
                          root=root)
        assert refused.returncode == 2 and needle in refused.stderr, refused.stderr

    driver = start_search(root, ["--name", "ext", "--resume", "--samples", "6",
                                  "--no-dashboard"])
    assert wait_for(lambda: len(list(exp.glob("trial_*"))) > 4), stderr_of(driver)[-2000:]
    assert wait_for_state_saves(exp), stderr_of(driver)[-2000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    stderr_of(driver)
    proc = run_cli("tuning.search", "--name", "ext", "--resume", "--no-dashboard", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(root / "artifacts/search/ext/trials.csv")
    assert len(table) == 6 and table["trial_id"].is_unique
    assert table["status"].isin(["completed", "asha_stopped"]).all()
    assert "unfinished" not in set(table["status"])
    # the 4 earlier trials were neither rerun nor changed
    assert {d.name: (d / "progress.csv").read_bytes() for d in exp.glob("trial_*")
            if d.name in before} == before
    study = study_by_trial(storage, "ext")
    assert_study_matches_trials_csv(study, table)
    for trial_id, trial in earlier.items():
        assert study[trial_id].state == trial.state and study[trial_id].value == trial.value
    opts = json.loads((exp / "search_options.json").read_text())
    assert opts["samples"] == 6


def test_asha_rungs_are_refilled_from_the_restored_searcher_after_a_resume():
    """Tune does not save the scheduler: without the refill, the rungs of a resumed search are
    empty and a new trial far below the earlier ones passes the first rung."""
    from tuning.intensify import StagedASHA

    class Restored:  # the searcher as restored with the experiment: earlier trials' values
        def __init__(self):
            self.values = {"a": {1: 0.90, 2: 0.91}, "b": {1: 0.80}, "c": {1: 0.85}}

    class Trial:
        trial_id, config = "new", {"hidden_size": 64}

    for searcher, expected in ((Restored(), "STOP"), (None, "CONTINUE")):
        asha = StagedASHA(time_attr="epoch", metric="val_f1", mode="max", max_t=6,
                          grace_period=1, reduction_factor=3, searcher=searcher)
        asha.on_trial_add(None, Trial())
        assert asha.on_trial_result(None, Trial(), {"epoch": 1, "val_f1": 0.5}) == expected


def test_an_ended_trial_is_pruned_to_its_best_checkpoint_two_saves_later(tmp_path):
    """While the search runs: once every saved experiment state knows a trial ended (two saves
    after it did, and the state saved in the storage says so), it keeps its best checkpoint only, by Tune's record of its checkpoints (which
    a resume restores: a trial resumed after a kill -9 may have had its best epoch before it,
    unseen by this driver); a running trial keeps all of its."""
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    from tuning.retention import Retention

    def trial(trial_id, values):
        storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(),
                                  trial_fs_path=str(tmp_path / trial_id),
                                  experiment_fs_path=str(tmp_path))
        for epoch in range(len(values)):
            (tmp_path / trial_id / f"checkpoint_00000{epoch}").mkdir(parents=True)
        return _tune_trial(trial_id, tmp_path / trial_id, values, storage)

    ended, running = trial("ended", [0.5, 0.8, 0.7]), trial("running", [0.5, 0.8, 0.7])
    resumed = trial("resumed", [0.9, 0.8, 0.7])  # its best epoch came before a kill -9
    retention = Retention()
    retention.setup()  # (the resumed driver: it saw none of their results)
    retention.on_trial_complete(3, [], ended)
    retention.on_trial_complete(3, [], resumed)

    def kept(trial):
        return sorted(p.name for p in (tmp_path / trial.trial_id).iterdir())

    def saved_state(statuses: dict[str, str]) -> None:  # (as Tune writes it, in storage)
        trial_data = [[json.dumps({"trial_id": t, "status": s}), "{}"]
                      for t, s in statuses.items()]
        (tmp_path / "experiment_state-2026-11-30_00-00-00.json").write_text(
            json.dumps({"trial_data": trial_data}))

    everything = ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    saved_state({"ended": "RUNNING", "resumed": "RUNNING", "running": "RUNNING"})
    retention.get_state()  # a save that may have begun before the trial ended: nothing yet
    assert kept(ended) == everything
    # the second save, but its upload has not reached the storage yet (skipped, or slow): a
    # resume after kill -9 would read a state in which they still run
    retention.get_state()
    assert kept(ended) == everything and kept(resumed) == everything
    saved_state({"ended": "TERMINATED", "resumed": "TERMINATED", "running": "RUNNING"})
    retention.get_state()
    assert kept(ended) == ["checkpoint_000001"]  # its best (val_f1 0.8), not its last
    assert kept(resumed) == ["checkpoint_000000"]
    assert kept(running) == everything


class _Suggests(Searcher):
    """A base searcher that suggests hidden sizes from a list."""

    def __init__(self, sizes):
        super().__init__(metric="val_f1", mode="max")
        self.sizes = list(sizes)

    def suggest(self, trial_id):
        return {"hidden_size": self.sizes.pop(0)}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def test_an_extended_stage_replicates_the_new_leaders_only_and_ends_when_done():
    """3 search trials, a 2 x 1 stage; extended to 5 (state saved and restored as Tune does):
    the 2 new trials, then replicates of the leaders over all 5 that no stage ran yet, then
    FINISHED."""
    from tuning.intensify import Intensify

    def run(stage, trial_ids, values):
        for trial_id, value in zip(trial_ids, values, strict=True):
            assert stage.suggest(trial_id) is not None
            stage.on_trial_complete(trial_id, result={"val_f1": value})

    first = Intensify(_Suggests([64, 128, 192, 256, 32]), samples=3, top=2, seeds=1)
    run(first, ["a", "b", "c"], [0.80, 0.90, 0.85])
    assert [first.suggest(t) for t in ("r1", "r2")] == [
        {"hidden_size": 128, "replicate": 1}, {"hidden_size": 192, "replicate": 1}]
    assert first.suggest("r3") == Searcher.FINISHED
    state = first.get_state()
    again = Intensify(first.searcher, samples=3, top=2, seeds=1)  # (unpickled as first built)
    again.set_state(state)
    again.extend(5)
    run(again, ["d", "e"], [0.95, 0.70])  # 256 leads now; 128 was replicated already
    assert again.suggest("r4") == {"hidden_size": 256, "replicate": 1}
    assert again.suggest("r5") == Searcher.FINISHED
    # a state saved before `replicated` existed: the replicates its queue had handed out
    old = {k: v for k, v in state.items() if k != "replicated"}
    restored = Intensify(first.searcher, samples=3, top=2, seeds=1)
    restored.set_state(old)
    assert restored.replicated == state["replicated"]


def test_while_running_only_the_top_configurations_so_far_keep_a_checkpoint(tmp_path):
    """Ended trials outside the top 5 configurations so far (ties kept) keep no checkpoint,
    unless a stage replicated their configuration; a kept one that falls out of the top later
    is emptied then. So the search holds about 5 trials' best, whatever its samples."""
    from tuning.retention import Retention

    def trial(trial_id, hidden, best, replicate=0):
        return _stored_trial(tmp_path, trial_id, best,
                             {"hidden_size": hidden, "epochs": 2, "replicate": replicate})

    def save(retention, trials):
        _save_as_ended(retention, tmp_path, trials)

    def kept(trial_id):
        return sorted(p.name for p in (tmp_path / trial_id).iterdir())

    # hidden 10..70, val_f1 rising with it
    trials = [trial(f"t{h}", h, h / 100) for h in range(10, 80, 10)]
    trials.append(trial("t31", 31, 0.30))  # ties t30 at the edge of the top 5
    replicate = trial("r10", 10, 0.5, replicate=1)  # a stage replicated hidden 10
    retention = Retention(top=2)  # (at least 5: LEADERS)
    for t in trials:
        retention.on_trial_complete(0, [*trials, replicate], t)
    save(retention, trials)
    best_only = ["checkpoint_000001"]
    for h in (70, 60, 50, 40, 30, 31, 10):  # top 5 and the tie at the edge; the replicated one
        assert kept(f"t{h}") == best_only, h
    assert kept("t20") == []
    # a better trial: hidden 30 and 31 fall out of the top 5 and are emptied
    better = trial("t80", 80, 0.80)
    retention.on_trial_complete(0, [*trials, replicate, better], better)
    save(retention, [*trials, better])
    assert kept("t30") == [] and kept("t31") == [] and kept("t40") == best_only
    assert kept("t80") == best_only and kept("t10") == best_only


def test_while_running_the_f1_latency_frontier_keeps_its_checkpoints_too(tmp_path):
    """A trial outside the top 5 keeps its best checkpoint while it is on the frontier of val
    macro-F1 and latency (`evaluate_best --pick fastest-within` picks from it); an errored
    trial, which trials.csv's frontier leaves out, does not push another off it."""
    from tuning.retention import Retention

    def trial(trial_id, hidden, best, latency):
        return _stored_trial(tmp_path, trial_id, best, {"hidden_size": hidden, "epochs": 2},
                             {"epoch": 2, "status": "completed", "latency_ms": latency})

    # six slow good trials, one fast weak one, and an errored one faster and better than it
    trials = [trial(f"t{h}", h, h / 100, 1.0) for h in range(50, 110, 10)]
    fast = trial("fast", 1, 0.2, 0.05)
    broken = trial("broken", 2, 0.3, 0.01)
    retention = Retention()
    for t in trials + [fast]:
        retention.on_trial_complete(0, [*trials, fast, broken], t)
    retention.on_trial_error(0, [*trials, fast, broken], broken)
    _save_as_ended(retention, tmp_path, [*trials, fast, broken])
    kept = {t.trial_id: sorted(p.name for p in (tmp_path / t.trial_id).iterdir())
            for t in [*trials, fast]}
    assert kept["fast"] == ["checkpoint_000001"]  # on the frontier: the fastest measured
    assert kept["t50"] == []  # neither in the top 5 nor on the frontier
    assert all(kept[f"t{h}"] == ["checkpoint_000001"] for h in range(60, 110, 10))
