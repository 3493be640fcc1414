"""Experiment tracking in MLflow (optional: `pip install -e ".[tracking]"`, or `make install`).

One MLflow experiment per search, named as the search; one run per trial, logged by Ray Tune's
`MLflowLoggerCallback` from the driver (so a cluster's workers need no access to the tracking
store); evaluate_best's test figures, report and model in one more run of the same experiment.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback

from model.config import TrainConfig, family_of, from_trial_params
from model.speed import FIGURES
from plumbing.errors import DataError, UsageError
from plumbing.paths import Paths
from tuning.outcome import trial_status
from tuning.selection import phase

# per epoch, as metric history (step = epoch)
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "val_f1", "lr", "epoch_s", "sentences_per_s",
                 *FIGURES)
REGISTERED_MODEL = "emotion-lstm"
STORES = ("sqlite:///", "postgresql://", "mysql://", "mssql://", "http://", "https://",
          "databricks")


def tracking_uri(flag: str | None, p: Paths) -> str | None:
    """`--mlflow` with no value: a SQLite store under artifacts/ (one machine); a URL: a tracking
    server (`mlflow server` on the head node, for a cluster)."""
    if flag is None:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError("--mlflow: MLflow is not installed (pip install -e \".[tracking]\")") from None
    if flag == "":
        p.artifacts.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{p.artifacts / 'mlflow.db'}"
    if not flag.startswith(STORES):  # MLflow 3 refuses its old file store (./mlruns)
        raise UsageError(f"--mlflow {flag}: expected a database URI (sqlite:///PATH.db, "
                         f"postgresql://...) or a tracking server URL (http://HOST:5000)")
    return flag


def artifact_location(uri: str) -> str | None:
    """Where a search's MLflow artifacts (evaluate_best's report, plots, model) go: beside a
    SQLite store's file (mlartifacts/), in the project's artifacts/mlartifacts/ for another
    database, and where a tracking server keeps them for a server (None). MLflow's own default
    for a database store, ./mlruns, is relative to whatever folder a command runs in."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    from plumbing.paths import paths

    return (paths().artifacts / "mlartifacts").resolve().as_uri()


def create_experiment(uri: str, name: str) -> None:
    """The search's MLflow experiment, created once, with its artifacts at `artifact_location`
    (the trials' callback and evaluate_best then find it as it is)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=artifact_location(uri))


def check_store(uri: str, experiment: str) -> None:
    """A DataError unless the search's tracking store holds its experiment. A SQLite store is a
    path on the machine that ran the search: elsewhere MLflow would silently open a new, empty
    database and log the evaluation there, beside no trial."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise DataError(f"the search was tracked in {uri}, which is not on this machine: copy "
                        f"that file to the same path, or track searches in a server "
                        f"(--mlflow http://HEAD:5000) that every machine reaches")
    try:
        found = MlflowClient(uri).get_experiment_by_name(experiment)
    except Exception as e:  # noqa: BLE001 - a server down, a database refused
        raise DataError(f"the search's tracking store {uri} cannot be read "
                        f"({type(e).__name__}): {str(e).splitlines()[0][:200]}") from None
    if found is None:
        raise DataError(f"the search's tracking store {uri} has no experiment {experiment!r}")


