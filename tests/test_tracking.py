"""MLflow tracking (--mlflow): one run per trial, resumable, evaluate_best's run, a tracking server;
and YAML configs for model.train."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import (
    SEARCH_SMALL,
    free_port,
    run_cli,
    search_root,
    start_background,
    stop_group,
)
from tests.helpers import (
    ENDED,
    SNAPSHOT_S,
    answers,
    finished_progress,
    kill_9,
    progress_rows,
    saved_trials,
    start_search,
    stderr_of,
    trials_csv,
    wait_for,
)
from tuning.results.tables import CONFIG_COLUMNS

slow = pytest.mark.slow


def _runs(uri: str, experiment: str, phase: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client, client.search_runs([exp.experiment_id], f"tags.phase = '{phase}'")


HISTORIES = ["val_f1", "val_acc", "val_loss", "train_loss", "lr"]


def _assert_runs_match_the_trials(uri: str, root, name: str) -> None:
    """One run per trial, named trial_<id>, tagged with its phase and status: params equal to
    trials.csv, the per-epoch histories (val macro-F1 and accuracy, losses, lr) equal to
    Tune's."""
    table = trials_csv(root, name).set_index("trial_id")
    runs = []
    for phase in ("search", "intensify"):
        client, in_phase = _runs(uri, name, phase)
        assert sorted(r.data.tags["trial_id"] for r in in_phase) == \
            sorted(table.index[table["phase"] == phase]), phase
        runs += in_phase
    for run in runs:
        trial_id = run.data.tags["trial_id"]
        row = table.loc[trial_id]
        for key in [*CONFIG_COLUMNS, "seed"]:
            if pd.isna(row[key]):  # a seed known from its first report (none), or a key of
                assert key == "seed" or key not in run.data.params  # another family: not logged
                continue
            logged, expected = run.data.params[key], row[key]
            assert (float(logged) == float(expected) if isinstance(expected, float)
                    else logged == str(expected)), (trial_id, key, logged, expected)
        assert run.info.run_name == f"trial_{trial_id}"
        assert run.data.tags["status"] == row["status"]
        assert run.info.status == ("FAILED" if row["status"] == "error" else "FINISHED")
        progress_csv = root / "ray_results" / name / f"trial_{trial_id}" / "progress.csv"
        if row["epochs_run"] == 0:  # (a trial that crashed at every start reported nothing)
            assert client.get_metric_history(run.info.run_id, "val_f1") == []
            continue
        progress = pd.read_csv(progress_csv)
        for metric in HISTORIES:
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}
            finite = progress[progress[metric].map(math.isfinite)]  # (a diverged loss is not logged)
            assert history == pytest.approx(dict(zip(finite["epoch"], finite[metric]))), \
                (trial_id, metric)


@slow
def test_a_tracked_search_has_one_run_per_trial_after_kill_9_and_gets_its_evaluation(
        prepared_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_S))
    root = search_root(prepared_root, tmp_path, with_test=False)
    uri = f"sqlite:///{root / 'artifacts' / 'mlflow.db'}"
    exp = root / "ray_results" / "tracked"
    # two trials at a time on any machine: when the first has finished, two are yet to start
    driver = start_search(root, ["--samples", "4", "--max-epochs", "3", "--grace-period", "3",
                                  "--name", "tracked", "--mlflow", *SEARCH_SMALL, "--subset",
                                  "4000", "--concurrency", "2"])
    assert wait_for(lambda: len(finished_progress(exp, 3)) >= 1), stderr_of(driver)
    kill_9(driver)
    # the kill landed before the work ended: trials the saved state has yet to end
    saved = saved_trials(root / "ray_results", "tracked")
    assert sum(s in ENDED for s in saved.values()) < 4, saved
    rows_at_kill = progress_rows(exp)
    proc = run_cli("tuning.search", "--name", "tracked", "--resume", "--no-dashboard", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert progress_rows(exp) > rows_at_kill  # the resume ran what the kill had left
    _assert_runs_match_the_trials(uri, root, "tracked")  # the resume added no duplicate run

    shutil.copy(prepared_root / "data/processed/test.parquet", root / "data/processed/test.parquet")
    # evaluated where the search's SQLite store is not (another machine): refused before the
    # test pass, not logged into a new empty database
    db = root / "artifacts" / "mlflow.db"
    db.rename(root / "elsewhere.db")
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/tracked", root=root)
    assert proc.returncode == 1 and "not on this machine" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "test accuracy" not in proc.stderr
    assert not db.exists() and not (root / "artifacts/best").exists()
    (root / "elsewhere.db").rename(db)
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/tracked", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((root / "artifacts/best/metrics.json").read_text())
    client, [evaluation] = _runs(uri, "tracked", "evaluate")
    assert evaluation.data.metrics["test_accuracy"] == metrics["accuracy"]
    assert evaluation.data.metrics["test_f1_macro"] == metrics["f1_macro"]
    assert evaluation.data.tags["trial_id"] == metrics["trial_id"]
    logged = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"report.md", "model.pt", "classification_report.csv", "confusion_matrix.png"} <= logged
    versions = client.search_model_versions("name = 'emotion-lstm'")
    assert [v.run_id for v in versions] == [evaluation.info.run_id]
    _assert_the_registered_model_takes_texts(uri, root)


