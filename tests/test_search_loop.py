"""The search's own loop: what the searcher, the stage, Optuna and the selection rule are told of
each trial, replayed as Tune calls them and checked on real searches against trials.csv."""
from __future__ import annotations

import json
import os
from functools import partial

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
from tests.helpers import (
    asha_cuts_by_hand,
    checkpoints_kept,
    stored_options,
    trials_csv,
    trials_table,
)

slow = pytest.mark.slow
MAX_EPOCHS = 3


def _searcher(top: int, seeds: int, samples: int, max_epochs: int = MAX_EPOCHS):
    """The search's searcher (tuning/trainable.py's stack: the stage over the Optuna searcher)
    for a small space, set up as Tune sets it up."""
    from ray import tune

    from tuning.search.searcher import EpochOptunaSearch
    from tuning.search.stage import Intensify

    optuna_search = EpochOptunaSearch(max_epochs=max_epochs,
                                      sampler=optuna.samplers.RandomSampler(seed=0))
    searcher = Intensify(optuna_search, samples, top, seeds)
    space = {"hidden_size": tune.choice([64, 128, 192, 256]), "lr": tune.loguniform(1e-3, 1e-2),
             "epochs": max_epochs}
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
    # "errored": the best figure of all before it crashed for good (its retries spent)
    searcher.on_trial_result("errored", _result(1, 0.95))
    searcher.on_trial_complete("errored", error=True)
    # the stage's leaders, by each trial's best over all its epochs: full (0.90), cut (0.80);
    # the errored trial is not ranked (it measured nothing whole), whatever it reported
    assert searcher.best == pytest.approx({"full": 0.90, "cut": 0.80, "peaked": 0.70})
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