class TrialRuns(MLflowLoggerCallback):
    """One MLflow run per trial: the trial's config as params (its own seed included, as in
    trials.csv), EPOCH_METRICS per epoch, and tags trial_id, phase (search or intensify) and
    status (set when the trial ends: tuning/outcome.py's statuses; budget_stopped runs are ended by
    the search itself, since Tune tells no callback of them).

    Resumable: a resumed search finds each trial's run by its trial_id tag and goes on logging to
    it, so it adds no duplicate runs (an epoch Tune replays is logged again at its own step, with
    the same value)."""

    search_id: str | None = None  # (a callback unpickled from before search ids has none)

    def __init__(self, uri: str, experiment: str, max_epochs: int, search_id: str | None = None):
        # every run carries the search's id: an MLflow experiment of the same name can hold
        # another search's runs (a reused --name), and evaluate_best's run names a trial too
        super().__init__(uri, experiment_name=experiment,
                         tags={"search_id": search_id} if search_id else None)
        self.max_epochs = max_epochs
        self.search_id = search_id
        self._last: dict = {}

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def log_trial_start(self, trial) -> None:
        if trial in self._trial_runs:
            return
        client = self._client()
        found = client.search_runs([self.mlflow_util.experiment_id],
                                   trial_runs_filter(self.search_id, trial.trial_id), max_results=1)
        if found:  # resumed: the trial's run is there already, params included
            self._trial_runs[trial] = found[0].info.run_id
            client.update_run(found[0].info.run_id, status="RUNNING")
            return
        run = client.create_run(self.mlflow_util.experiment_id, run_name=f"trial_{trial.trial_id}",
                                tags={**self.tags, "trial_id": trial.trial_id, "status": "running",
                                      "phase": phase(trial.config),
                                      "family": family_of(trial.config)})
        self._trial_runs[trial] = run.info.run_id
        from mlflow.entities import Param

        # every field, defaults included, as trials.csv has them
        params = TrainConfig.from_flat(from_trial_params(trial.config)).to_flat()
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def _run_id(self, trial) -> str:
        """The trial's run (Tune can report the error of a trial it never started)."""
        self.log_trial_start(trial)
        return self._trial_runs[trial]

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(result["epoch"])
        metrics = [Metric(k, float(result[k]), now, step) for k in EPOCH_METRICS
                   if isinstance(result.get(k), int | float) and math.isfinite(result[k])]
        self._client().log_batch(self._run_id(trial), metrics=metrics)
        self._last[trial] = result

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self._run_id(trial)
        status = trial_status("ERROR" if failed else "TERMINATED", self._last.get(trial),
                              self.max_epochs)
        client = self._client()
        client.set_tag(run_id, "status", status)
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def trial_runs_filter(search_id: str | None, trial_id: str | None = None) -> str:
    """An MLflow filter for the trial runs (not evaluate_best's) of one search (of one trial).
    A search from before search ids were tagged (None) matches by name alone."""
    parts = ["tags.phase != 'evaluate'"]
    if search_id:
        parts.append(f"tags.search_id = '{search_id}'")
    if trial_id:
        parts.append(f"tags.trial_id = '{trial_id}'")
    return " and ".join(parts)


def drop_orphan_runs(uri: str, experiment: str, trial_ids, search_id: str | None = None) -> int:
    """Delete this search's runs of trials the experiment does not know: a trial started after
    the last saved state of a driver killed with -9 is not resumed (the searcher suggests a new
    one), so its run would stand beside its replacement's. Another search's runs in an MLflow
    experiment of the same name are not this search's to delete. Returns how many were
    deleted."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    known = set(trial_ids)
    orphans = [r for r in client.search_runs([exp.experiment_id], trial_runs_filter(search_id))
               if r.data.tags.get("trial_id") not in known]
    for run in orphans:
        client.delete_run(run.info.run_id)
    return len(orphans)


def end_runs(uri: str, experiment: str, trial_ids, status: str,
             search_id: str | None = None) -> None:
    """End the runs of trials that Tune stopped without telling its callbacks (the time
    budget's): status tag `status`, run FINISHED (each is a measurement cut short, not a
    failure)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    for trial_id in trial_ids if exp is not None else ():
        for run in client.search_runs([exp.experiment_id], trial_runs_filter(search_id, trial_id)):
            client.set_tag(run.info.run_id, "status", status)
            client.set_terminated(run.info.run_id, "FINISHED")


def log_evaluation(uri: str, experiment: str, metrics: dict, folder: Path,
                   search_id: str | None = None) -> str:
    """evaluate_best's run: test metrics, everything in `folder` (report.md, plots, CSVs,
    metrics.json, model.pt), and the model as a pyfunc model that takes raw texts
    (tuning/serving.py), registered as a version of REGISTERED_MODEL (database stores and
    tracking servers have a registry). Returns the run id."""
    import mlflow

    from tuning.results.serving import log_pyfunc

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="evaluate_best",
                          tags={"phase": "evaluate", "trial_id": metrics["trial_id"],
                                **({"search_id": search_id} if search_id else {})}) as run:
        mlflow.log_metrics({"test_accuracy": metrics["accuracy"],
                            "test_f1_macro": metrics["f1_macro"],
                            "test_f1_weighted": metrics["f1_weighted"],
                            "val_f1": metrics["val_f1"], "val_acc": metrics["val_acc"],
                            **{k: metrics["speed"][k] for k in metrics.get("speed", {})}})
        mlflow.log_params({"trial_id": metrics["trial_id"], "best_epoch": metrics["best_epoch"],
                           "family": metrics.get("family", "rnn"),
                           "precision": metrics.get("precision", "fp32")})
        mlflow.log_artifacts(str(folder))
        log_pyfunc(Path(folder) / "model.pt", REGISTERED_MODEL)
        return run.info.run_id
