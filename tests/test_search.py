"""tuning.search on real Ray: outputs, ASHA, kill -9 + resume, retries, a two-node cluster."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from model.checkpoint import load_checkpoint
from plumbing.errors import UsageError
from tests.conftest import (
    SEARCH_SMALL,
    assert_study_matches_trials_csv,
    free_port,
    read_live_csv,
    run_cli,
    search_root,
    start_background,
    stop_group,
    study_by_trial,
)
from tests.helpers import (
    ENDED,
    SNAPSHOT_S,
    asha_cuts_by_hand,
    assert_epochs,
    config_of,
    finished_progress,
    kept_by_retention,
    kill_9,
    saved_trials,
    start_search,
    stderr_of,
    stored_options,
    trials_csv,
    trials_table,
    wait_for,
    wait_for_state_saves,
)
from tuning import points as points_mod
from tuning import space as space_mod

slow = pytest.mark.slow


# ---- the search space and flags (no Ray) ------------------------------------------------------

def test_space_file_overrides_ranges_and_keeps_the_rest(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump({"lr": {"loguniform": [1e-4, 1e-3]}, "rnn": {"choice": ["gru"]},
                                 "hidden_size": 64}))
    space = space_mod.load_space(str(f))
    assert space["lr"] == {"loguniform": [1e-4, 1e-3]} and space["hidden_size"] == 64
    assert space["dropout"] == space_mod.SPACE["dropout"]
    # the default BiLSTM is outside this space (hidden 64, GRU): no starting point
    assert points_mod.known_good_points(space) == []
    assert points_mod.known_good_points(space_mod.SPACE)[0]["hidden_size"] == 128
    study = optuna.create_study()
    trial = study.ask()
    params = {**space_mod.ConditionalSpace(space)(trial), **trial.params}
    assert params["hidden_size"] == 64 and params["rnn"] == "gru" and 1e-4 <= params["lr"] <= 1e-3


@pytest.mark.parametrize("content,needle", [
    ({"hiden_size": {"choice": [64]}}, "'hiden_size'"),
    ({"seed": {"int": [0, 5]}}, "'seed'"),
    ({"lr": {"loguniform": [1e-2, 1e-3]}}, "low < high"),
    ({"lr": {"loguniform": [0, 1e-3]}}, "'lr'"),
    ({"dropout": {"uniform": [0.1]}}, "[low, high]"),
    ({"pooling": {"choice": ["max", "attention"]}}, "'pooling'"),
    ({"num_layers": {"int": [1, 2.5]}}, "integers"),
    ({"batch_size": {"gaussian": [1, 2]}}, "expected one of"),
])
def test_bad_space_files_are_usage_errors(tmp_path, content, needle):
    f = tmp_path / "space.json"
    f.write_text(json.dumps(content))
    with pytest.raises(UsageError, match=needle.replace("[", r"\[")):
        space_mod.load_space(str(f))


@pytest.mark.parametrize("args,needle", [
    (["--samples", "0"], "--samples"), (["--max-epochs", "0"], "--max-epochs"),
    (["--cpus-per-trial", "-1"], "--cpus-per-trial"), (["--gpus-per-trial", "-0.5"], "--gpus"),
    (["--reduction-factor", "1"], "--reduction-factor"),
    (["--grace-period", "5", "--max-epochs", "3"], "--grace-period"),
    (["--time-budget-s", "0"], "--time-budget-s"), (["--name", "a/b"], "--name"),
    (["--name", "my search"], "--name"), (["--name", "a%2Fb"], "--name"), (["--name", "a#1"], "--name"),
    (["--space", "nope.txt"], "--space"), (["--points", "missing.json"], "--points"),
    (["--mlflow", "./mlruns"], "--mlflow"), (["--storage", "nope://bucket"], "--storage"),
    (["--storage", "s3://AKIAX:s3cr/et@bucket/exps"], "AWS_SECRET_ACCESS_KEY"),
    (["--storage", "s3://bucket/exps?access_key=A&secret_key=s3cr/et"], "--storage"),
    (["--mlflow", "http://me:s3cr/et@127.0.0.1:5000"], "MLFLOW_TRACKING_PASSWORD"),
    (["--optuna-storage", "postgresql://me:s3cr/et@127.0.0.1/optuna"], "PGPASSWORD"),
    (["--intensify-top", "-1"], "--intensify-top"), (["--intensify-seeds", "x"], "--intensify-seeds")])
def test_bad_flags_exit_2_with_one_line(root, args, needle):
    proc = run_cli("tuning.search", *args, root=root)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert "s3cr" not in proc.stderr  # a secret in a refused URL is not repeated


def test_the_best_mean_over_seeds_wins_not_the_luckiest_seed():
    from tuning.selection import choose

    trials = trials_table([
        ("a", "search", 64, "completed", 0.925),      # the luckiest single seed
        ("b", "search", 128, "completed", 0.921),
        ("c", "search", 192, "asha_stopped", 0.900),  # not a leader: never replicated
        ("a2", "intensify", 64, "completed", 0.905),
        ("b2", "intensify", 128, "completed", 0.919),
        ("b3", "intensify", 128, "completed", 0.923),
        ("a3", "intensify", 64, "unfinished", 0.990),  # cut short: measures no seed
    ])
    choice = choose(trials)
    # b: mean of 0.921, 0.919, 0.923 = 0.921 beats a: mean of 0.925, 0.905 = 0.915
    assert choice["trial_id"] == "b3"  # the winning configuration's best seed
    assert choice["mean_val_f1"] == pytest.approx(0.921)
    assert choice["std_val_f1"] == pytest.approx(0.002)
    assert [(s["trial_id"], s["val_f1"]) for s in choice["seeds"]] == [
        ("b3", 0.923), ("b", 0.921), ("b2", 0.919)]
    assert [(c["trial_ids"], round(c["mean_val_f1"], 4)) for c in choice["candidates"]] == [
        (["b3", "b", "b2"], 0.921), (["a", "a2"], 0.915)]
    assert "mean validation macro-F1 over seeds" in choice["rule"]
    # without the stage, the best single trial wins, as before intensification
    single = choose(trials[trials["phase"] == "search"])
    assert single["trial_id"] == "a" and single["candidates"] == []
    assert "single trial" in single["rule"]


def test_the_stage_replicates_the_distinct_leaders_in_rounds():
    from tuning.search.stage import replicates

    params = {"t1": {"hidden_size": 64}, "t2": {"hidden_size": 128}, "t3": {"hidden_size": 64},
              "t4": {"hidden_size": 192}, "t5": {"hidden_size": 32}}
    best = {"t1": 0.90, "t2": 0.91, "t3": 0.90, "t4": 0.80}  # t5 reported nothing: not ranked
    assert replicates(params, best, top=2, seeds=2) == [
        {"hidden_size": 128, "replicate": 1}, {"hidden_size": 64, "replicate": 1},
        {"hidden_size": 128, "replicate": 2}, {"hidden_size": 64, "replicate": 2}]
    # fewer distinct configurations than asked for: each of them
    assert len(replicates(params, best, top=10, seeds=1)) == 3


def test_without_processed_data_the_search_says_run_dataprep(root):
    proc = run_cli("tuning.search", "--samples", "1", "--no-dashboard", root=root)
    assert proc.returncode == 1
    assert "python -m dataprep" in proc.stderr and "Traceback" not in proc.stderr


# ---- real searches ----------------------------------------------------------------------------

@slow
def test_tiny_search_writes_every_output_and_asha_stops_early(tiny_experiment):
    root = tiny_experiment
    table = trials_csv(root, "tiny")
    assert len(table) == 6 and table["trial_id"].is_unique
    assert table["phase"].value_counts().to_dict() == {"search": 4, "intensify": 2}
    search = table[table["phase"] == "search"]
    assert set(table["status"]) <= {"completed", "asha_stopped", "early_stopped"}
    # ASHA (grace 1, reduction factor 2, 3 epochs: rungs at epochs 1 and 2, grace x 2^k below
    # 3, each cutting below the median of the values recorded there before) stopped the
    # search trials its rule must stop, and only those, at the epoch it must: worked out here
    # from the trials' curves in the order they ran (one at a time: the fixture's
    # --concurrency 1). With seeded TPE and seeded training that order and those values are
    # the same every run, so the cut is a fixed outcome, not the luck of arrival order; and
    # there is one: some trial falls below the median of those before it at a rung (on the
    # real data, the default BiLSTM goes first and sets the bar: the 2nd and 3rd trials fall
    # below it at epoch 1, the 4th at epoch 2)
    exp = root / "ray_results" / "tiny"
    # the last save's state, bundled whole for a resume (saved_state.py), is Tune's own
    saved = pickle.loads((exp / "harness" / "tune_state.pkl").read_bytes())
    assert len(saved["files"]) == 3
    for template, data in saved["files"].items():
        assert (exp / template.format(saved["session"])).read_bytes() == data
    cut = asha_cuts_by_hand(exp, search, rungs=(1, 2), reduction_factor=2)
    assert cut, "ASHA's rule cuts no trial of this search: the test would show nothing"
    stopped = search[search["status"] == "asha_stopped"]
    assert dict(zip(stopped["trial_id"], stopped["epochs_run"])) == cut
    assert (search["epochs_run"] < 3).any()
    for col in ["embedding_dim", "hidden_size", "lr", "batch_size", "best_val_f1", "last_val_f1",
                "epochs_run", "time_s", "seed"]:
        assert table[col].notna().all(), col
    # the known-good default BiLSTM (points_to_evaluate) is among the trials, exactly
    default = (search["hidden_size"] == 128) & (search["embedding_dim"] == 128) & \
        (search["pooling"] == "max") & (search["lr"] == 0.003) & (search["dropout"] == 0.3)
    assert default.sum() == 1
    # the terminal shows the progress, not a wall of "snapshotting may become a bottleneck"
    log = (root / "search.log").read_text()
    assert "4 trials, then the top 2 again with 1 more seed(s) each, 1 at once" in log
    assert "may become a bottleneck" not in log
    # not a terminal: one line per trial as it ends (its status as trials.csv says, its best
    # figure), no status tables, and Ray's TensorBoard hint for a folder without curves gone
    assert "Trial status:" not in log and "driver_artifacts" not in log
    ended = [line for line in log.splitlines() if line.startswith("trial ")]
    assert len(ended) == len(table)
    for _, row in table.iterrows():
        [line] = [x for x in ended if x.startswith(f"trial {row['trial_id']} ")]
        assert line.startswith(f"trial {row['trial_id']} {row['status']}: "
                               f"{row['epochs_run']} epoch(s), best val_f1 "
                               f"{row['best_val_f1']:.4f} (epoch {row['best_epoch']})"), line
    assert f"{len(table)}/{len(table)} ended" in ended[-1]
    assert len(log.splitlines()) < 60, len(log.splitlines())
    trial_dirs = sorted(exp.glob("trial_*"))
    assert len(trial_dirs) == 6
    for d in trial_dirs:
        progress = pd.read_csv(d / "progress.csv")
        # val_f1 reported every epoch, epochs 1..n in order
        assert progress["epoch"].tolist() == list(range(1, len(progress) + 1))
        assert progress["val_f1"].notna().all()
        assert list(d.glob("events.out.tfevents.*")), "TensorBoard events per trial"
        # once the search ended, each trial of the top 5 configurations (all of them here)
        # keeps its best-validation checkpoint only (--keep-checkpoints leaders)
        [kept] = d.glob("checkpoint_*")
        row = table[table["trial_id"] == d.name.removeprefix("trial_")].iloc[0]
        assert load_checkpoint(kept / "state.pt")["epoch"] == row["best_epoch"]
    assert "checkpoints: 6 kept, " in log


def _phases_on_the_leaders(table: pd.DataFrame, top: int):
    """trials.csv's search and intensification rows (a `config` column added to `table`: its
    hyperparameters, `config_of`), once asserted that the replicated configurations are the
    search's `top` distinct ones by best val_f1 (of equals, the earlier trial's)."""
    table["config"] = [config_of(row) for _, row in table.iterrows()]
    search, again = table[table["phase"] == "search"], table[table["phase"] == "intensify"]
    leaders = search.sort_values("best_val_f1", ascending=False, kind="stable")\
        .drop_duplicates("config").head(top)
    assert sorted(again["config"]) == sorted(leaders["config"])  # (one more seed each)
    return search, again


@slow
def test_intensification_reruns_the_top_configurations_and_the_best_mean_wins(tiny_experiment):
    """The stage after the search: the 2 best distinct configurations by val_f1 run again with
    a seed of their own for every epoch (ASHA leaves them alone), and the winner is the
    configuration with the best mean val_f1 over its seeds: not the best single trial."""
    root = tiny_experiment
    table = trials_csv(root, "tiny")
    search, again = _phases_on_the_leaders(table, top=2)
    assert (again["replicate"] == 1).all() and (search["replicate"] == 0).all()
    assert (again["epochs_run"] == 3).all() and (again["status"] == "completed").all()
    for _, row in again.iterrows():  # a seed of its own, not its search twin's
        assert row["seed"] not in set(search.loc[search["config"] == row["config"], "seed"])
    means = table[table["config"].isin(set(again["config"]))].groupby("config")["best_val_f1"].mean()
    winning = means.idxmax()
    seeds = table[table["config"] == winning]
    best = json.loads((root / "artifacts/search/tiny/best_config.json").read_text())
    choice = best["selection"]
    assert choice["mean_val_f1"] == pytest.approx(means[winning])
    assert [s["trial_id"] for s in choice["seeds"]] == \
        seeds.sort_values("best_val_f1", ascending=False)["trial_id"].tolist()
    # the model kept is the winning configuration's best seed, with its own seed and figure
    row = seeds.loc[seeds["best_val_f1"].idxmax()]
    assert best["trial_id"] == row["trial_id"] and best["seed"] == row["seed"]
    assert best["val_f1"] == pytest.approx(row["best_val_f1"])
    assert [c["rank"] for c in choice["candidates"]] == [1, 2]
    assert choice["candidates"][0]["mean_val_f1"] >= choice["candidates"][1]["mean_val_f1"]
    log = (root / "search.log").read_text()
    assert f"winner: mean val_f1 {means[winning]:.4f}" in log


@slow
def test_a_second_search_with_the_same_name_is_refused(tiny_experiment):
    proc = run_cli("tuning.search", "--samples", "1", "--name", "tiny", *SEARCH_SMALL,
                   root=tiny_experiment)
    assert proc.returncode == 2 and "--resume" in proc.stderr


@slow
def test_a_trial_that_crashes_is_retried_from_its_checkpoint(prepared_root, tmp_path):
    root = search_root(prepared_root, tmp_path, with_test=False)
    proc = run_cli("tuning.search", "--samples", "2", "--max-epochs", "2", "--grace-period", "2",
                   "--name", "flaky", *SEARCH_SMALL, root=root, env={"EMOTION_FAULT_EPOCH": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = trials_csv(root, "flaky")
    assert len(table) == 2 and (table["status"] == "completed").all()
    assert (table["epochs_run"] == 2).all() and (table["failures"] == 1).all()
    for d in (root / "ray_results" / "flaky").glob("trial_*"):
        # each trial failed once after epoch 1, and went on from that epoch's checkpoint
        assert "injected fault after epoch 1" in (d / "error.txt").read_text()
        assert pd.read_csv(d / "progress.csv")["epoch"].tolist() == [1, 2]


@slow
def test_a_diverged_trial_ends_once_with_its_own_status_and_the_search_goes_on(prepared_root,
                                                                              tmp_path):
    root = search_root(prepared_root, tmp_path, with_test=False)
    args = ["--samples", "3", "--max-epochs", "3", "--grace-period", "3", "--name", "diverging",
            *SEARCH_SMALL]
    # every trial's training loss reads as NaN from epoch 2 on
    fault = {"EMOTION_FAULT_DIVERGE_EPOCH": "2"}
    proc = run_cli("tuning.search", *args, root=root, env=fault)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = trials_csv(root, "diverging")
    assert len(table) == 3 and (table["status"] == "diverged").all()
    assert (table["epochs_run"] == 2).all() and (table["last_val_f1"] == 0.0).all()
    assert (table["best_val_f1"] > 0.0).all()  # epoch 1 was fine and stays ranked
    assert "best trial" in proc.stderr
    exp = root / "ray_results" / "diverging"
    before = {}
    for d in exp.glob("trial_*"):
        assert not (d / "error.txt").exists(), "a diverged trial is not an error to retry"
        before[d.name] = (d / "progress.csv").read_bytes()
        assert pd.read_csv(d / "progress.csv")["epoch"].tolist() == [1, 2]
    # resuming the finished experiment runs none of them again
    proc = run_cli("tuning.search", *args, "--resume", root=root, env=fault)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {d.name: (d / "progress.csv").read_bytes() for d in exp.glob("trial_*")} == before


@slow
def test_default_concurrency_and_the_dashboard_login_hint(prepared_root, tmp_path):
    """Pinned to one CPU (taskset), the search runs one trial at once whatever the machine has,
    and it tells how to get past the dashboard's token prompt. A cluster that `ray start` runs
    on this machine (a user's own, 5 CPUs) is left alone: the search starts its own."""
    assert (os.cpu_count() or 1) > 1, "precondition: a machine of several CPUs"
    root = search_root(prepared_root, tmp_path, with_test=False)
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    # (--block: its processes stay in the group the test ends; it records itself under
    # $RAY_TMPDIR/ray, where a bare ray.init() would find and join it)
    users_ray = start_background([ray_cli, "start", "--head", "--block", "--port", str(free_port()),
                                  "--num-cpus", "5", "--include-dashboard", "false"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    current = Path(os.environ["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
    assert wait_for(current.is_file, timeout=120)
    port = free_port()
    proc = run_cli("tuning.search", "--samples", "1", "--max-epochs", "1", "--name", "pinned",
                   "--subset", "300", "--dashboard-port", str(port), "--intensify-top", "0",
                   root=root,
                   prefix=("taskset", "-c", "0"))
    stop_group(users_ray, grace=2)  # (`ray start --block` takes its time over SIGTERM)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 trials, 1 at once" in proc.stderr
    assert stored_options((root / "artifacts/search/pinned/search_options.json").read_text())[
        "concurrency"] == 1
    hint = next(line for line in proc.stderr.splitlines() if line.startswith("Ray dashboard:"))
    assert f"127.0.0.1:{port}" in hint and "ray get-auth-token" in hint
    assert "RAY_AUTH_MODE=token" in hint


def test_default_concurrency_fits_the_clusters_resources():
    from tuning.search.cluster import default_concurrency

    assert default_concurrency({"CPU": 8.0}, 2, 0.0) == 4
    assert default_concurrency({"CPU": 8.0, "GPU": 1.0}, 1, 0.5) == 2
    assert default_concurrency({"CPU": 1.0}, 4, 0.0) == 1  # one trial waits for nothing less


@slow
def test_the_winner_retrains_from_its_best_config_and_its_params_to_the_same_numbers(
        tiny_experiment):
    root = tiny_experiment
    best_file = root / "artifacts/search/tiny/best_config.json"
    best = json.loads(best_file.read_text())
    trial_dir = root / "ray_results/tiny" / f"trial_{best['trial_id']}"
    curve = pd.read_csv(trial_dir / "progress.csv")["val_f1"].tolist()
    for config_file in (best_file, trial_dir / "params.json"):
        proc = run_cli("model.train", "--config", str(config_file), "--subset", "1500", root=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout.splitlines()[-1])
        log = pd.read_csv((root / summary["checkpoint"]).parent / "log.csv")
        # the search may have stopped it early; the retrain runs on from the same numbers
        assert log["val_f1"].tolist()[:len(curve)] == curve, config_file.name
        assert load_checkpoint(root / summary["checkpoint"])["config"]["seed"] == best["seed"]


def _replicate_epochs(exp) -> dict[str, int]:
    """The intensification trials' folders so far, and the epochs each has reported."""
    found = {}
    for d in exp.glob("trial_*"):
        try:   # Tune may be writing params.json right now; then it is not known yet
            params = json.loads((d / "params.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if params.get("replicate"):
            found[d.name] = len(read_live_csv(d / "progress.csv"))
    return found


@slow
def test_kill_9_of_the_driver_twice_then_resume_accounts_for_every_trial(prepared_root, tmp_path,
                                                                         monkeypatch):
    """Killed once in the search phase and once in the intensification stage, then resumed:
    every trial of both phases once, the stage on the search's leaders, nothing run twice."""
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_S))
    root = search_root(prepared_root, tmp_path, with_test=False)
    exp = root / "ray_results" / "killed"
    # 8 trials of 4,000 rows, 2 at once on any machine: the first kill (one finished trial and
    # two state saves later) comes before all have started; 3 replicates, 2 at once: the second
    # (a replicate's first epoch and two state saves later) before the stage is done
    samples, top = 8, 3
    driver = start_search(root, ["--samples", str(samples), "--max-epochs", "3", "--grace-period", "3",
                                  "--name", "killed", *SEARCH_SMALL, "--subset", "4000",
                                  "--concurrency", "2", "--intensify-top", str(top),
                                  "--intensify-seeds", "1",
                                  "--optuna-storage", f"sqlite:///{root / 'optuna.db'}"])
    kill_when = [lambda: len(finished_progress(exp, 3)) >= 1,        # a search trial finished
                 lambda: any(n >= 1 for n in _replicate_epochs(exp).values())]  # a replicate ran
    for round_, ready in enumerate(kill_when):
        assert wait_for(ready), f"round {round_}: not reached; {stderr_of(driver)[-2000:]}"
        # what finished before the last save of the experiment state is never run again; a
        # trial that reported after it redoes those epochs
        finished_before = finished_progress(exp, 3)
        assert wait_for_state_saves(exp), stderr_of(driver)[-2000:]
        kill_9(driver)
        # it landed before the phase it came in was done: search trials, then replicates, to end
        saved = saved_trials(root / "ray_results", "killed")
        assert sum(s in ENDED for s in saved.values()) < samples + round_ * top, (round_, saved)
        if round_ == 0:
            started_at_first_kill = len(list(exp.glob("trial_*")))
        else:
            replicates_at_second_kill = _replicate_epochs(exp)
        driver = start_search(root, ["--name", "killed", "--resume", "--no-dashboard"])
    driver.wait(timeout=600)
    assert driver.returncode == 0, stderr_of(driver)[-3000:]

    table = trials_csv(root, "killed")
    assert len(table) == samples + top and table["trial_id"].is_unique  # none lost or doubled
    assert started_at_first_kill < samples  # so the restored searcher started the others
    # the second kill came in the stage, before it was done
    reps = replicates_at_second_kill
    assert len(reps) < top or any(n < 3 for n in reps.values()), reps
    assert set(table["status"]) <= {"completed", "asha_stopped", "early_stopped"}
    assert (table["epochs_run"] == 3).all()  # grace 3 = max epochs: ASHA stops none here
    search, again = _phases_on_the_leaders(table, top=top)
    assert len(search) == samples and len(again) == top and again["config"].is_unique
    after = finished_progress(exp, 3)
    for name, data in finished_before.items():
        assert after[name] == data, f"{name} finished before a kill and was run again"
    keeping = kept_by_retention(table)  # (the top 5, the replicated, the frontier)
    for trial_id, config in zip(table["trial_id"], table["config"], strict=True):
        # (a trial started after the last saved state of a killed driver is unknown to the
        # experiment: its folder stays, and is not in the table)
        progress = pd.read_csv(exp / f"trial_{trial_id}" / "progress.csv")
        assert_epochs(progress, 3, trial_id)
        # its best epoch's checkpoint, though that epoch may have come before a kill
        kept = list((exp / f"trial_{trial_id}").glob("checkpoint_*"))
        if config in keeping:
            best = progress.drop_duplicates("epoch").set_index("epoch")["val_f1"].idxmax()
            assert [load_checkpoint(k / "state.pt")["epoch"] for k in kept] == [best], trial_id
        else:
            assert kept == [], trial_id
    # the stored study ends as trials.csv says, though a resumed trial may have finished there
    # before the kill
    assert_study_matches_trials_csv(study_by_trial(f"sqlite:///{root / 'optuna.db'}", "killed"),
                                    table)


# ---- --points: configurations the searcher tries first -----------------------------------------

@pytest.mark.parametrize("content,needle", [
    ({"lr": 1e-3}, "list of mappings"),
    ([{"lr": 0.5}], "outside the search space"),
    ([{"lr": 1e-3}, {"hidden": 64}], "point 2: 'hidden'"),
    ([{"num_layers": 2}], "num_layers=2 is outside"),
    ([{"pooling": "attention"}], "'pooling'"),
])
def test_bad_points_files_are_usage_errors(tmp_path, content, needle):
    f = tmp_path / "points.json"
    f.write_text(json.dumps(content))
    with pytest.raises(UsageError, match=needle):
        points_mod.load_points(str(f), space_mod.SPACE)


def test_points_keep_searched_keys_and_accept_a_trials_params(tmp_path):
    f = tmp_path / "points.yaml"
    # a trial's params.json as written by Ray: fixed keys and search settings included
    f.write_text("- {lr: 0.002, hidden_size: 192, num_layers: 1, epochs: 4, search_seed: 0}\n"
                 "- {dropout: 0.2}\n")
    assert points_mod.load_points(str(f), space_mod.SPACE) == [
        {"lr": 0.002, "hidden_size": 192}, {"dropout": 0.2}]


@slow
def test_points_replay_an_earlier_search_to_the_same_numbers(tiny_experiment, tmp_path):
    """Another search given the tiny search's trials as --points runs exactly those trials, with
    the same derived seeds and the same val_f1 epoch by epoch (what asha_vs_fifo relies on)."""
    root = tiny_experiment
    earlier = {}
    for d in (root / "ray_results/tiny").glob("trial_*"):
        params = json.loads((d / "params.json").read_text())
        if params.get("replicate"):  # the same configurations again, with other seeds
            continue
        earlier[json.dumps(points_mod.points_in_space([params], space_mod.SPACE), sort_keys=True)] = \
            pd.read_csv(d / "progress.csv")["val_f1"].tolist()
    points = tmp_path / "points.json"
    points.write_text(json.dumps([json.loads(k)[0] for k in earlier]))
    proc = run_cli("tuning.search", "--samples", str(len(earlier)), "--max-epochs", "3",
                   "--grace-period", "3", "--points", str(points), "--name", "replay",
                   *SEARCH_SMALL, root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    replayed = {}
    for d in (root / "ray_results/replay").glob("trial_*"):
        params = json.loads((d / "params.json").read_text())
        replayed[json.dumps(points_mod.points_in_space([params], space_mod.SPACE), sort_keys=True)] = \
            pd.read_csv(d / "progress.csv")["val_f1"].tolist()
    assert replayed.keys() == earlier.keys()
    for key, curve in earlier.items():
        # the earlier run may have been stopped by ASHA; the replay ran all 3 epochs
        assert replayed[key][:len(curve)] == curve, key


@slow
def test_the_base_install_searches_and_evaluates_without_mlflow(prepared_root, tmp_path):
    """MLflow is an extra (`.[tracking]`): with it not importable, a search and its evaluation
    run, and `--mlflow` is a one-line usage error naming the extra."""
    hidden = tmp_path / "hide" / "mlflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mlflow' (hidden by the test)\")\n")
    env = {"PYTHONPATH": str(hidden.parent)}
    root = search_root(prepared_root, tmp_path / "root", with_test=True)
    probe = run_cli("tuning.search", "--samples", "1", "--name", "tracked", "--mlflow",
                    *SEARCH_SMALL, root=root, env=env)
    assert probe.returncode == 2, probe.stderr[-2000:]
    [line] = probe.stderr.strip().splitlines()
    assert line.endswith("error: --mlflow: MLflow is not installed (pip install -e \".[tracking]\")")
    proc = run_cli("tuning.search", "--samples", "1", "--max-epochs", "1", "--name", "lean",
                   *SEARCH_SMALL, "--subset", "300", root=root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/lean", root=root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((root / "artifacts/best/metrics.json").read_text())
    assert metrics["trial_id"] == trials_csv(root, "lean")["trial_id"].iloc[0]