def _predict_cli(root, texts: list[str]) -> dict[str, dict]:
    proc = run_cli("tuning.predict", "--json", *texts, root=root)
    assert proc.returncode == 0, proc.stderr
    return {row["text"]: row for row in map(json.loads, proc.stdout.splitlines())}


def _assert_the_registered_model_takes_texts(uri: str, root) -> None:
    """MLflow's own clients, given what a user has (texts): mlflow.pyfunc.load_model and
    `mlflow models serve` on loopback answer as `python -m tuning.predict` does."""
    import mlflow.pyfunc

    from dataprep.schema import LABELS

    texts = ["i feel so happy and grateful today", "i am terrified of what comes next",
             "this makes me so angry"]
    expected = _predict_cli(root, texts)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/emotion-lstm/1")
    got = model.predict(pd.DataFrame({"text": [*texts, ""]}))
    assert list(got.columns) == ["label", *LABELS]
    for i, text in enumerate(texts):
        assert got["label"][i] == expected[text]["label"], text
        for label in LABELS:
            assert got[label][i] == pytest.approx(expected[text]["probabilities"][label], abs=1e-6)
    assert got.loc[:2, list(LABELS)].sum(axis=1).tolist() == pytest.approx([1.0] * 3)
    assert pd.isna(got["label"][3])  # a text with no token: no label, the batch still answered

    port = free_port()
    server = start_background(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
         "models:/emotion-lstm/1", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        # (the server runs uvicorn from the venv's bin, as in an activated venv)
        env={**os.environ, "MLFLOW_TRACKING_URI": uri,
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), timeout=120), \
            "mlflow models serve did not start"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", method="POST",
            data=json.dumps({"dataframe_records": [{"text": t} for t in texts]}).encode(),
            headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
        assert [row["label"] for row in answer] == [expected[t]["label"] for t in texts]
        assert answer[0]["joy"] == pytest.approx(expected[texts[0]]["probabilities"]["joy"],
                                                 abs=1e-6)
    finally:
        stop_group(server)  # the server and the workers it started


