"""The Ray Tune trainable: model's seeded loop, reporting every epoch with a checkpoint."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import ray
from ray import tune

from model.data import Splits
from model.train import SEARCH_SEED_KEY, fit, load_checkpoint, save_checkpoint, trial_seed

CHECKPOINT_FILE = "state.pt"
# Fault injection for the reliability tests. FAULT_EPOCH: a trial started fresh raises after this
# epoch once; its retry resumes from the checkpoint and does not raise again. DIVERGE_EPOCH: the
# training loss of every trial reads as NaN from this epoch on (a real divergence, as far as
# the loop can tell).
FAULT_EPOCH_ENV = "EMOTION_FAULT_EPOCH"
DIVERGE_EPOCH_ENV = "EMOTION_FAULT_DIVERGE_EPOCH"


def model_config(config: dict) -> dict:
    """A trial's Tune config -> the model config it trains with (its own seed included)."""
    cfg = {k: v for k, v in config.items() if k != SEARCH_SEED_KEY}
    cfg["seed"] = trial_seed(config)
    return cfg


def _diverging_loss():
    """Every training loss reads as NaN (fault injection), until the context is left."""
    from unittest import mock

    from torch import nn

    forward = nn.CrossEntropyLoss.forward
    return mock.patch.object(nn.CrossEntropyLoss, "forward",
                             lambda self, x, y: forward(self, x, y) * float("nan"))


def train_trial(config: dict, splits: Splits) -> None:
    """Ray Tune function trainable. `splits` comes once from the object store (with_parameters)."""
    cfg = model_config(config)
    resume = None
    checkpoint = tune.get_checkpoint()  # set when Tune retries a failed trial or resumes a search
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    node = ray.get_runtime_context().get_node_id()  # which cluster node ran it
    fault_epoch = int(os.environ.get(FAULT_EPOCH_ENV, "0")) if resume is None else 0
    diverge_epoch = int(os.environ.get(DIVERGE_EPOCH_ENV, "0"))
    with contextlib.ExitStack() as faults:
        if 0 < diverge_epoch <= (resume["epoch"] + 1 if resume else 1):
            faults.enter_context(_diverging_loss())
        for epoch in fit(cfg, splits, resume=resume):
            # every epoch reports val_f1 (never a stale value): ASHA and Optuna act on the last
            metrics = {**epoch.metrics, "seed": cfg["seed"], "status": epoch.status, "node_id": node}
            if epoch.status == "diverged":
                # Not an error: a retry would diverge again, deterministically. The trial ends
                # with val_f1 0 (the worst macro-F1), which ASHA and Optuna rank like any result.
                tune.report(metrics)
                return
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(epoch.training_state(), Path(folder) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            if epoch.epoch == fault_epoch:
                raise RuntimeError(f"injected fault after epoch {fault_epoch} ({FAULT_EPOCH_ENV})")
            if epoch.epoch + 1 == diverge_epoch:
                faults.enter_context(_diverging_loss())
