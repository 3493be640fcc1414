"""One experiment and its lifecycle: create it (or open it to resume, or extend it), build or
restore its Tuner, and finish it (reports, retention, the stored study, MLflow).

An experiment is its name, the storage it lives in (a folder or a bucket), its local report
folder (artifacts/search/NAME/) and its options (tuning/options.py), read from one place by
everyone. Tune's own state (tuner.pkl, experiment_state-*.json, the searcher's state) lives
beside the options; the Optuna study, when stored (--optuna-storage), is set up once for the
experiment, whatever path a resume takes (searcher.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from plumbing.errors import UsageError
from tuning.options import SearchOptions, in_harness, read_options, write_options
from tuning.storage import Storage


@dataclass(frozen=True)
class Outcome:
    """What a finished (or interrupted) run of the experiment left: trials.csv's table, the
    winner's best_config.json (None: no trial finished an epoch), and checkpoints kept/deleted."""
    table: object
    best: dict | None
    checkpoints: tuple[int, int] | None


@dataclass
class Experiment:
    storage: Storage
    options: SearchOptions
    report_dir: Path
    resumed: bool = False

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def uri(self) -> str:
        return self.storage.uri(self.name)

    # -- the lifecycle -----------------------------------------------------------------------

    @classmethod
    def create(cls, storage: Storage, options: SearchOptions, report_dir: Path,
               warm_start: str | None = None) -> Experiment:
        """A new experiment of these options (not written until `start`: the concurrency is
        known once Ray is up), warm-started from experiment `warm_start` if given. A UsageError
        if one of that name exists, or the warm start is refused: then no folder is left."""
        if storage.is_experiment(options.name):
            raise UsageError(f"experiment {options.name!r} already exists in {storage.text}: "
                             f"continue it with --resume, or pick another --name")
        experiment = cls(storage, options, report_dir)
        if warm_start:
            experiment = experiment.warm_started(warm_start)
        if storage.is_local:  # fail here, not after Ray has started
            Path(storage.path(options.name)).mkdir(parents=True, exist_ok=True)
        return experiment

    @classmethod
    def open(cls, storage: Storage, name: str, report_dir: Path) -> Experiment:
        """An existing experiment, to resume: its options as first given (or as extended)."""
        if not storage.is_experiment(name):
            raise UsageError(f"--resume: no experiment {name!r} in {storage.text}")
        options = read_options(storage, name)
        if not in_harness(storage, name):  # (from before harness/: moved out of Tune's copies)
            write_options(options, storage, report_dir)
        return cls(storage, options, report_dir, resumed=True)

    def warm_started(self, source: str) -> Experiment:
        """The new experiment, its searcher to learn first from the trials of another that
        searched the same space (`--warm-start NAME` in this storage, a folder or a URI): the
        trials themselves go into the options, so a resume needs neither."""
        from tuning.search.warm import warm_trials
        from tuning.storage import open_experiment

        storage, name = (open_experiment(source, "--warm-start") if "/" in source
                         else (self.storage, source))
        if not storage.is_experiment(name):
            raise UsageError(f"--warm-start {source}: no experiment {name!r} in {storage.text}")
        warm = warm_trials(storage, name, self.options)
        return Experiment(self.storage, self.options.replace(warm_start=warm), self.report_dir)

    def extend(self, samples: int) -> Experiment:
        """The experiment with `samples` search trials in all (`--resume --samples`), its
        options written again."""
        options = self.options
        if samples == options.samples:
            return self
        if samples < options.samples:
            raise UsageError(f"--samples {samples}: the experiment already has {options.samples} "
                             f"search trials; extend it with more, or resume it without --samples")
        if options.time_budget_s:
            raise UsageError(f"--samples {samples}: this search ran under --time-budget-s, which "
                             f"Tune restores spent; warm-start a new one from it (--warm-start)")
        if not options.extendable:
            raise UsageError(f"--samples {samples}: this experiment was started before searches "
                             f"could be extended; warm-start a new one from it (--warm-start)")
        extended = Experiment(self.storage, options.replace(samples=samples), self.report_dir,
                              self.resumed)
        write_options(extended.options, self.storage, self.report_dir)
        return extended

    def start(self, concurrency: int) -> Experiment:
        """A new experiment's options, with the concurrency the cluster holds (unless given),
        written beside it and into the report; its MLflow experiment created with its artifacts
        beside the store. A resumed one is returned as it is."""
        if self.resumed:
            return self
        options = self.options
        if options.concurrency is None:
            options = options.replace(concurrency=concurrency)
        write_options(options, self.storage, self.report_dir)
        if options.mlflow:
            from tuning.tracking import create_experiment

            create_experiment(options.mlflow, options.name)
        return Experiment(self.storage, options, self.report_dir, self.resumed)

    def tuner(self, trainable):
        """The Tuner: built from the options, or restored from Tune's state, put back whole and
        of one save where a kill -9 cut it (saved_state.py)."""
        from ray import tune

        from tuning.search.saved_state import put_back
        from tuning.search.tuner import Extendable, make_tuner
        from tuning.search.tuner_state import keep_tuner_state, put_back_tuner_state

        fs, path = self.storage.fs, self.storage.path(self.name)
        if not self.resumed:
            tuner = make_tuner(self.options, trainable, self.storage)
        else:
            from tuning.search.legacy import alias_old_modules

            alias_old_modules()  # (an experiment pickled before the package layout)
            Extendable.samples = self.options.samples  # more, if extended
            put_back_tuner_state(fs, path, self.uri)
            # (a kill -9 mid-upload: the last whole save; the searcher's restored from it too)
            Extendable.restored = put_back(fs, path, self.uri)
            # Errored trials stay errored: each already failed 1 + max_failures times, and the
            # searcher, the stage and the concurrency limit all took it as ended (a rerun would
            # run beside the limit, start after the stage chose its leaders, and never be told
            # to the searcher, which ConcurrencyLimiter only forwards for its live trials)
            tuner = tune.Tuner.restore(
                path, trainable=trainable, resume_unfinished=True,
                resume_errored=False,
                storage_filesystem=self.storage.ray_kwargs()["storage_filesystem"])
        keep_tuner_state(fs, path)
        return tuner

    def finish(self) -> Outcome:
        """After `fit`: trials.csv and best_config.json, the checkpoints retention does not
        keep deleted, the stored study's stragglers settled, MLflow's orphans dropped and the
        time budget's runs ended."""
        from tuning.results.tables import load_experiment, write_reports

        analysis = load_experiment(self.storage, self.name)
        table, best = write_reports(analysis, self.report_dir)
        checkpoints = None
        if self.options.keep_checkpoints != "all":
            from tuning.search.retention import prune

            checkpoints = prune(self.storage, self.name, analysis, table)
        self._settle(table)
        return Outcome(table, best, checkpoints)

    # -- the pieces ------------------------------------------------------------------------

    def _settle(self, table) -> None:
        options = self.options
        # Tune tells neither the searcher nor the callbacks of the trials its time budget stopped
        budget_stopped = table.loc[table["status"] == "budget_stopped", "trial_id"].tolist()
        if options.optuna_storage:
            from tuning.search.searcher import settle_study
            from tuning.selection import SEARCH

            settle_study(options.optuna_storage, self.name, table[table["phase"] == SEARCH],
                         options.search_id)
        if options.mlflow:
            from tuning.tracking import drop_orphan_runs, end_runs

            drop_orphan_runs(options.mlflow, self.name, table["trial_id"], options.search_id)
            end_runs(options.mlflow, self.name, budget_stopped, "budget_stopped",
                     options.search_id)
