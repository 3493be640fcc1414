"""The Tuner of a search: its trainable, OptunaSearch (TPE; searcher.py) under a concurrency
limit, the stage (stage.py), ASHA (scheduler.py), the callbacks (progress, retention, MLflow),
and a search generator whose total a resume can raise (`--resume --samples`)."""
from __future__ import annotations

from ray import tune
from ray.tune.search import SearchGenerator

from tuning.options import SearchOptions
from tuning.outcome import METRIC, MODE


class Extendable(SearchGenerator):
    """Tune's SearchGenerator, whose number of trials a resume can raise (`--resume --samples`):
    Tune restores it with the total it was first given and never adds trials to a restored
    experiment (ray #18847). The driver sets `Extendable.samples` (search trials) before
    `fit`; with a stage, its `Intensify` is extended too, and the total leaves room for the
    replicates run so far and a full new stage (the stage says when it is done). Each save
    also bundles the experiment's state whole, and a resume restores the searcher from the
    bundle the driver sets as `Extendable.restored` (saved_state.py)."""

    samples: int | None = None
    restored: dict | None = None  # the bundle a resume restores the searcher from

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        # (Tune has just written the experiment state there: bundled with this save's searcher
        # state, one file a resume can trust whole, saved_state.py)
        from tuning.search.saved_state import bundle

        super().save_to_dir(dirpath, session_str)
        bundle(dirpath, session_str)

    def restore_from_dir(self, dirpath: str) -> None:
        from tuning.search.saved_state import restore_staged

        if Extendable.restored is not None:
            restore_staged(dirpath, Extendable.restored)
        super().restore_from_dir(dirpath)

    def set_state(self, state: dict) -> None:
        from tuning.search.stage import Intensify

        super().set_state(state)
        if Extendable.samples is None:
            return
        stage, searcher = 0, self.searcher
        while searcher is not None:  # (ConcurrencyLimiter -> Intensify -> OptunaSearch)
            if isinstance(searcher, Intensify):
                if Extendable.samples <= searcher.samples:
                    return  # not extended: the total Tune restored stands
                searcher.extend(Extendable.samples)
                stage = len(searcher.replicated) + searcher.top * searcher.seeds
            searcher = getattr(searcher, "searcher", None)
        total = Extendable.samples + stage
        if total > self._total_samples:
            self._total_samples, self._finished = total, False


# --objectives: name -> (the result's metric, the direction Optuna is told). ASHA cuts on val
# macro-F1 alone (a Tune scheduler takes one metric); Optuna's sampler weighs them all.
OBJECTIVES = {"f1": (METRIC, MODE), "latency": ("latency_ms", "min")}


def sampler_seed(options: SearchOptions) -> int:
    """The sampler's seed: --seed; for a warm-started search, --seed mixed with the trials it
    learns from. (An experiment warm-started from one run with the same --seed would otherwise
    draw its random first trials from the same stream, which that one's random trials came
    from: the same configurations again, with the same trial seeds, trained twice.)"""
    if not options.warm_start:
        return options.seed
    import hashlib
    import json

    key = [options.seed, sorted(w["trial_id"] for w in options.warm_start)]
    return int.from_bytes(hashlib.sha256(json.dumps(key).encode()).digest()[:4], "big")


def make_searcher(options: SearchOptions):
    """OptunaSearch over the options' conditional space, started at its points (those the warm
    start measured left out), told per-epoch values (searcher.py)."""
    import optuna

    from tuning import points as points_mod
    from tuning import space as space_mod
    from tuning.search.searcher import EpochOptunaSearch

    space = space_mod.stored_space(options.space)
    points = (options.points if options.points is not None
              else points_mod.known_good_points(space))
    tried = [w["params"] for w in options.warm_start]  # a point measured already is not rerun
    metrics = [OBJECTIVES[o][0] for o in options.objectives]
    modes = [OBJECTIVES[o][1] for o in options.objectives]
    sampler = (optuna.samplers.RandomSampler if options.sampler == "random"
               else optuna.samplers.TPESampler)(seed=sampler_seed(options))  # (TPE: multi too)
    return EpochOptunaSearch(
        space=space_mod.ConditionalSpace(space),
        metric=metrics[0] if len(metrics) == 1 else metrics,
        mode=modes[0] if len(modes) == 1 else modes,
        max_epochs=options.max_epochs, warm=options.warm_start, search_id=options.search_id,
        points_to_evaluate=[p for p in points if p not in tried] or None,
        sampler=sampler, study_name=options.name,
        storage=(optuna.storages.RDBStorage(options.optuna_storage)
                 if options.optuna_storage else None),
    )


def make_callbacks(options: SearchOptions) -> list:
    """The progress line (not with --verbose: Tune's tables), retention, MLflow. Tune pickles
    its callbacks with the experiment: a resume keeps them."""
    callbacks = []
    if not options.verbose:
        from tuning.search.progress import Progress

        callbacks.append(Progress(options.samples + options.stage_trials, options.max_epochs))
    if options.keep_checkpoints != "all":
        from tuning.search.retention import Retention

        callbacks.append(Retention(top=options.intensify_top))
    if options.mlflow:
        from tuning.tracking import TrialRuns

        callbacks.append(TrialRuns(options.mlflow, options.name, options.max_epochs,
                                   options.search_id))
    return callbacks


def make_tuner(options: SearchOptions, trainable, storage) -> tune.Tuner:
    """The Tuner of a new experiment: `samples` trials of OptunaSearch + ASHA, then the
    intensification trials (stage.py), `concurrency` at once."""
    from ray.tune.search import ConcurrencyLimiter

    from tuning.search.scheduler import StagedASHA
    from tuning.search.stage import Intensify

    optuna_search = searcher = make_searcher(options)
    if options.stage_trials:
        searcher = Intensify(searcher, options.samples, options.intensify_top,
                             options.intensify_seeds)
    # fixed per search: every trial gets these as plain values (not searched); the searched
    # keys, and the fixed ones of the trial's family, come from the searcher's conditional space
    param_space = {"epochs": options.max_epochs, "threads": options.cpus_per_trial,
                   "search_seed": options.seed,
                   "device": "cuda" if options.gpus_per_trial > 0 else "cpu",
                   "precision": options.precision}
    scheduler = StagedASHA(time_attr="epoch", max_t=options.max_epochs,
                           grace_period=options.grace_period,
                           reduction_factor=options.reduction_factor, searcher=optuna_search)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE,
            search_alg=Extendable(ConcurrencyLimiter(searcher,
                                                     max_concurrent=options.concurrency)),
            scheduler=scheduler,
            num_samples=options.samples + options.stage_trials,
            time_budget_s=options.time_budget_s,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            # a new trial reuses a finished trial's worker: no new process importing torch and
            # fetching the splits again for each of the 50 trials
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=options.name,
            callbacks=make_callbacks(options),
            verbose=None if options.verbose else 0,
            **storage.ray_kwargs(),  # a folder, or a cloud filesystem and the path on it
            # Every epoch's checkpoint is kept: a cap (num_to_keep=K) makes Tune snapshot the
            # experiment state whenever a trial has written K checkpoints since the last one
            # (docs/guide.md, outputs)
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE),
            # a crashed trial restarts from its last checkpoint, up to twice
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )
