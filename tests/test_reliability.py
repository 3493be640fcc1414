"""Reliability: signals, a killed trial worker, disk trouble, hostile data, exposure."""
from __future__ import annotations

import errno
import json
import os
import signal
import time

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataprep import build
from plumbing.cli import run_main
from plumbing.errors import DataError
from plumbing.paths import paths
from tests.conftest import SEARCH_SMALL, read_live_csv, run_cli, search_root
from tests.helpers import (
    ENDED,
    SNAPSHOT_S,
    progress_rows,
    saved_trials,
    start_search,
    stderr_of,
    trials_csv,
    wait_for,
)
from tests.test_dataprep import ROWS, outputs_digest, write_txt

slow = pytest.mark.slow


# ---- signals and concurrent searches ----------------------------------------------------------

@slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_search_saves_it_and_prints_the_resume_command(prepared_root, tmp_path,
                                                                          sig, monkeypatch):
    # trial files reach the experiment folder when Tune saves its state: every second here, so
    # the first report shows while the search runs, whatever the CPU's speed
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_S))
    root = search_root(prepared_root, tmp_path, with_test=False)
    exp = root / "ray_results" / "stopme"
    # 4,000 rows, two trials at a time on any machine: the signal lands while most are still
    # to run
    driver = start_search(root, ["--samples", "6", "--max-epochs", "3", "--name", "stopme",
                                  *SEARCH_SMALL, "--subset", "4000", "--concurrency", "2"])
    assert wait_for(lambda: progress_rows(exp) >= 1), "the search never reported"
    if sig == signal.SIGTERM:  # while it runs, a second search of the same name is refused
        second = run_cli("tuning.search", "--samples", "1", "--name", "stopme", *SEARCH_SMALL,
                         root=root)
        assert second.returncode == 2 and "another search is running" in second.stderr
    sent = time.time()
    driver.send_signal(sig)
    driver.wait(timeout=180)
    stopped_after = time.time() - sent  # within a minute (a hang would take the whole timeout)
    err = stderr_of(driver)
    assert driver.returncode == 130, err[-3000:]
    assert stopped_after < 60
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.endswith("resume with: python -m tuning.search --name stopme --resume"), last
    # it stopped the search, not a search that was done: the saved state has trials to run
    saved = saved_trials(root / "ray_results", "stopme")
    assert sum(s in ENDED for s in saved.values()) < 6, saved
    rows_at_stop = progress_rows(exp)
    # the experiment was saved: it can be resumed to the end (after Ctrl-C too)
    proc = run_cli("tuning.search", "--name", "stopme", "--resume", "--no-dashboard", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert progress_rows(exp) > rows_at_stop  # the resume ran what the signal had left
    table = trials_csv(root, "stopme")
    assert len(table) == 6 and table["trial_id"].is_unique
    assert set(table["status"]) <= {"completed", "asha_stopped", "early_stopped"}


@slow
def test_a_killed_trial_worker_resumes_from_its_last_checkpoint(prepared_root, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_S))  # (as above)
    root = search_root(prepared_root, tmp_path, with_test=False)
    exp = root / "ray_results" / "worker"
    driver = start_search(root, ["--samples", "1", "--max-epochs", "8", "--name", "worker",
                                  "--subset", "4000", "--no-dashboard"])
    assert wait_for(lambda: progress_rows(exp) >= 1), "no epoch reported"
    # kill -9 the process running this search's trial, mid-epoch 2: the pid its own report
    # names (never a process found by name on the host: it could be anyone's)
    [progress] = exp.glob("trial_*/progress.csv")
    pid = int(read_live_csv(progress)["pid"].iloc[-1])
    os.kill(pid, signal.SIGKILL)
    driver.wait(timeout=600)
    assert driver.returncode == 0, stderr_of(driver)[-3000:]
    table = trials_csv(root, "worker")
    assert table["status"].tolist() == ["completed"] and table["epochs_run"].tolist() == [8]
    trial_dir = next(exp.glob("trial_*"))
    epochs = pd.read_csv(trial_dir / "progress.csv")["epoch"].tolist()
    assert epochs == list(range(1, 9))  # continued from the checkpoint: none twice, none missing
    assert (trial_dir / "error.txt").is_file()  # the crash was recorded


# ---- disk trouble -----------------------------------------------------------------------------

def test_an_unwritable_artifacts_folder_is_a_clear_error(root):
    src = write_txt(root / "src")
    (root / "artifacts").write_text("not a folder")
    proc = run_cli("dataprep", "--source", str(src), root=root)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert "artifacts" in line and "Traceback" not in proc.stderr
    assert not (root / "data/processed/train.parquet").exists()  # nothing half-written


def test_an_unwritable_ray_results_is_a_clear_error_before_ray_starts(prepared_root, tmp_path):
    root = search_root(prepared_root, tmp_path, with_test=False)
    (root / "ray_results").write_text("not a folder")
    proc = run_cli("tuning.search", "--samples", "1", "--name", "nowhere", *SEARCH_SMALL,
                   root=root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"{root}/ray_results/nowhere: Not a directory")
    assert "Started a local Ray instance" not in proc.stderr


