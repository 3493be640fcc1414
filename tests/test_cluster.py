"""Scale-out: experiments in an S3-compatible bucket (a moto server on loopback), a two-node Ray
cluster that shares no experiment folder, and the search submitted as a Ray job."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from model.checkpoint import load_checkpoint
from tests.conftest import (
    BUCKET,
    SEARCH_SMALL,
    free_port,
    run_cli,
    search_root,
    start_background,
    stop_group,
)
from tests.helpers import (
    assert_epochs,
    start_search,
    stderr_of,
    trials_csv,
    wait_for,
)

slow = pytest.mark.slow


def _keys(fs, path: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return [i.path for i in infos if i.type == pafs.FileType.File]


def test_storage_paths_keep_the_query_and_never_paste_onto_it(s3):
    from tuning.storage import open_experiment, open_storage

    endpoint, _ = s3
    uri = f"s3://{BUCKET}/runs?endpoint_override={endpoint}&scheme=http"
    storage = open_storage(uri, None)
    assert storage.root == f"{BUCKET}/runs" and not storage.is_local
    assert storage.uri("exp1") == f"s3://{BUCKET}/runs/exp1?endpoint_override={endpoint}&scheme=http"
    storage.write_json({"a": 1}, "exp1", "x.json")
    assert _keys(storage.fs, f"{BUCKET}/runs") == [f"{BUCKET}/runs/exp1/x.json"]
    parent, name = open_experiment(storage.uri("exp1"))
    assert (parent.root, name) == (f"{BUCKET}/runs", "exp1") and parent.read_json(name, "x.json")
    from plumbing.errors import UsageError

    with pytest.raises(UsageError, match="--storage nope://x: not a storage URI"):
        open_storage("nope://x", None)
    local = open_storage("file:///tmp/exps", None)  # a file:// URI is a local folder
    kwargs = local.ray_kwargs()  # (Tune writes a local folder through tuning/atomic_fs.py)
    from tuning.atomic_fs import AtomicLocalHandler

    assert local.is_local and local.root == "/tmp/exps" and kwargs["storage_path"] == "/tmp/exps"
    assert isinstance(kwargs["storage_filesystem"].handler, AtomicLocalHandler)


@slow
def test_a_two_node_search_in_a_bucket_resumes_after_kill_9_and_evaluates_from_the_uri(
        prepared_root, tmp_path, s3):
    """Storage only in the bucket: every checkpoint lands there, trials of both phases (search,
    intensification) run on both nodes, the driver is killed (-9) in the search phase and again
    in the stage, resumed from the URI each time, and evaluate_best from the URI gives the numbers it gives on a local copy of the
    experiment."""
    from ray.cluster_utils import Cluster

    endpoint, fs = s3
    uri = f"s3://{BUCKET}/runs?endpoint_override={endpoint}&scheme=http"
    root = search_root(prepared_root, tmp_path / "driver", with_test=False)
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        args = ["--samples", "4", "--max-epochs", "3", "--grace-period", "3", "--name", "bucket",
                "--address", cluster.address, "--storage", uri, *SEARCH_SMALL, "--subset", "4000",
                "--intensify-top", "2", "--intensify-seeds", "1"]
        proc = start_search(root, args)
        exp = f"{BUCKET}/runs/bucket"
        # killed once the bucket holds the experiment's state and some trial's first checkpoint
        assert wait_for(lambda: any("experiment_state" in k for k in _keys(fs, exp)) and any(
            "/checkpoint_" in k for k in _keys(fs, exp)), timeout=300), stderr_of(proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stderr_of(proc)
        resume = ["--name", "bucket", "--resume", "--storage", uri, "--address", cluster.address]
        # resumed, then killed again in the intensification stage: once the 4 search trials
        # have ended and a replicate has written a checkpoint to the bucket since
        proc = start_search(root, resume)
        log = Path(proc.log.name)
        assert wait_for(lambda: "| 4/6 ended" in log.read_text(), timeout=600), stderr_of(proc)
        search_keys = set(_keys(fs, exp))
        assert wait_for(lambda: any("/checkpoint_" in k for k in set(_keys(fs, exp)) - search_keys),
                        timeout=300), stderr_of(proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stderr_of(proc)
        resumed = run_cli("tuning.search", *resume, root=root)
    finally:
        cluster.shutdown()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (root / "ray_results").exists(), "nothing of the experiment on the driver's disk"
    table = trials_csv(root, "bucket")
    assert len(table) == 6 and (table["status"] == "completed").all()
    assert table["phase"].value_counts().to_dict() == {"search": 4, "intensify": 2}
    keys = _keys(fs, exp)
    nodes = set()
    for trial_id in table["trial_id"]:
        trial = f"{exp}/trial_{trial_id}"
        with fs.open_input_stream(f"{trial}/progress.csv") as f:
            progress = pd.read_csv(f)
        assert_epochs(progress, 3, trial_id)  # a replayed epoch repeats its numbers
        # the search ended: each trial (all of them among the top 5 configurations) keeps its
        # best-validation checkpoint only, in the bucket too (--keep-checkpoints leaders)
        [kept] = [k for k in keys if k.startswith(f"{trial}/checkpoint_")]
        local = tmp_path / f"{trial_id}.pt"
        with fs.open_input_stream(kept) as f:
            local.write_bytes(f.read())
        best = progress.drop_duplicates("epoch").set_index("epoch")["val_f1"].idxmax()
        assert load_checkpoint(local)["epoch"] == best, trial_id
        nodes.update(progress["node_id"])
    assert len(nodes) == 2, "trials ran on both nodes"
    assert f"{BUCKET}/runs/bucket/harness/search_options.json" in keys

    # evaluate from the URI, in a root that never saw the search, and from a local copy
    def evaluate(experiment: str, where) -> dict:
        proc = run_cli("tuning.evaluate_best", "--experiment", experiment,
                       root=search_root(prepared_root, where, with_test=True))
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((where / "artifacts/best/metrics.json").read_text())

    from_uri = evaluate(f"s3://{BUCKET}/runs/bucket?endpoint_override={endpoint}&scheme=http",
                        tmp_path / "eval-uri")
    local = tmp_path / "copy" / "bucket"
    pafs.copy_files(exp, str(local), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    from_copy = evaluate(str(local), tmp_path / "eval-copy")
    # the same numbers (the latency is a timing: the same network, measured twice)
    uri_speed, copy_speed = from_uri.pop("speed"), from_copy.pop("speed")
    assert from_uri == from_copy and from_uri["trial_id"] in set(table["trial_id"])
    assert uri_speed["params"] == copy_speed["params"] > 0


@slow
def test_the_makefiles_cluster_targets_run_a_search_as_a_ray_job_with_token_auth(
        prepared_root, tmp_path):
    """docs/cluster.md's commands as written: `make cluster-up` (a head with token auth on
    loopback, printing the token), `make submit` of a small search (`--address auto`), `make
    job-logs` following it to the end: the job succeeded and its log holds the best-trial line;
    the ray CLI without RAY_AUTH_MODE=token is refused. (`make cluster-down` is `ray stop`,
    which would stop every Ray of this user on the machine: the test ends its head itself.)"""
    import re

    from tests.conftest import REPO, real_data_dir

    root = search_root(prepared_root, tmp_path, with_test=False)
    gcs, dashboard = free_port(), free_port()
    # a home of its own (the token goes to ~/.ray/auth_token); the head records itself under
    # the session's own $RAY_TMPDIR (conftest): the user's Ray, token and sessions are left alone
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(home),
           "EMOTION_ROOT": str(root), "EMOTION_DATA_DIR": str(real_data_dir())}
    env.pop("RAY_AUTH_MODE", None)  # the Makefile sets it
    # this venv, installed already (-o: not remade); ports of the test's own
    make = ["make", "-s", "-C", str(REPO), f"VENV={sys.prefix}", "-o", f"{sys.prefix}/.installed",
            f"RAY_PORT={gcs}", f"DASHBOARD_PORT={dashboard}", "CLUSTER_CPUS=2"]

    def run(*args, timeout=300):
        return subprocess.run([*make, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    # (the head's processes stay in this process group, which the test ends: start_background)
    head_log = open(tmp_path / "head.log", "w+")  # noqa: SIM115 - read below
    head = start_background([*make, "cluster-up"], env=env, stdout=head_log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert head.wait(timeout=300) == 0, (tmp_path / "head.log").read_text()[-3000:]
        token = (home / ".ray" / "auth_token").read_text().strip()
        assert f"token for the dashboard and for workers: {token}" in \
            (tmp_path / "head.log").read_text()
        search_args = f"--max-epochs 1 --name job {' '.join(SEARCH_SMALL)}"
        submitted = run("submit", "SAMPLES=2", f"SEARCH_ARGS={search_args}")
        assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-3000:]
        job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr)[0]
        logs = run("job-logs", f"JOB={job_id}", timeout=600)  # follows the job to its end
        assert logs.returncode == 0, (logs.stdout + logs.stderr)[-3000:]
        assert "best trial" in logs.stdout and "python -m tuning.evaluate_best" in logs.stdout
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        address = f"http://127.0.0.1:{dashboard}"
        status = subprocess.run([ray_cli, "job", "status", "--address", address, job_id],
                                env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True,
                                text=True, timeout=120, check=False)
        assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr
        # without the token mode the CLI is refused: what the docs tell users to set
        no_token = subprocess.run([ray_cli, "job", "status", "--address", address, job_id],
                                  env=env, capture_output=True, text=True, timeout=120,
                                  check=False)
        assert "succeeded" not in no_token.stdout and no_token.returncode != 0
    finally:
        stop_group(head)
    assert len(trials_csv(root, "job")) == 2
    assert (root / "ray_results" / "job").is_dir()


