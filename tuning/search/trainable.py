"""The Ray Tune trainable (the model's seeded loop, reporting every epoch with a checkpoint) and
the Tuner that runs it: OptunaSearch (TPE) + ASHA over the space of tuning/space.py."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from model.checkpoint import model_from_checkpoint, save_checkpoint
from model.config import TrainConfig, from_trial_params
from model.data import Splits
from model.loop import train_epochs
from model.precision import on_this_cpu
from model.speed import FIGURES, measure
from tuning.storage import CHECKPOINT_FILE, read_checkpoint

# Fault injection for the reliability tests. FAULT_EPOCH: a trial started fresh raises after this
# epoch once; its retry resumes from the checkpoint and does not raise again. DIVERGE_EPOCH: the
# training loss of every trial reads as NaN from this epoch on (a real divergence, as far as
# the loop can tell).
FAULT_EPOCH_ENV = "EMOTION_FAULT_EPOCH"
DIVERGE_EPOCH_ENV = "EMOTION_FAULT_DIVERGE_EPOCH"
# CRASH_IF="key=value": a trial with that hyperparameter value crashes at every start (a trial
# that ends as an error once its retries are spent)
QUIET_LOGGERS = ("ray.train", "ray.tune")  # in a trial's worker, unless --verbose
CRASH_IF_ENV = "EMOTION_FAULT_CRASH_IF"
# in a trial's checkpointed training state: its figures (model/speed.py FIGURES), as measured
SPEED_KEY = "speed"


def _quiet_exit_in_finalizer(unraisable) -> None:
    """When the search ends, Ray ends each idle worker with SIGTERM, and its handler raises
    SystemExit; landing inside a finalizer (a WeakSet callback, say) Python ignores it but prints
    its traceback ("Exception ignored in ...", 9 lines on the user's terminal after a search that
    went well). That one case is not printed; anything else is, as Python would."""
    if not issubclass(unraisable.exc_type, SystemExit):
        sys.__unraisablehook__(unraisable)


def train_trial(config: dict, splits: Splits, verbose: bool = False) -> None:
    """Ray Tune function trainable. `splits` comes once from the object store (with_parameters).
    Unless `verbose`, Ray Train's and Tune's INFO lines in this worker are not logged (Ray
    Train logs `Checkpoint successfully created at: ...` once per epoch of every trial, and the
    driver prints every worker line); warnings and errors are, with their worker's prefix."""
    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        sys.unraisablehook = _quiet_exit_in_finalizer
    cfg = TrainConfig.from_flat(from_trial_params(config))
    key, _, value = os.environ.get(CRASH_IF_ENV, "").partition("=")
    if key and str(config.get(key)) == value:
        raise RuntimeError(f"injected crash: {key}={value} ({CRASH_IF_ENV})")
    checkpoint = tune.get_checkpoint()  # set when Tune retries a failed trial or resumes a search
    resume = read_checkpoint(checkpoint) if checkpoint is not None else None
    node = ray.get_runtime_context().get_node_id()  # which cluster node ran it
    fault_epoch = int(os.environ.get(FAULT_EPOCH_ENV, "0")) if resume is None else 0
    diverge_epoch = int(os.environ.get(DIVERGE_EPOCH_ENV, "0"))
    # the figures measured before a retry or a resume come with the checkpoint: a restart that
    # diverges at once still reports them (a checkpoint from before they were kept has none)
    speed = dict(resume.get(SPEED_KEY) or {}) if resume else {}
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
                # (Unmeasured only if it diverged on its very first epoch: a multi-objective
                # search's Tune wants every objective's key in every result, NaN or not)
                tune.report({**dict.fromkeys(FIGURES, math.nan), **metrics})
                return
            state = epoch.training_state()
            if not speed:
                # once per trial, on its first epoch's weights, its best so far: the
                # architecture, not the weights, sets the time. So every result, an ASHA cut's
                # at the first rung too, carries it (multi-objective search needs it)
                speed = trial_speed(state, splits)
                metrics.update(speed)
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint({**state, SPEED_KEY: speed}, Path(folder) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            if epoch.epoch == fault_epoch:
                raise RuntimeError(f"injected fault after epoch {fault_epoch} ({FAULT_EPOCH_ENV})")
            if epoch.epoch + 1 == diverge_epoch:
                faults.enter_context(_diverging_loss())


def trial_speed(state: dict, splits: Splits) -> dict:
    """model/speed.py's figures of a training state's network, on the validation texts, in the
    precision it would be served in on this CPU (`latency_precision`). Building the network
    draws initial weights from torch's global RNG, which the training goes on drawing dropout
    masks from: forked, so a trial's numbers do not depend on being measured."""
    served = on_this_cpu(state["config"].get("precision", "fp32")).precision
    with torch.random.fork_rng(devices=[]):
        return {**measure(model_from_checkpoint(state), splits.val, served),
                "latency_precision": served}


def _diverging_loss():
    """Every training loss reads as NaN (fault injection), until the context is left."""
    from unittest import mock

    from torch import nn

    forward = nn.CrossEntropyLoss.forward
    return mock.patch.object(nn.CrossEntropyLoss, "forward",
                             lambda self, x, y: forward(self, x, y) * float("nan"))


def make_trainable(splits: Splits, cpus_per_trial: int, gpus_per_trial: float,
                   verbose: bool = False):
    resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_trial, splits=splits, verbose=verbose),
                               resources)
