"""Tune's saved state bundled at each save, and put back whole on a resume (saved_state.py).

The kill -9 mid-upload itself, on a real search in a folder and in a bucket, is in
test_lifecycle.py; a finished search's bundle is checked against Tune's files in test_search.py.
"""
from __future__ import annotations

import json
import pickle

import pyarrow.fs as pafs
import pytest

from plumbing.errors import DataError
from tuning.search.saved_state import BUNDLE, bundle, put_back, restore_staged, saved_trials

OLD, NEW = "2026-12-01_10-00-00", "2026-12-02_10-00-00"


def _state(*trials: tuple[str, str]) -> bytes:
    """An experiment_state-*.json as Tune writes it: each trial a JSON string of its state."""
    data = [[json.dumps({"trial_id": t, "status": s}), "{}"] for t, s in trials]
    return json.dumps({"trial_data": data, "runner_data": {}}).encode()


def _save(folder, session: str, experiment: bytes, generator: bytes, searcher: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"experiment_state-{session}.json").write_bytes(experiment)
    (folder / f"search_gen_state-{session}.json").write_bytes(generator)
    (folder / f"searcher-state-{session}.pkl").write_bytes(searcher)


def test_a_save_is_bundled_whole_and_nothing_else_is_taken(tmp_path):
    staging = tmp_path / "exp" / "driver_artifacts"
    one = _state(("a", "RUNNING"))
    _save(staging, NEW, one, b"gen", b"searcher")
    (staging / "callback-states-x.pkl").write_bytes(b"callbacks")
    bundle(str(staging), NEW)
    saved = pickle.loads((staging / "harness" / BUNDLE).read_bytes())
    assert saved["session"] == NEW
    assert sorted(saved["files"].values()) == sorted([one, b"gen", b"searcher"])
    # the temporary was written outside the folder Tune uploads, and moved into it
    assert sorted(p.name for p in staging.rglob("*")) == sorted(
        ["experiment_state-" + NEW + ".json", "search_gen_state-" + NEW + ".json",
         "searcher-state-" + NEW + ".pkl", "callback-states-x.pkl", "harness", BUNDLE])
    assert not list((tmp_path / "exp").glob(".tune_state.pkl.*"))


def test_a_resume_puts_the_last_whole_save_back_in_place_of_the_newest(tmp_path, capsys):
    fs, exp = pafs.LocalFileSystem(), tmp_path / "exp"
    # the last save bundled: trials a (ended) and b (running), the searcher knowing both
    whole = _state(("a", "TERMINATED"), ("b", "RUNNING"))
    staging = tmp_path / "staging" / "driver_artifacts"
    _save(staging, NEW, whole, b"gen-ab", b"searcher-ab")
    bundle(str(staging), NEW)
    # the storage: an older session's files, and this session's experiment state of an earlier
    # save (trial a only) beside the searcher's state of the last one (a kill mid-upload)
    _save(exp, OLD, _state(("a", "RUNNING")), b"gen-old", b"searcher-old")
    _save(exp, NEW, _state(("a", "RUNNING")), b"gen-ab", b"searcher-ab")
    (exp / "harness").mkdir()
    (exp / "harness" / BUNDLE).write_bytes((staging / "harness" / BUNDLE).read_bytes())

    assert saved_trials(fs, str(exp)) == [{"trial_id": "a", "status": "TERMINATED"},
                                          {"trial_id": "b", "status": "RUNNING"}]
    assert put_back(fs, str(exp), "exp")["session"] == NEW
    assert "resuming from the last save uploaded whole" in capsys.readouterr().err
    assert (exp / f"experiment_state-{NEW}.json").read_bytes() == whole
    assert (exp / f"search_gen_state-{NEW}.json").read_bytes() == b"gen-ab"
    assert (exp / f"searcher-state-{NEW}.pkl").read_bytes() == b"searcher-ab"
    assert (exp / f"experiment_state-{OLD}.json").read_bytes() == _state(("a", "RUNNING"))
    assert not list(exp.glob("*.tmp"))
    # once in place, nothing to do, and nothing said
    assert put_back(fs, str(exp), "exp")["session"] == NEW
    assert capsys.readouterr().err == ""


def test_the_bundle_is_written_over_a_newer_session_whose_files_are_cut(tmp_path):
    """A resumed run killed before its first bundle landed: its session's files (newer names,
    which Tune's restore would pick) get the last whole save's content."""
    fs, exp = pafs.LocalFileSystem(), tmp_path / "exp"
    staging = tmp_path / "staging" / "driver_artifacts"
    whole = _state(("a", "TERMINATED"))
    _save(staging, OLD, whole, b"gen", b"searcher")
    bundle(str(staging), OLD)
    _save(exp, OLD, whole, b"gen", b"searcher")
    (exp / f"experiment_state-{NEW}.json").write_bytes(whole[:10])  # cut
    (exp / "harness").mkdir()
    (exp / "harness" / BUNDLE).write_bytes((staging / "harness" / BUNDLE).read_bytes())
    saved = put_back(fs, str(exp), "exp")
    assert (exp / f"experiment_state-{NEW}.json").read_bytes() == whole
    assert not (exp / f"searcher-state-{NEW}.pkl").exists()  # (the newest of its kind: OLD's)
    # Tune's staging folder of a joined cluster, still holding the killed run's later files:
    # the searcher is restored from the bundle's, the only ones of their kinds left there
    staged = tmp_path / "joined" / "driver_artifacts"
    _save(staged, NEW, b"{}", b"gen-later", b"searcher-later")
    restore_staged(str(staged), saved)
    assert sorted(p.name for p in staged.iterdir()) == sorted(
        [f"experiment_state-{NEW}.json", f"search_gen_state-{OLD}.json",
         f"searcher-state-{OLD}.pkl"])
    assert (staged / f"search_gen_state-{OLD}.json").read_bytes() == b"gen"
    assert (staged / f"searcher-state-{OLD}.pkl").read_bytes() == b"searcher"


