"""Shared fixtures: a temporary project root per test, the real data, and one prepared root."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

_OWN_DIRS: list[str] = []


def pytest_configure(config):
    """The test session's own home and Ray temp dir, for everything it starts (searches, `ray
    start`, in-process clusters): Ray writes its token to ~/.ray/auth_token and its sessions
    under $RAY_TMPDIR/ray, and `ray.init()` without an address joins the cluster recorded
    there. So the user's token, sessions and running clusters are neither read nor touched."""
    import tempfile

    home = tempfile.mkdtemp(prefix="emotion-tests-home-")
    # short: Ray's socket paths under it must fit AF_UNIX's 107 bytes
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    _OWN_DIRS.extend([home, ray_tmp])
    os.environ.update(HOME=home, RAY_TMPDIR=ray_tmp)
    os.environ.pop("RAY_ADDRESS", None)  # (a user's RAY_ADDRESS would send searches to their Ray)


def pytest_unconfigure(config):
    import shutil

    while _OWN_DIRS:
        shutil.rmtree(_OWN_DIRS.pop(), ignore_errors=True)


def real_data_dir() -> Path:
    """The real dair-ai/emotion files: $EMOTION_DATA_DIR, else ../shared/data/emotion.

    Tests that need them fail (not skip) without them: CI always has them.
    """
    env = os.environ.get("EMOTION_DATA_DIR")
    folder = Path(env) if env else REPO.parent / "shared" / "data" / "emotion"
    assert (folder / "train.txt").is_file(), f"real data not found in {folder} (set EMOTION_DATA_DIR)"
    return folder.resolve()


def read_live_csv(path: Path) -> pd.DataFrame:
    """A CSV file that a running search may be writing right now: only its complete lines.

    Tune creates progress.csv empty and then appends header and rows, so a poll can find
    nothing, a header alone or half a row; those read as the rows finished so far (maybe none).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return pd.DataFrame()
    complete = text[:text.rfind("\n") + 1]
    if complete.count("\n") < 2:          # no header yet, or a header without a row
        return pd.DataFrame()
    return pd.read_csv(io.StringIO(complete))


def study_by_trial(storage: str, name: str, warm: bool = False) -> dict:
    """A stored Optuna study's trials by their Tune trial id (user attribute trial_id): this
    search's own, and with `warm` those it learnt from another experiment (attribute
    warm_start). A trial with no trial id fails here (enqueued and never asked for, or asked
    for and left running), unless FAIL: a kill -9 between a trial's ask and the write that
    names it leaves one, which settling fails (tuning/search/searcher.py)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    unnamed = [t for t in study.trials if "trial_id" not in t.user_attrs]
    assert all(t.state == TrialState.FAIL for t in unnamed), [
        (t.number, t.state.name) for t in unnamed]
    return {t.user_attrs["trial_id"]: t for t in study.trials if "trial_id" in t.user_attrs
            and (warm or "warm_start" not in t.user_attrs)}


def assert_study_matches_trials_csv(study: dict, table: pd.DataFrame) -> None:
    """The study's state and value of every search trial, as trials.csv reports the trial; a
    study trial the experiment does not know (a kill -9 left it behind) is FAIL."""
    from optuna.trial import TrialState

    search = table[table["phase"] == "search"]
    assert set(search["trial_id"]) <= set(study)
    for trial_id in set(study) - set(search["trial_id"]):
        assert study[trial_id].state == TrialState.FAIL, trial_id
    for _, row in search.iterrows():
        trial = study[row["trial_id"]]
        if row["status"] in ("completed", "early_stopped", "diverged"):
            assert trial.state == TrialState.COMPLETE, row["trial_id"]
            assert trial.value == pytest.approx(row["best_val_f1"])
        elif row["status"] == "error":
            assert trial.state == TrialState.FAIL, row["trial_id"]
        else:
            assert row["status"] in ("asha_stopped", "budget_stopped"), row["status"]
            assert trial.state == TrialState.PRUNED, row["trial_id"]
            assert len(trial.intermediate_values) == row["epochs_run"]
            assert max(trial.intermediate_values.values()) == pytest.approx(row["best_val_f1"])


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """End a process started with start_new_session=True and everything in its process group:
    SIGTERM, then SIGKILL after `grace` seconds."""
    import signal
    import time

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait(timeout=10)
                return
            time.sleep(0.2)
    proc.wait(timeout=10)


def free_port() -> int:
    """A TCP port free on loopback right now (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_BACKGROUND: list[subprocess.Popen] = []


def start_background(cmd: list[str], **kwargs) -> subprocess.Popen:
    """A process a test runs in the background, in a process group of its own: whatever the
    test's outcome, `_reap_background` ends the group (the process and what it started, such
    as a search's local Ray) when the test is over."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    _BACKGROUND.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _reap_background():
    yield
    while _BACKGROUND:  # (what is left of a killed driver's Ray can take 20 s over SIGTERM)
        stop_group(_BACKGROUND.pop(), grace=5)


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """An empty project root for this test (EMOTION_ROOT), with no data source configured."""
    monkeypatch.setenv("EMOTION_ROOT", str(tmp_path))
    monkeypatch.delenv("EMOTION_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")        # the hub path must fail fast, not hang
    monkeypatch.setenv("HF_HOME", str(tmp_path / ".hf"))
    return tmp_path


def run_cli(module: str, *args: str, root: Path, env: dict | None = None, input: str | None = None,
            timeout: float = 600, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `python -m module args` as a user would, in a given project root (after `prefix`,
    e.g. `taskset -c 0`)."""
    full_env = {k: v for k, v in os.environ.items() if k != "EMOTION_DATA_DIR"}
    full_env.update(EMOTION_ROOT=str(root), HF_HUB_OFFLINE="1", HF_HOME=str(root / ".hf"),
                    RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    return subprocess.run([*prefix, sys.executable, "-m", module, *args], cwd=root, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input, check=False)


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory) -> Path:
    """A project root with the real data prepared once (data/processed + artifacts/vocab.json)."""
    root = tmp_path_factory.mktemp("prepared")
    proc = run_cli("dataprep", "--source", str(real_data_dir()), root=root)
    assert proc.returncode == 0, proc.stderr
    return root


# (no intensification stage unless a test asks for it, whatever the default: its trials would
# change every count)
SEARCH_SMALL = ["--subset", "1500", "--no-dashboard", "--cpus-per-trial", "1", "--intensify-top", "0"]


def search_root(prepared_root: Path, dest: Path, *, with_test: bool) -> Path:
    """A project root holding the prepared train/val splits and vocab (and test only if asked)."""
    import shutil

    for rel in ["data/processed/train.parquet", "data/processed/val.parquet",
                "data/processed/manifest.json", "artifacts/vocab.json"] + (
            ["data/processed/test.parquet"] if with_test else []):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(prepared_root / rel, dest / rel)
    return dest


@pytest.fixture(scope="session")
def tiny_experiment(prepared_root, tmp_path_factory) -> Path:
    """A real search on a subset: 4 trials, then its top 2 configurations with one more seed
    each (intensification), its Optuna study in optuna.db, run in a root with no test split
    (the search must not need it); the test split is copied in afterwards for evaluate_best.
    One trial at a time: with the seeded TPE and seeded training, the same trials in the same
    order with the same values every run, so what ASHA cuts (at a rung, by the values of the
    trials that came before) is the same on any machine. Returns the root."""
    root = search_root(prepared_root, tmp_path_factory.mktemp("tiny"), with_test=False)
    proc = run_cli("tuning.search", "--samples", "4", "--max-epochs", "3", "--grace-period", "1",
                   "--reduction-factor", "2", "--name", "tiny", *SEARCH_SMALL,
                   "--concurrency", "1", "--intensify-top", "2", "--intensify-seeds", "1",
                   "--optuna-storage", "sqlite:///optuna.db", root=root)  # (root/optuna.db)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / "search.log").write_text(proc.stdout + proc.stderr)  # what the terminal showed
    import shutil

    shutil.copy(prepared_root / "data/processed/test.parquet", root / "data/processed/test.parquet")
    return root


BUCKET = "exps"


@pytest.fixture
def s3(monkeypatch):
    """An S3 protocol endpoint on 127.0.0.1 with one bucket; dummy credentials in the
    environment (every process started from here, Ray's included, inherits them)."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    yield f"{host}:{port}", fs
    server.stop()
