"""An experiment's whole lifecycle, as a user lives it: start -> kill -9 at a state save ->
resume -> extend -> warm-start a second experiment from it, in a local folder and in an S3
bucket (moto), with the Optuna study stored or not, with a stage or not.

The combinations are {folder, bucket} x {--optuna-storage on, off} x {stage on, off}; two
sequences cover each value of each factor (a pairwise cover needs four, which CI's half hour
does not hold): folder + stored study + no stage, bucket + in-memory study + stage. After every
step: no configuration trained twice with one seed; the study and trials.csv agree state by
state and value by value; each ended trial keeps exactly the checkpoints retention promises
(the top 5 configurations, the replicated ones and the F1/latency frontier: its best, nothing
else) and the winner's checkpoint exists; the options read back equal what was given. Every
expected value is computed here from trials.csv's plain columns and the files, not by the
harness's own ranking (tests/helpers.py: config_of, kept_by_retention).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
import torch

from tests.conftest import (
    BUCKET,
    SEARCH_SMALL,
    assert_study_matches_trials_csv,
    run_cli,
    search_root,
    study_by_trial,
)
from tests.helpers import (
    ENDED,
    MEASURED,
    SNAPSHOT_S,
    config_of,
    kept_by_retention,
    kill_9,
    saved_trials,
    start_search,
    stderr_of,
    stored_options,
    trials_csv,
    wait_for,
    wait_for_state_saves,
)

MAX_EPOCHS = 2


@dataclass
class Where:
    """Where the experiments live: the flags that say so, and the filesystem to look in."""
    flags: list[str]
    fs: pafs.FileSystem
    root: str  # the storage folder on `fs`

    def experiment(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def write(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def state_files(self, name: str) -> list[str]:
        """The experiment's experiment_state-*.json, oldest first (named by their session)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.experiment(name),
                                                        allow_not_found=True))
        return sorted(i.path for i in infos if i.base_name.startswith("experiment_state-")
                      and i.base_name.endswith(".json"))

    def folders(self, path: str, prefix: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix))


def _where(kind: str, root, request) -> Where:
    if kind == "folder":
        return Where([], pafs.LocalFileSystem(), str(root / "ray_results"))
    endpoint, fs = request.getfixturevalue("s3")
    uri = f"s3://{BUCKET}/runs?endpoint_override={endpoint}&scheme=http"
    return Where(["--storage", uri], fs, f"{BUCKET}/runs")


def check_experiment(root, where: Where, name: str, given: dict, study: str | None) -> pd.DataFrame:
    """The invariants after a step that ended (see the module's docstring)."""
    table = trials_csv(root, name)
    table["config"] = [config_of(row) for _, row in table.iterrows()]
    assert table["trial_id"].is_unique
    # one configuration, one seed, one run (a replicate has its own seed)
    assert not table.duplicated(["config", "seed"]).any(), table[["trial_id", "config", "seed"]]
    exp = where.experiment(name)
    options = stored_options(where.read(f"{exp}/harness/search_options.json"))
    assert {k: options[k] for k in given} == given
    keep = kept_by_retention(table)
    for _, row in table.iterrows():
        if row["status"] == "unfinished":
            continue
        folder = f"{exp}/trial_{row['trial_id']}"
        progress = pd.read_csv(io.BytesIO(where.read(f"{folder}/progress.csv")))
        kept = where.folders(folder, "checkpoint_")
        if row["config"] in keep and len(progress):
            best_epoch = progress.drop_duplicates("epoch").set_index("epoch")["val_f1"].idxmax()
            epochs = [torch.load(io.BytesIO(where.read(f"{folder}/{k}/state.pt")),
                                 weights_only=True)["epoch"] for k in kept]
            assert epochs == [best_epoch], (row["trial_id"], kept, epochs)
        else:
            assert kept == [], (row["trial_id"], kept)
    winner = json.loads((root / f"artifacts/search/{name}/best_config.json").read_text())
    assert where.folders(f"{exp}/trial_{winner['trial_id']}", "checkpoint_")
    if study:
        trials = study_by_trial(study, name)
        assert_study_matches_trials_csv(trials, table)
        from optuna.trial import TrialState

        # (every trial of the study: its own and those it learnt from another experiment)
        states = [t.state for t in study_by_trial(study, name, warm=True).values()]
        assert TrialState.WAITING not in states and TrialState.RUNNING not in states
    return table


@pytest.mark.slow
@pytest.mark.parametrize("kind,stored_study,stage", [("folder", True, False),
                                                      ("bucket", False, True)],
                         ids=["folder-study-nostage", "bucket-nostudy-stage"])
