"""The Ray Tune trainable (the model's seeded loop, reporting every epoch with a checkpoint) and
the Tuner that runs it: OptunaSearch (TPE) + ASHA over the space of tuning/space.py."""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.search import SearchGenerator

from model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from model.config import TrainConfig, from_trial_params
from model.data import Splits
from model.loop import train_epochs
from model.speed import FIGURES, measure
from tuning.outcome import METRIC, MODE

CHECKPOINT_FILE = "state.pt"
# Fault injection for the reliability tests. FAULT_EPOCH: a trial started fresh raises after this
# epoch once; its retry resumes from the checkpoint and does not raise again. DIVERGE_EPOCH: the
# training loss of every trial reads as NaN from this epoch on (a real divergence, as far as
# the loop can tell).
FAULT_EPOCH_ENV = "EMOTION_FAULT_EPOCH"
DIVERGE_EPOCH_ENV = "EMOTION_FAULT_DIVERGE_EPOCH"
# CRASH_IF="key=value": a trial with that hyperparameter value crashes at every start (a trial
# that ends as an error once its retries are spent)
CRASH_IF_ENV = "EMOTION_FAULT_CRASH_IF"


def read_checkpoint(checkpoint: tune.Checkpoint) -> dict:
    """The training state a trial saved in a Tune checkpoint (local or in a bucket)."""
    with checkpoint.as_directory() as folder:
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE)


def train_trial(config: dict, splits: Splits) -> None:
    """Ray Tune function trainable. `splits` comes once from the object store (with_parameters)."""
    cfg = TrainConfig.from_flat(from_trial_params(config))
    key, _, value = os.environ.get(CRASH_IF_ENV, "").partition("=")
    if key and str(config.get(key)) == value:
        raise RuntimeError(f"injected crash: {key}={value} ({CRASH_IF_ENV})")
    checkpoint = tune.get_checkpoint()  # set when Tune retries a failed trial or resumes a search
    resume = read_checkpoint(checkpoint) if checkpoint is not None else None
    node = ray.get_runtime_context().get_node_id()  # which cluster node ran it
    fault_epoch = int(os.environ.get(FAULT_EPOCH_ENV, "0")) if resume is None else 0
    diverge_epoch = int(os.environ.get(DIVERGE_EPOCH_ENV, "0"))
    speed = {}
    with contextlib.ExitStack() as faults:
        if 0 < diverge_epoch <= (resume["epoch"] + 1 if resume else 1):
            faults.enter_context(_diverging_loss())
        for epoch in train_epochs(cfg, splits, resume=resume):
            # every epoch reports val_f1 (never a stale value): ASHA and Optuna act on the last
            metrics = {**epoch.metrics, "seed": cfg.run.seed, "status": epoch.status,
                       "node_id": node, "family": cfg.family, **speed}
            if epoch.status == "diverged":
                # Not an error: a retry would diverge again, deterministically. The trial ends
                # with val_f1 0 (the worst macro-F1), which ASHA and Optuna rank like any result.
                # (Unmeasured if it diverged on its first epoch: a multi-objective search's Tune
                # wants every objective's key in every result, NaN or not)
                tune.report({**dict.fromkeys(FIGURES, math.nan), **metrics})
                return
            state = epoch.training_state()
            if not speed:
                # once per trial (per run of it), on its first epoch's weights, its best so far:
                # the architecture, not the weights, sets the time. So every result, an ASHA
                # cut's at the first rung too, carries it (multi-objective search needs it)
                speed = trial_speed(state, splits)
                metrics.update(speed)
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(state, Path(folder) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            if epoch.epoch == fault_epoch:
                raise RuntimeError(f"injected fault after epoch {fault_epoch} ({FAULT_EPOCH_ENV})")
            if epoch.epoch + 1 == diverge_epoch:
                faults.enter_context(_diverging_loss())


def trial_speed(state: dict, splits: Splits) -> dict:
    """model/speed.py's figures of a training state's network, on the validation texts. Building
    the network draws initial weights from torch's global RNG, which the training goes on
    drawing dropout masks from: forked, so a trial's numbers do not depend on being measured."""
    with torch.random.fork_rng(devices=[]):
        return measure(model_from_checkpoint(state), splits.val)


def _diverging_loss():
    """Every training loss reads as NaN (fault injection), until the context is left."""
    from unittest import mock

    from torch import nn

    forward = nn.CrossEntropyLoss.forward
    return mock.patch.object(nn.CrossEntropyLoss, "forward",
                             lambda self, x, y: forward(self, x, y) * float("nan"))


class Extendable(SearchGenerator):
    """Tune's SearchGenerator, whose number of trials a resume can raise (`--resume --samples`):
    Tune restores it with the total it was first given and never adds trials to a restored
    experiment (ray #18847). The driver sets `Extendable.samples` (search trials) before
    `fit`; with a stage, its `Intensify` is extended too, and the total leaves room for the
    replicates run so far and a full new stage (the stage says when it is done)."""

    samples: int | None = None

    def set_state(self, state: dict) -> None:
        from tuning.intensify import Intensify

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


def objective_metrics(opts: dict) -> list[str]:
    """The result metrics a search's searcher optimises (an experiment from before
    --objectives: val macro-F1 alone)."""
    return [OBJECTIVES[o][0] for o in opts.get("objectives") or ["f1"]]


def make_trainable(splits: Splits, cpus_per_trial: int, gpus_per_trial: float):
    resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_trial, splits=splits), resources)


