"""Tune's saved state, whole and of one save, whatever a kill -9 cut.

At each save Tune writes an experiment's state as three files into the driver's staging folder
(tune_controller.py, `save_to_dir`): experiment_state-S.json (the trials), search_gen_state-S.json
(the search generator and the searcher's wrappers: the concurrency limit, the stage) and
searcher-state-S.pkl (OptunaSearch and its in-memory study). A background thread then uploads
the folder file by file, in no fixed order, while the next save may already be rewriting them
(experiment_state.py, syncer.py). A kill -9 can so leave the storage holding files of two saves,
and a restore takes the newest of each kind as it finds it: a stage then waits for ever on a
search trial the restored experiment never had (CI saw a resume hang so), and a search generator
counting trials the experiment lost creates too few.

So at each save the three are also bundled into one file, harness/tune_state.pkl, which the
upload writes whole (atomic_fs.py for a folder; an S3 upload is whole), and a resume puts the
bundle's three back in place of the newest before Tune reads them (`put_back`), the searcher's
into Tune's staging folder too (`restore_staged`: Tune reads them from there, and on a joined
cluster that folder outlives a killed driver). The bundle is what a resume restores: retention
asks it which trials are saved as ended (`saved_trials`).

A trial's result files (progress.csv, result.json, params.*) ride the same upload: a kill -9
after the state landed, before such a file did, left a trial the restored state holds as ended
(Tune runs it no more) with no results in the storage (CI saw trials.csv report it `no_result`).
So the bundle carries the result files of the trials its state holds as ended, and a resume puts
back any the storage lacks or holds cut short. A resume from the bundle can be a
save behind the files beside it (a kill after they landed, before it did): that save runs
again, as after any kill between saves.

tuner.pkl is kept whole the same way by tuner_state.py.
"""
from __future__ import annotations

import fnmatch
import glob
import json
import os
import pickle
import sys

import pyarrow.fs as pafs

from plumbing.errors import DataError
from plumbing.files import atomic_path
from tuning.options import HARNESS_DIR
from tuning.storage import read_bytes, write_whole

BUNDLE = "tune_state.pkl"


def state_files() -> tuple[str, ...]:
    """The name templates of the files of one save ("{}": the session)."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search import Searcher, SearchGenerator

    return (TuneController.CKPT_FILE_TMPL, SearchGenerator.CKPT_FILE_TMPL, Searcher.CKPT_FILE_TMPL)


def bundle(staging: str, session: str) -> None:
    """Bundle the state files this save just wrote into `staging` as staging/harness/BUNDLE,
    replaced whole (the temporary outside the folder the upload copies)."""
    files = {t: data for t in state_files()
             if (data := _file_bytes(os.path.join(staging, t.format(session)))) is not None}
    if state_files()[0] not in files:
        return  # (no experiment state: nothing a resume could start from)
    results = {}  # (a trial that ended in an earlier session has no files here: a resume of
    for folder in _ended(files[state_files()[0]]):  # that session put them back already)
        for name in result_files():
            data = _file_bytes(os.path.join(staging, folder, name))
            if data is not None:
                results[f"{folder}/{name}"] = data
    with atomic_path(os.path.join(staging, HARNESS_DIR, BUNDLE),
                     tmp_dir=os.path.dirname(staging)) as temporary:
        temporary.write_bytes(pickle.dumps({"session": session, "files": files,
                                            "results": results}))


def _file_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def result_files() -> tuple[str, ...]:
    """A trial's files of results that the driver writes and the upload carries (the
    TensorBoard events aside): what Tune's ExperimentAnalysis and our reports read."""
    from ray.tune.result import (
        EXPR_PARAM_FILE,
        EXPR_PARAM_PICKLE_FILE,
        EXPR_PROGRESS_FILE,
        EXPR_RESULT_FILE,
    )

    return (EXPR_PROGRESS_FILE, EXPR_RESULT_FILE, EXPR_PARAM_FILE, EXPR_PARAM_PICKLE_FILE)


def _ended(experiment_state: bytes) -> list[str]:
    """The folders of the trials a state holds as ended (Tune reruns neither kind on resume:
    the harness restores with resume_errored off)."""
    return [t.get("relative_logdir") or f"trial_{t['trial_id']}"
            for t in _trials(experiment_state) if t.get("status") in ("TERMINATED", "ERROR")]