def test_without_a_bundle_the_newest_experiment_state_is_read_and_nothing_put_back(tmp_path):
    fs, exp = pafs.LocalFileSystem(), tmp_path / "exp"
    _save(exp, OLD, _state(("a", "RUNNING")), b"g", b"s")
    _save(exp, NEW, _state(("a", "TERMINATED")), b"g", b"s")
    assert saved_trials(fs, str(exp)) == [{"trial_id": "a", "status": "TERMINATED"}]
    assert put_back(fs, str(exp), "exp") is None
    assert saved_trials(fs, str(tmp_path / "nothing")) == []


def test_a_bundle_that_cannot_be_read_is_said_not_taken_for_none(tmp_path):
    """Only a missing bundle falls back to Tune's files: one there but unreadable stops the
    resume with one line (retention, asking it, takes it as nothing known yet)."""
    fs, exp = pafs.LocalFileSystem(), tmp_path / "exp"
    _save(exp, NEW, _state(("a", "TERMINATED")), b"g", b"s")
    (exp / "harness").mkdir()
    (exp / "harness" / BUNDLE).write_bytes(pickle.dumps({"files": {}})[:-3])  # cut short
    with pytest.raises(DataError, match=r"exp: cannot read harness/tune_state.pkl") as raised:
        put_back(fs, str(exp), "exp")
    assert "\n" not in str(raised.value)
    from tuning.search.retention import saved_as_ended

    assert saved_as_ended(fs, str(exp)) == set()  # (not the fallback's {"a"})


def test_an_ended_trials_results_the_upload_lost_are_put_back_and_a_running_ones_left(tmp_path,
                                                                                       capsys):
    """A kill -9 after the state landed, before an ended trial's result files did (CI saw a
    trial saved as TERMINATED with no progress.csv): the bundle carries the ended trials'
    files, and a resume writes back those missing or cut short; a running trial's (which its
    resume rewrites) and files the storage holds whole are left as they are."""
    fs, exp = pafs.LocalFileSystem(), tmp_path / "exp"
    staging = tmp_path / "staging" / "driver_artifacts"
    state = _state(("a", "TERMINATED"), ("b", "ERROR"), ("c", "RUNNING"))
    _save(staging, NEW, state, b"gen", b"searcher")
    files = {}
    for trial in "abc":
        for name in ("progress.csv", "result.json", "params.json"):
            files[f"trial_{trial}/{name}"] = f"{trial} {name}\n1,2,3\n4,5,6\n".encode()
            (staging / f"trial_{trial}").mkdir(exist_ok=True)
            (staging / f"trial_{trial}" / name).write_bytes(files[f"trial_{trial}/{name}"])
    bundle(str(staging), NEW)
    # the storage: the state and a's params landed, a's progress.csv was cut, a's result.json
    # and b's progress and result never came, b's params are an older run's; c's progress.csv
    # holds less than the bundle's (and may: it runs)
    _save(exp, NEW, state, b"gen", b"searcher")
    (exp / "harness").mkdir()
    (exp / "harness" / BUNDLE).write_bytes((staging / "harness" / BUNDLE).read_bytes())
    (exp / "trial_a").mkdir()
    (exp / "trial_a" / "params.json").write_bytes(files["trial_a/params.json"])
    (exp / "trial_a" / "progress.csv").write_bytes(files["trial_a/progress.csv"][:9])
    (exp / "trial_b").mkdir()  # an older, longer params.json (a restart from scratch)
    (exp / "trial_b" / "params.json").write_bytes(files["trial_b/params.json"] + b"older\n")
    (exp / "trial_c").mkdir()
    (exp / "trial_c" / "progress.csv").write_bytes(b"c")

    put_back(fs, str(exp), "exp")
    assert "5 result file(s) of trials saved as ended were missing" in capsys.readouterr().err
    for trial in "ab":
        for name in ("progress.csv", "result.json", "params.json"):
            assert (exp / f"trial_{trial}" / name).read_bytes() == files[f"trial_{trial}/{name}"]
    assert [p.name for p in (exp / "trial_c").iterdir()] == ["progress.csv"]
    assert (exp / "trial_c" / "progress.csv").read_bytes() == b"c"
    put_back(fs, str(exp), "exp")  # once in place, nothing more to say
    assert capsys.readouterr().err == ""