def test_a_multi_objective_trial_that_diverges_after_measuring_is_told_its_latency():
    """With --objectives f1,latency, a trial that measured its latency and later reports NaN
    figures (it diverged on the first epoch of a run restarted from a checkpoint written
    before this fix) is told COMPLETE with the last finite latency it reported, not FAIL."""
    from ray import tune

    from tuning.search.searcher import EpochOptunaSearch

    searcher = EpochOptunaSearch(metric=["val_f1", "latency_ms"], mode=["max", "min"],
                                 max_epochs=MAX_EPOCHS,
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    assert searcher.set_search_properties(None, None, {"lr": tune.loguniform(1e-3, 1e-2),
                                                       "epochs": MAX_EPOCHS})
    searcher.suggest("t")
    searcher.on_trial_result("t", _result(1, 0.60, latency_ms=0.75))
    nan = float("nan")
    searcher.on_trial_complete("t", {**_result(2, 0.0, latency_ms=nan), "status": "diverged",
                                     "done": True})
    (told,) = searcher._ot_study.trials
    assert told.state == TrialState.COMPLETE and told.values == [0.60, 0.75]


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


def test_the_rule_counts_a_seed_once_and_not_a_run_the_budget_cut():
    from tuning.selection import choose

    trials = trials_table([
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


def test_an_errored_trial_is_never_a_leader_nor_the_winner_read_off_trials_csv():
    """Read off trials.csv as the stage ranks while running: an errored row is not ranked,
    whatever it reported before its last crash (here the best figure of all)."""
    from types import SimpleNamespace

    from tuning.search.retention import kept_checkpoints
    from tuning.search.stage import expected_trials
    from tuning.selection import choose, config_key, search_leaders, table_leaders

    rows = [(f"t{h}", "search", h, "completed", h / 100, h) for h in range(10, 80, 10)]
    rows.append(("crashed", "search", 99, "error", 0.99, 99))
    trials = trials_table(rows)
    key = {t: config_key(row) for t, row in trials.set_index("trial_id", drop=False).iterrows()}
    # by hand: the measured trials by best val_f1, 0.70 down
    assert search_leaders(trials, 2) == [key["t70"], key["t60"]]
    assert table_leaders(trials, 5) == [key[f"t{h}"] for h in (70, 60, 50, 40, 30)]
    # a 10 x 3 stage over these 8 search trials: 7 measured configurations to replicate, 3
    # further seeds each (the errored one is not among them)
    options = SimpleNamespace(samples=8, intensify_top=10, intensify_seeds=3)
    assert expected_trials(trials, options) == 8 + 7 * 3
    # retention keeps the top 5 measured configurations' best checkpoints, t30 among them
    keep = kept_checkpoints(_Analysis(trials), trials)
    assert {t for t, path in keep.items() if path} == {"t70", "t60", "t50", "t40", "t30"}
    # and the single-trial rule does not pick it either
    assert choose(trials)["trial_id"] == "t70"
    with pytest.raises(ValueError, match="errored"):
        choose(trials[trials["status"] == "error"])


def test_a_configuration_whose_replicate_errored_competes_on_its_measured_seeds():
    from tuning.selection import choose

    trials = trials_table([
        ("a", "search", 64, "completed", 0.920, 11),
        ("b", "search", 128, "completed", 0.910, 22),
        ("a2", "intensify", 64, "error", 0.990, 12),  # crashed for good after a lucky epoch
        ("b2", "intensify", 128, "completed", 0.900, 23),
    ])
    choice = choose(trials)
    # by hand: both configurations were replicated; a's mean is over its one measured seed,
    # 0.920, b's over two, (0.910 + 0.900) / 2 = 0.905 -> a, not a2's 0.990
    assert [(c["trial_ids"], round(c["mean_val_f1"], 3)) for c in choice["candidates"]] == [
        (["a"], 0.920), (["b", "b2"], 0.905)]
    assert choice["trial_id"] == "a" and "mean validation macro-F1 over seeds" in choice["rule"]


def test_with_no_measured_run_of_a_replicated_configuration_the_best_measured_trial_wins():
    """A stage ran, but none of its configurations has a measured run (its leader's search trial
    and replicates were all cut short or errored): the winner is the measured trial with the best
    val macro-F1, and the rule, in best_config.json and report.md, says why."""
    from tuning.results.report import how_chosen
    from tuning.selection import choose

    trials = trials_table([
        ("a", "search", 64, "budget_stopped", 0.930, 11),  # the stage's only leader
        ("b", "search", 128, "completed", 0.910, 22),
        ("c", "search", 192, "asha_stopped", 0.920, 33),
        ("a2", "intensify", 64, "unfinished", 0.950, 12),
        ("a3", "intensify", 64, "error", 0.970, 13),
    ])
    choice = choose(trials)
    # by hand: the measured trials are b (0.910) and c (0.920): c
    assert choice["trial_id"] == "c" and choice["mean_val_f1"] == pytest.approx(0.920)
    assert [s["trial_id"] for s in choice["seeds"]] == ["c"] and choice["candidates"] == []
    assert "single measured trial" in choice["rule"]
    assert "none of the stage's 1 replicated configurations has a measured run" in choice["rule"]
    report = how_chosen({"selection": choice, "trial_id": "c", "best_epoch": 2, "seed": 33},
                        trials, {"completed": 1})
    assert choice["rule"] in report[0]
    # and with no measured trial at all, a clear refusal (a one-line DataError to the user)
    with pytest.raises(ValueError, match="no trial measured its seed"):
        choose(trials[trials["trial_id"].isin(["a", "a2", "a3"])])


def test_while_running_an_errored_trial_takes_no_place_among_the_kept_leaders(tmp_path):
    """While the search runs: the top 5 configurations whose trials keep their best checkpoint
    are the measured ones; an errored trial's (the best figure before it crashed) is emptied."""
    from tuning.search.retention import Retention

    trials = [_stored_trial(tmp_path, f"t{h}", h / 100, {"hidden_size": h, "epochs": 2})
              for h in range(10, 80, 10)]
    broken = _stored_trial(tmp_path, "broken", 0.99, {"hidden_size": 99, "epochs": 2})
    retention = Retention()
    for t in trials:
        retention.on_trial_complete(0, [*trials, broken], t)
    retention.on_trial_error(0, [*trials, broken], broken)
    _save_as_ended(retention, tmp_path, [*trials, broken])
    kept = {t.trial_id: sorted(p.name for p in (tmp_path / t.trial_id).iterdir())
            for t in [*trials, broken]}
    # by hand: hidden 70, 60, 50, 40, 30 (val_f1 0.70 .. 0.30) keep their best; 20, 10 none
    assert {t for t, names in kept.items() if names} == {"t70", "t60", "t50", "t40", "t30"}
    assert all(kept[f"t{h}"] == ["checkpoint_000001"] for h in (70, 60, 50, 40, 30))
    assert kept["broken"] == []


@slow
def test_the_study_holds_what_trials_csv_says_asha_cut_and_finished_trials(tiny_experiment):
    root = tiny_experiment
    table = trials_csv(root, "tiny")
    # the fixture's search cuts trials (one at a time: always the same ones), and trials.csv
    # says so of those ASHA's rule must cut (grace 1, reduction factor 2, rungs at epochs 1, 2)
    search = table[table["phase"] == "search"]
    cut = asha_cuts_by_hand(root / "ray_results" / "tiny", search, rungs=(1, 2),
                            reduction_factor=2)
    assert cut and set(search.loc[search["status"] == "asha_stopped", "trial_id"]) == set(cut)
    # rows in the order the trials were created (a stable tie-break for the selection, whatever
    # order Tune lists them in): the two known-good points first, as suggested
    assert table[["hidden_size", "lr"]].head(2).values.tolist() == [[128, 0.003], [192, 0.007]]
    assert_study_matches_trials_csv(study_by_trial(f"sqlite:///{root / 'optuna.db'}", "tiny"), table)


@slow
def test_a_one_epoch_search_ranks_its_trials_and_runs_its_stage(prepared_root, tmp_path):
    """With --max-epochs 1 every trial stops at its first result (ASHA's max_t), which the
    searcher hears only as the trial completes: the stage still knows its leaders. Its
    concurrency is the default: as many trials at once as the machine lets it use CPUs."""
    root = search_root(prepared_root, tmp_path, with_test=False)
    storage = f"sqlite:///{root / 'optuna.db'}"
    proc = run_cli("tuning.search", "--samples", "4", "--max-epochs", "1", "--name", "one",
                   *SEARCH_SMALL, "--intensify-top", "2", "--intensify-seeds", "1",
                   "--optuna-storage", storage, root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "interrupted" not in proc.stderr
    at_once = len(os.sched_getaffinity(0))  # the CPUs this machine lets the search use
    assert f"4 trials, then the top 2 again with 1 more seed(s) each, {at_once} at once" in \
        proc.stderr
    table = trials_csv(root, "one")
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
                   "--grace-period", "1000", "--time-budget-s", "40", "--name", "budget",
                   *SEARCH_SMALL, "--subset", "300", "--space", "space.yaml",
                   "--optuna-storage", storage, "--mlflow", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = trials_csv(root, "budget")
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
    opts = stored_options((root / "ray_results/budget/harness/search_options.json").read_text())
    assert opts["space"]["patience"] == 0 and opts["space"]["lr"] == {"loguniform": [1e-3, 1e-2]}
    (root / "space.yaml").unlink()
    proc = run_cli("tuning.search", "--name", "budget", "--resume", "--no-dashboard", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]


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


def test_an_ended_search_keeps_the_leaders_the_replicated_and_the_frontier():
    """At the end (retention.kept_checkpoints): the best checkpoint of the trials of the top 5
    configurations (a tie with the 5th kept too), of every replicated configuration, and of
    the F1/latency frontier's search trials; none for the others. The expected sets are
    worked out by hand from the rows."""
    from tuning.results.tables import pareto
    from tuning.search.retention import kept_checkpoints

    # 7 configurations (hidden 10..70); f1 rises with hidden_size, so does latency
    rows = [(f"t{h}", "search", h, "completed", h / 100, h, h / 10) for h in range(10, 80, 10)]
    rows.append(("t70b", "search", 70, "asha_stopped", 0.5, 2, 7.0))  # a leader's other trial
    rows.append(("t35", "search", 35, "completed", 0.30, 3, 9.0))  # tied with the 5th (t30)
    rows.append(("t5", "search", 5, "error", float("nan"), 4))
    rows.append(("t1", "search", 1, "completed", 0.05, 5, 0.5))  # the fastest: on the frontier
    rows.append(("t20r", "intensify", 20, "completed", 0.21, 6, 2.0))  # a replicate of t20's
    table = trials_table(rows)
    table["pareto"] = pareto(table)
    # by hand: the top 5 configurations 70, 60, 50, 40, 30 and 35 (tied with 30); replicated:
    # 20; frontier (best f1 for its latency): t1 (0.5 ms), t10 (1 ms), ... up to t70 (7 ms);
    # t35 (9 ms, 0.30) is dominated but kept for its tie
    assert set(table.loc[table["pareto"], "trial_id"]) == {"t1", "t10", "t20", "t30", "t40",
                                                           "t50", "t60", "t70"}
    keep = kept_checkpoints(_Analysis(table), table)
    kept = {t for t, path in keep.items() if path}
    assert kept == {"t70", "t70b", "t60", "t50", "t40", "t30", "t35", "t20", "t20r", "t10", "t1"}
    assert keep["t70"] == "/x/trial_t70/checkpoint_000001"  # its best epoch's
    assert keep["t5"] is None
    # without the frontier and the stage, only the leaders (and the tie) keep theirs
    plain = trials_table([r for r in rows if r[0] not in ("t1", "t20r")])
    plain["pareto"] = False
    keep = kept_checkpoints(_Analysis(plain), plain)
    assert {t for t, path in keep.items() if path} == {"t70", "t70b", "t60", "t50", "t40",
                                                       "t30", "t35"}
    # interrupted: the unfinished trial keeps all of its (absent here); every ended one its best
    plain.loc[plain["trial_id"] == "t10", "status"] = "unfinished"
    keep = kept_checkpoints(_Analysis(plain), plain)
    assert "t10" not in keep and all(keep[t] for t in keep if t != "t5")


@slow
def test_a_warm_started_search_learns_from_another_experiments_trials_first(tiny_experiment,
                                                                            prepared_root,
                                                                            tmp_path):
    source = tiny_experiment / "ray_results" / "tiny"
    earlier = trials_csv(tiny_experiment, "tiny")
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
    trials = list(study_by_trial(storage, "w", warm=True).values())  # (in the study's order)
    # the earlier search's trials come first, as they ended there, then the 2 new ones
    warm, new = trials[:len(earlier)], trials[len(earlier):]
    assert [t.user_attrs["trial_id"] for t in warm] == earlier["trial_id"].tolist()
    assert all(t.user_attrs["warm_start"] == str(source) for t in warm)
    assert_study_matches_trials_csv({t.user_attrs["trial_id"]: t for t in warm}, earlier)
    table = trials_csv(root, "w")
    assert len(new) == 2 and [t.user_attrs["trial_id"] for t in new] == table["trial_id"].tolist()
    assert all("warm_start" not in t.user_attrs for t in new)


def test_asha_rungs_are_refilled_from_the_restored_searcher_after_a_resume():
    """Tune does not save the scheduler: without the refill, the rungs of a resumed search are
    empty and a new trial far below the earlier ones passes the first rung."""
    from tuning.search.scheduler import StagedASHA

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


class _TuneTrial:
    """What a scheduler reads of a Tune trial."""

    def __init__(self, trial_id: str, config: dict | None = None):
        self.trial_id, self.config = trial_id, config or {"hidden_size": 64}


# per-epoch val_f1 of 6 search trials (fixed numbers): long and short runs, early stops (a curve
# that ends before max_t ends with the trial's own stop), crossing curves
CURVES = {
    "a": [0.50, 0.62, 0.70, 0.74, 0.77, 0.79, 0.80, 0.81, 0.815, 0.82, 0.822, 0.824],
    "b": [0.55, 0.58, 0.61, 0.66, 0.69, 0.71, 0.73, 0.745, 0.75, 0.755, 0.76, 0.765],
    "c": [0.40, 0.52, 0.68, 0.75, 0.78, 0.80, 0.805],
    "d": [0.60, 0.61, 0.615, 0.62, 0.625, 0.63, 0.632, 0.634],
    "e": [0.45, 0.50, 0.53, 0.56, 0.58, 0.59, 0.60, 0.605, 0.61, 0.612],
    "f": [0.58, 0.64, 0.72, 0.76, 0.79, 0.81, 0.82, 0.83, 0.835, 0.84, 0.842],
}


@pytest.mark.parametrize("reduction_factor", [2.5, 3, 1.5])
def test_asha_rungs_refilled_after_a_resume_are_the_rungs_asha_filled_live(reduction_factor):
    """The oracle is Ray's own ASHAScheduler, fed the trials' results as Tune feeds them, side by
    side with the real searcher stack (Intensify over EpochOptunaSearch): after a "resume" (a
    new StagedASHA over that searcher, as Tune rebuilds it), the refilled rungs hold exactly what
    ASHA had recorded live, milestone by milestone (2.5 and 6.25; 1.5, 2.25, 3.375, ...), and
    the first new trial gets the same decision."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from tuning.search.scheduler import StagedASHA

    max_t = 12
    shape = {"time_attr": "epoch", "metric": "val_f1", "mode": "max", "max_t": max_t,
             "grace_period": 1, "reduction_factor": reduction_factor}
    live = ASHAScheduler(**shape)
    searcher, optuna_search = _searcher(top=0, seeds=0, samples=len(CURVES), max_epochs=max_t)
    trials = {t: _TuneTrial(t) for t in CURVES}
    for trial_id, trial in trials.items():
        assert searcher.suggest(trial_id) is not None
        live.on_trial_add(None, trial)
    running = dict(CURVES)
    for epoch in range(1, max_t + 1):  # the trials run side by side, epoch by epoch
        for trial_id, curve in list(running.items()):
            result = {"epoch": epoch, "val_f1": curve[epoch - 1], "training_iteration": epoch}
            stop = live.on_trial_result(None, trials[trial_id], result) == TrialScheduler.STOP
            if not stop and epoch == len(curve):
                # its own stop: the function returns, and Tune hands the scheduler its last
                # result again, done (RESULT_DUPLICATE, tune_controller.py), then ends it
                live.on_trial_result(None, trials[trial_id], {**result, "done": True})
                stop = True
            if stop:  # (ASHA's cut, max_t or its own stop: the searcher hears it only here)
                searcher.on_trial_complete(trial_id, result={**result, "done": True})
                live.on_trial_complete(None, trials[trial_id], result)
                del running[trial_id]
            else:
                searcher.on_trial_result(trial_id, result)
    rungs = dict(live._brackets[0]._rungs)
    # by hand: the milestones (grace x factor^k up to max_t, highest first), and at some of
    # them the epoch whose figure each trial that reached it is recorded with: the first epoch
    # at or past the milestone
    milestones, at_epoch = {
        2.5: ([6.25, 2.5, 1.0], {2.5: 3, 6.25: 7}),
        3: ([9, 3, 1], {3: 3, 9: 9}),
        1.5: ([11.390625, 7.59375, 5.0625, 3.375, 2.25, 1.5, 1.0], {1.5: 2, 2.25: 3, 3.375: 4}),
    }[reduction_factor]
    assert list(rungs) == milestones
    for milestone, epoch in at_epoch.items():
        expected = {t: c[epoch - 1] for t, c in CURVES.items()
                    if len(optuna_search.values[t]) >= epoch}
        assert expected and rungs[milestone] == pytest.approx(expected), milestone

    resumed = StagedASHA(**shape, searcher=optuna_search)  # (the scheduler Tune rebuilds)
    new = _TuneTrial("new", {"hidden_size": 192})
    for scheduler in (live, resumed):
        scheduler.on_trial_add(None, new)
    first = {"epoch": 1, "val_f1": 0.56, "training_iteration": 1}
    assert resumed.on_trial_result(None, new, first) == live.on_trial_result(None, new, first)
    assert [(m, dict(r)) for m, r in resumed._brackets[0]._rungs] == \
        [(m, dict(r)) for m, r in live._brackets[0]._rungs]


def test_an_ended_trial_is_pruned_to_its_best_checkpoint_two_saves_later(tmp_path):
    """While the search runs: once every saved experiment state knows a trial ended (two saves
    after it did, and the state saved in the storage says so), it keeps its best checkpoint only, by Tune's record of its checkpoints (which
    a resume restores: a trial resumed after a kill -9 may have had its best epoch before it,
    unseen by this driver); a running trial keeps all of its."""
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    from tuning.search.retention import Retention

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
    kept = partial(checkpoints_kept, tmp_path)

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
    from tuning.search.stage import Intensify

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
    from tuning.search.retention import Retention

    def trial(trial_id, hidden, best, replicate=0):
        return _stored_trial(tmp_path, trial_id, best,
                             {"hidden_size": hidden, "epochs": 2, "replicate": replicate})

    def save(retention, trials):
        _save_as_ended(retention, tmp_path, trials)

    kept = partial(checkpoints_kept, tmp_path)
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
    from tuning.search.retention import Retention

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
    kept = {t.trial_id: checkpoints_kept(tmp_path, t) for t in [*trials, fast]}
    assert kept["fast"] == ["checkpoint_000001"]  # on the frontier: the fastest measured
    assert kept["t50"] == []  # neither in the top 5 nor on the frontier
    assert all(kept[f"t{h}"] == ["checkpoint_000001"] for h in range(60, 110, 10))


def test_a_poor_seed_of_a_leader_does_not_widen_the_kept_leaders():
    """The tie rule's edge is the 5th configuration's best, not the lowest trial of the top
    configurations: a replicate of the leader with a poor seed kept every configuration."""
    from tuning.search.retention import kept_checkpoints

    rows = [(f"t{h}", "search", h, "completed", f1, h)
            for h, f1 in zip(range(10, 90, 10), (0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9),
                             strict=True)]
    rows.append(("t80r", "intensify", 80, "completed", 0.2, 99))  # the leader, a poor seed
    table = trials_table(rows)
    table["pareto"] = False
    keep = kept_checkpoints(_Analysis(table), table)
    # by hand: the top 5 are 80, 70, 60, 50, 40 (and 80's replicate); 30, 20, 10 are not
    assert {t for t, path in keep.items() if path} == {"t80", "t80r", "t70", "t60", "t50", "t40"}