def make_tuner(opts: dict, trainable, storage) -> tune.Tuner:
    """The Tuner for a search's options (search_options.json: the CLI flags, as first given):
    `samples` trials of OptunaSearch + ASHA, then the intensification trials (tuning/intensify.py)."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from tuning import space as space_mod
    from tuning.intensify import Intensify, StagedASHA, stage_trials
    from tuning.searcher import EpochOptunaSearch

    space = space_mod.stored_space(opts["space"])
    # fixed per search: every trial gets these as plain values (not searched); the searched
    # keys, and the fixed ones of the trial's family, come from the searcher's conditional space
    param_space = {"epochs": opts["max_epochs"], "threads": opts["cpus_per_trial"],
                   "search_seed": opts["seed"],
                   "device": "cuda" if opts["gpus_per_trial"] > 0 else "cpu"}
    warm = opts.get("warm_start") or []
    points = (opts.get("points") if opts.get("points") is not None
              else space_mod.known_good_points(space))
    tried = [w["params"] for w in warm]  # a point the warm start already measured is not rerun
    objectives = objective_metrics(opts)
    searcher = EpochOptunaSearch(
        space=space_mod.ConditionalSpace(space),
        metric=objectives[0] if len(objectives) == 1 else objectives,
        mode=MODE if len(objectives) == 1 else [OBJECTIVES[o][1] for o in opts["objectives"]],
        max_epochs=opts["max_epochs"], warm=warm, search_id=opts.get("search_id"),
        points_to_evaluate=[p for p in points if p not in tried] or None,
        # (an experiment from before --sampler used TPE; TPE is multi-objective too)
        sampler=(optuna.samplers.RandomSampler(seed=opts["seed"])
                 if opts.get("sampler") == "random" else optuna.samplers.TPESampler(seed=opts["seed"])),
        study_name=opts["name"],
        storage=optuna.storages.RDBStorage(opts["optuna_storage"]) if opts["optuna_storage"] else None,
    )
    optuna_search = searcher
    if stage_trials(opts):
        searcher = Intensify(searcher, opts["samples"], opts["intensify_top"],
                             opts["intensify_seeds"])
    callbacks = []
    if not opts.get("verbose"):  # (with --verbose: Tune's status tables)
        from tuning.progress import Progress

        callbacks.append(Progress(opts["samples"] + stage_trials(opts), opts["max_epochs"]))
    if opts.get("keep_checkpoints", "all") != "all":
        from tuning.retention import Retention

        callbacks.append(Retention(top=opts.get("intensify_top", 0)))
    if opts.get("mlflow"):  # Tune pickles its callbacks with the experiment: a resume keeps them
        from tuning.tracking import TrialRuns

        callbacks.append(TrialRuns(opts["mlflow"], opts["name"], opts["max_epochs"],
                                   opts.get("search_id")))
    scheduler = StagedASHA(time_attr="epoch", max_t=opts["max_epochs"],
                           grace_period=opts["grace_period"],
                           reduction_factor=opts["reduction_factor"], searcher=optuna_search)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE,
            search_alg=Extendable(ConcurrencyLimiter(searcher, max_concurrent=opts["concurrency"])),
            scheduler=scheduler,
            num_samples=opts["samples"] + stage_trials(opts),
            time_budget_s=opts["time_budget_s"],
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            # a new trial reuses a finished trial's worker: no new process importing torch and
            # fetching the splits again for each of the 50 trials
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=opts["name"],
            callbacks=callbacks,
            verbose=None if opts.get("verbose") else 0,
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
