"""The Ray Tune trainable: model's seeded loop, reporting every epoch with a checkpoint."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import ray
from ray import tune

from model.data import Splits
from model.train import DEFAULTS, fit, load_checkpoint, save_checkpoint

CHECKPOINT_FILE = "state.pt"
# Keys of the Tune config that are not model config keys.
SEARCH_KEYS = {"search_seed"}
# Fault injection for the reliability tests: a trial started fresh raises after this epoch once;
# its retry resumes from the checkpoint and does not raise again.
FAULT_EPOCH_ENV = "EMOTION_FAULT_EPOCH"


class TrialDiverged(RuntimeError):
    """The loss became NaN/inf: the trial ends with an error status; the search goes on."""


def trial_seed(config: dict) -> int:
    """A trial's seed: derived from the search seed and the trial's hyperparameters.

    The same hyperparameters in the same search always train the same way (retries, resumes and
    reruns included), whatever order or node the trials ran in.
    """
    params = {k: v for k, v in config.items() if k in DEFAULTS and k != "seed"}
    blob = json.dumps([config.get("search_seed", 0), params], sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big")


def model_config(config: dict) -> dict:
    cfg = {k: v for k, v in config.items() if k not in SEARCH_KEYS}
    cfg["seed"] = trial_seed(config)
    return cfg


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
    for epoch in fit(cfg, splits, resume=resume):
        if epoch.status == "nan":
            raise TrialDiverged(f"non-finite training loss in epoch {epoch.epoch} (lr {cfg['lr']:.3g})")
        # every epoch reports val_f1 (never a stale value): ASHA and Optuna act on the last report
        metrics = {**epoch.metrics, "seed": cfg["seed"], "status": epoch.status, "node_id": node}
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(epoch.checkpoint(), Path(folder) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        if epoch.epoch == fault_epoch:
            raise RuntimeError(f"injected fault after epoch {fault_epoch} ({FAULT_EPOCH_ENV})")