def test_start_kill_resume_extend_warm_start(prepared_root, tmp_path, monkeypatch, request,
                                             kind, stored_study, stage):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_S))
    root = search_root(prepared_root, tmp_path, with_test=False)
    where = _where(kind, root, request)
    study = f"sqlite:///{root / 'optuna.db'}" if stored_study else None
    given = {"samples": 4, "max_epochs": MAX_EPOCHS, "subset": 800, "concurrency": 1,
             "seed": 3, "intensify_top": 2 if stage else 0, "intensify_seeds": 1,
             "optuna_storage": study}
    args = ["--samples", "4", "--max-epochs", str(MAX_EPOCHS), "--reduction-factor", "2",
            "--name", "a", *SEARCH_SMALL, "--subset", "800", "--concurrency", "1", "--seed", "3",
            "--intensify-top", str(given["intensify_top"]), "--intensify-seeds", "1",
            *(["--optuna-storage", study] if study else []), *where.flags]
    resume = ["--name", "a", "--resume", "--no-dashboard", *where.flags]

    # start, and kill -9 right after a state save that holds a finished trial
    driver = start_search(root, args)
    first = wait_for_first_state(where, "a")
    assert first, stderr_of(driver)[-2000:]
    assert wait_for(lambda: "| 1/" in Path(driver.log.name).read_text(), timeout=300), \
        stderr_of(driver)[-2000:]
    assert wait_for_state_saves_in(where, "a"), stderr_of(driver)[-2000:]
    kill_9(driver)
    saved = saved_trials(where, "a")
    # the kill landed before the work ended: the saved state has trials yet to end
    assert sum(s in ENDED for s in saved.values()) < 4 + given["intensify_top"]
    # and, the worst a kill during an upload can leave (saved_state.py), the storage's newest
    # experiment state is of an earlier save than the searcher's state beside it: the first
    # save's, from before the searcher suggested the trials it knows now
    assert first != where.read(where.state_files("a")[-1])
    where.write(where.state_files("a")[-1], first)
    # and a trial saved as ended whose result files had not landed (CI saw one): Tune runs it
    # no more, so the resume must put them back, from the bundle, for the checks below
    lost = next(t for t, s in saved.items() if s in ENDED)
    for name in ("progress.csv", "result.json"):
        where.fs.delete_file(f"{where.experiment('a')}/trial_{lost}/{name}")

    proc = run_cli("tuning.search", *resume, root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from the last save uploaded whole" in proc.stderr, proc.stderr[-3000:]
    assert f"trial_{lost}/progress.csv" in proc.stderr, proc.stderr[-3000:]
    table = check_experiment(root, where, "a", given, study)
    assert (table["replicate"] == 0).sum() == 4 and (table["replicate"] > 0).sum() <= 2

    # what would change the experiment's trials is refused, before Ray starts
    for more, needle in ((["--samples", "3"], "already has 4"),
                         (["--samples", "6", "--max-epochs", "3"], "--max-epochs 3 differs")):
        refused = run_cli("tuning.search", *resume, *more, root=root)
        assert refused.returncode == 2 and needle in refused.stderr, refused.stderr

    proc = run_cli("tuning.search", *resume, "--samples", "6", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    extended = check_experiment(root, where, "a", {**given, "samples": 6}, study)
    assert (extended["replicate"] == 0).sum() == 6
    before = table.set_index("trial_id")[["best_val_f1", "status"]]
    assert extended.set_index("trial_id").loc[before.index, ["best_val_f1", "status"]].equals(before)

    # a second experiment learns from the first before its first suggestion
    warm = [a if a != "a" else "b" for a in args]
    warm[warm.index("--samples") + 1] = "2"
    proc = run_cli("tuning.search", *warm, "--warm-start", "a", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = check_experiment(root, where, "b", {**given, "samples": 2}, study)
    options = stored_options(where.read(f"{where.experiment('b')}/harness/search_options.json"))
    told = extended[(extended["replicate"] == 0) & extended["status"].isin(MEASURED)]
    assert sorted(w["trial_id"] for w in options["warm_start"]) == sorted(told["trial_id"])
    # nothing the first measured is trained again by the second, seed for seed
    assert not set(zip(second["config"], second["seed"])) & set(zip(extended["config"],
                                                                     extended["seed"]))


def wait_for_first_state(where: Where, name: str, timeout: float = 300) -> bytes | None:
    """The experiment state of the experiment's first save, as uploaded."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            states = where.state_files(name)
            if states:
                data = where.read(states[-1])
                json.loads(data)  # (whole: uploads land whole, but say so)
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return None


def wait_for_state_saves_in(where: Where, name: str, saves: int = 2, timeout: float = 120) -> bool:
    """`wait_for_state_saves` for a folder or a bucket: the state a resume restores rewritten."""
    if isinstance(where.fs, pafs.LocalFileSystem):
        return wait_for_state_saves(Path(where.experiment(name)), saves, timeout)
    import time

    def stamp():
        try:
            info = where.fs.get_file_info(f"{where.experiment(name)}/harness/tune_state.pkl")
        except OSError:
            return None
        return (info.mtime_ns, info.size) if info.type == pafs.FileType.File else None

    last, seen, deadline = stamp(), 0, time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.2)
        now = stamp()
        if now and now != last:
            last, seen = now, seen + 1
            if seen >= saves:
                return True
    return False