@slow
def test_a_search_logs_to_an_mlflow_tracking_server(prepared_root, tmp_path):
    """The multi-node way: an `mlflow server` (here on loopback), the search given its URL; a
    trial that crashes at every start is tagged `error`, trials whose loss turns NaN
    `diverged`; evaluate_best logs its run and registers its model on the server."""
    root = search_root(prepared_root, tmp_path / "root", with_test=False)
    port = free_port()
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    server = start_background(
        [mlflow_cli, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: answers(f"{uri}/health"), timeout=120), "mlflow server did not start"
        # the two known-good points are the two trials: hidden 128 and hidden 192
        faults = {"EMOTION_FAULT_CRASH_IF": "hidden_size=192", "EMOTION_FAULT_DIVERGE_EPOCH": "2"}
        proc = run_cli("tuning.search", "--samples", "2", "--max-epochs", "2", "--grace-period",
                       "2", "--name", "served", "--mlflow", uri, *SEARCH_SMALL,
                       "--intensify-top", "1", "--intensify-seeds", "1", root=root, env=faults)
        assert proc.returncode == 0, proc.stderr[-3000:]
        table = trials_csv(root, "served")
        assert (table["phase"] == "intensify").sum() == 1
        assert table.set_index("hidden_size")["status"].to_dict() == {128: "diverged",
                                                                       192: "error"}
        _assert_runs_match_the_trials(uri, root, "served")  # (tags included)
        shutil.copy(prepared_root / "data/processed/test.parquet",
                    root / "data/processed/test.parquet")
        proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/served", root=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads((root / "artifacts/best/metrics.json").read_text())
        client, [evaluation] = _runs(uri, "served", "evaluate")
        assert evaluation.data.metrics["test_accuracy"] == metrics["accuracy"]
        assert "model.pt" in {a.path for a in client.list_artifacts(evaluation.info.run_id)}
        versions = client.search_model_versions("name = 'emotion-lstm'")
        assert [v.run_id for v in versions] == [evaluation.info.run_id]
    finally:
        stop_group(server)  # the server and its workers


def test_model_train_reads_yaml_configs_with_the_same_one_line_errors(prepared_root, tmp_path):
    good = tmp_path / "small.yaml"
    good.write_text("embedding_dim: 16\nhidden_size: 16\nbatch_size: 256\nepochs: 1\n")
    proc = run_cli("model.train", "--config", str(good), "--subset", "300", root=prepared_root)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    config = json.loads((prepared_root / summary["checkpoint"]).parent.joinpath("config.json")
                        .read_text())
    assert config["hidden_size"] == 16 and config["epochs"] == 1
    for text, needle in (("hiden_size: 8\n", "'hiden_size'"), ("lr: [1, 2\n", "cannot parse"),
                         ("lr: -1\n", "'lr'")):
        bad = tmp_path / "bad.yml"
        bad.write_text(text)
        proc = run_cli("model.train", "--config", str(bad), root=prepared_root)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


class _Trial:
    """What TrialRuns reads of a Tune trial (hashable, as Tune's are)."""

    def __init__(self, trial_id: str):
        self.trial_id, self.config = trial_id, {"hidden_size": 64, "search_seed": 0, "epochs": 3}


def test_a_trial_run_is_found_in_its_own_search_only(tmp_path):
    """A resumed trial finds its run by trial id within its search; never evaluate_best's run
    (tagged with the winner's trial id), never another search's of the same MLflow name; and a
    search's orphan cleanup leaves the namesake's runs alone."""
    from mlflow.tracking import MlflowClient

    from tuning.tracking import TrialRuns, drop_orphan_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mine = TrialRuns(uri, "x", 3, search_id="mine")
    mine.setup()
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("x").experiment_id
    evaluation = client.create_run(exp_id, tags={"phase": "evaluate", "trial_id": "t1",
                                                 "search_id": "mine"})
    client.set_terminated(evaluation.info.run_id, "FINISHED")
    namesake = client.create_run(exp_id, tags={"phase": "search", "trial_id": "t9",
                                               "search_id": "theirs", "status": "completed"})
    client.set_terminated(namesake.info.run_id, "FINISHED")
    trial = _Trial("t1")
    mine.log_trial_start(trial)
    assert mine._trial_runs[trial] not in (evaluation.info.run_id, namesake.info.run_id)
    assert client.get_run(evaluation.info.run_id).info.status == "FINISHED"
    # a resumed driver (a new callback, as unpickled) finds the trial's own run again
    resumed = TrialRuns(uri, "x", 3, search_id="mine")
    resumed.setup()
    resumed.log_trial_start(_Trial("t1"))
    assert list(resumed._trial_runs.values()) == [mine._trial_runs[trial]]
    assert drop_orphan_runs(uri, "x", ["t1"], "mine") == 0
    assert client.get_run(namesake.info.run_id).info.lifecycle_stage == "active"