def _trials(experiment_state: bytes) -> list[dict]:
    return [json.loads(trial) for trial, _ in json.loads(experiment_state)["trial_data"]]


def read_bundle(fs: pafs.FileSystem, experiment: str) -> dict | None:
    """The last bundle uploaded for the experiment at `experiment` on `fs`; None if there is
    none (an experiment from before bundles, or killed before its first upload). Raises OSError
    or pickle's errors where one is there but cannot be read (read in one request: a bucket's
    object replaced between ranged reads would mix two)."""
    path = f"{experiment}/{HARNESS_DIR}/{BUNDLE}"
    try:
        with fs.open_input_file(path) as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return pickle.loads(data)


def put_back(fs: pafs.FileSystem, experiment: str, text: str) -> dict | None:
    """Write the bundle's files in place of the newest of each kind (what Tune's restore reads,
    by name), where they differ, and say so. Returns the bundle ({"session", "files": template
    -> bytes}), None where there is none; a DataError where it cannot be read."""
    try:
        saved = read_bundle(fs, experiment)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{text}: cannot read {HARNESS_DIR}/{BUNDLE}, the experiment's last "
                        f"whole save ({type(exc).__name__}: {exc}); try --resume again") from None
    if saved is None:
        return None
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(experiment))]
    changed = False
    for template, data in saved["files"].items():
        target = max([*fnmatch.filter(names, template.format("*")),
                      template.format(saved["session"])])
        path = f"{experiment}/{target}"
        if target in names and read_bytes(fs, path) == data:
            continue
        write_whole(fs, path, data)
        changed = True
    if changed:
        print(f"{text}: resuming from the last save uploaded whole ({HARNESS_DIR}/{BUNDLE}): "
              f"Tune's state files beside it were of another save (a kill -9 during or after an "
              f"upload; what was saved after it runs again)", file=sys.stderr)
    cut = _put_back_results(fs, experiment, saved.get("results", {}))
    if cut:
        print(f"{text}: {len(cut)} result file(s) of trials saved as ended were missing or not "
              f"as saved in the storage (a kill -9 before their upload ended), put back from "
              f"{HARNESS_DIR}/{BUNDLE}: {', '.join(cut[:3])}{' ...' if len(cut) > 3 else ''}",
              file=sys.stderr)
    return saved


def _put_back_results(fs: pafs.FileSystem, experiment: str, results: dict) -> list[str]:
    """Write back each ended trial's result file the storage lacks, or holds of another size
    than the bundle (an ended trial's files are written no more: a kill mid-upload leaves one
    cut, a restart from scratch an older one): the state a resume restores holds such a trial
    as ended, and Tune runs it no more. Returns their paths."""
    if not results:
        return []
    infos = fs.get_file_info([f"{experiment}/{rel}" for rel in results])
    cut = [rel for rel, info in zip(results, infos)
           if info.type != pafs.FileType.File or info.size != len(results[rel])]
    for rel in cut:
        write_whole(fs, f"{experiment}/{rel}", results[rel])
    return cut


def restore_staged(staging: str, saved: dict) -> None:
    """Put the bundle's searcher state in Tune's staging folder, in place of every file of its
    kinds there: Tune restores the searcher from the newest it finds in that folder, which on a
    joined cluster (its session kept) can still hold a killed driver's later files."""
    for template in state_files()[1:]:
        for stale in glob.glob(os.path.join(staging, template.format("*"))):
            os.unlink(stale)
        if template in saved["files"]:
            with open(os.path.join(staging, template.format(saved["session"])), "wb") as f:
                f.write(saved["files"][template])


def saved_trials(fs: pafs.FileSystem, experiment: str) -> list[dict]:
    """The trials (Tune's JSON state of each) of the state a resume would restore: the bundle's,
    or the newest experiment_state-*.json where there is no bundle. Raises OSError or
    ValueError where neither can be read."""
    saved = read_bundle(fs, experiment)
    if saved is not None:
        data = saved["files"][state_files()[0]]
    else:
        infos = fs.get_file_info(pafs.FileSelector(experiment, allow_not_found=True))
        pattern = state_files()[0].format("*")
        states = [i.path for i in infos if fnmatch.fnmatch(i.base_name, pattern)]
        if not states:
            return []
        data = read_bytes(fs, max(states))  # (named by the time it was saved)
    return _trials(data)