def test_a_full_disk_while_saving_leaves_the_previous_outputs(root, monkeypatch, capsys):
    import pyarrow.parquet as pq

    src = write_txt(root / "src")
    build.run(paths(root), src, log=lambda *_: None)
    before = outputs_digest(root)
    real_write = pq.write_table
    calls = []

    def full_disk(table, where, **kw):
        calls.append(where)
        if len(calls) == 2:  # the second file: one output already written to its temp file
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real_write(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", full_disk)
    from dataprep.__main__ import main

    code = run_main(main, "python -m dataprep", ["--source", str(src), "--force"])
    assert code == 1
    assert "No space left on device" in capsys.readouterr().err
    assert outputs_digest(root) == before
    assert not [f for f in root.rglob("*.tmp")]


@slow
def test_evaluate_best_on_a_full_disk_keeps_the_previous_report(evaluated_root, monkeypatch,
                                                                capsys):
    import torch

    root = evaluated_root
    monkeypatch.setenv("EMOTION_ROOT", str(root))
    before = {p.name: p.read_bytes() for p in (root / "artifacts/best").iterdir()}

    def full_disk(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", "model.pt")

    monkeypatch.setattr(torch, "save", full_disk)
    from tuning.evaluate_best import PROG, main

    assert run_main(main, PROG, ["--experiment", str(root / "ray_results/tiny")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (root / "artifacts/best").iterdir()} == before
    assert not list((root / "artifacts").glob(".best*"))


@pytest.fixture(scope="module")
def evaluated_root(tiny_experiment):
    if not (tiny_experiment / "artifacts/best/metrics.json").is_file():
        proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/tiny",
                       root=tiny_experiment)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return tiny_experiment


# ---- hostile data -----------------------------------------------------------------------------

LINE = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda t, d, lab: t + d + lab,
              st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass")),
              st.sampled_from([b";", b",", b"\t", b"", b";;", b"\x00"]),
              st.sampled_from([b"joy", b"sadness", b"5", b"-1", b"JOY", b"", b"\xff", b"love "])),
    st.just(b"x" * 100_000 + b";joy"),
)
SPLIT_FILE = st.one_of(st.just(b""), st.lists(LINE, max_size=8).map(b"\n".join),
                       st.binary(max_size=300))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(split=st.sampled_from(["train", "val", "test"]), content=SPLIT_FILE)
def test_random_malformed_files_are_accepted_or_refused_in_one_line(tmp_path_factory, split,
                                                                    content):
    root = tmp_path_factory.mktemp("hostile")
    good = write_txt(root / "good")
    build.run(paths(root), good, log=lambda *_: None)
    before = outputs_digest(root)
    bad = write_txt(root / "bad", rows=ROWS)
    (bad / f"{split}.txt").write_bytes(content)
    try:
        result = build.run(paths(root), bad, log=lambda *_: None)
    except DataError as e:  # refused: one line, and the previous outputs stay as they were
        assert "\n" not in str(e) and str(e)
        assert outputs_digest(root) == before
    else:
        assert result in ("built", "up to date")
        manifest = json.loads(paths(root).manifest.read_text())
        assert manifest["counts"]["validation" if split == "val" else split]["rows"] > 0
    assert not list(root.rglob("*.tmp"))


# ---- exposure ---------------------------------------------------------------------------------

def test_the_dashboard_listens_on_loopback_unless_asked():
    from tuning.search.flags import parse_args

    assert parse_args([]).dashboard_host == "127.0.0.1"
    assert parse_args(["--dashboard-host", "0.0.0.0"]).dashboard_host == "0.0.0.0"


@slow
def test_reports_hold_no_absolute_paths_or_tokens(evaluated_root):
    from pathlib import Path

    root = evaluated_root
    # the search started its local Ray with token auth (Ray 2.60's default), which wrote the
    # token to this test session's own home (conftest)
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32
    for f in [*(root / "artifacts/best").glob("*.md"), *(root / "artifacts/best").glob("*.json"),
              *(root / "artifacts/best").glob("*.csv"), *(root / "artifacts/search").rglob("*.*")]:
        if f.suffix in (".csv", ".json", ".md"):
            text = f.read_text()
            assert str(root) not in text and str(Path.home()) + "/" not in text, f
            assert token not in text, f


@pytest.mark.slow
def test_a_tuner_state_cut_short_by_a_kill_is_put_back_from_the_kept_copy(prepared_root, tmp_path):
    """Tune rewrites tuner.pkl in place at every start and resume; a kill -9 in that window
    leaves it empty (seen in CI: `--resume` then failed with EOFError). The search keeps a copy
    of the last whole one and a resume puts it back."""
    root = search_root(prepared_root, tmp_path, with_test=False)
    args = ["--samples", "2", "--max-epochs", "1", "--name", "cut", *SEARCH_SMALL]
    assert run_cli("tuning.search", *args, root=root).returncode == 0
    state = root / "ray_results" / "cut" / "tuner.pkl"
    assert (root / "ray_results/cut/harness/tuner.pkl.kept").read_bytes() == state.read_bytes()
    state.write_bytes(b"")  # what a kill -9 during Tune's rewrite leaves
    proc = run_cli("tuning.search", "--resume", "--name", "cut", "--no-dashboard", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "was cut short" in proc.stderr and state.stat().st_size > 0
