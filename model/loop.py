"""The seeded training loop: `train_epochs(config, splits)` yields one `Epoch` per epoch.

Between epochs a caller can report, keep a copy of the training state and stop; passing a saved
state back as `resume=` continues exactly where it stopped (same batches, same numbers).
"""
from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from model.checkpoint import CHECKPOINT_FORMAT, check_checkpoint
from model.config import TrainConfig
from model.data import EncodedSplit, Splits, bucketed_batches, count_batches, eval_batches
from model.precision import autocast, grad_scaler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Epoch:
    """One finished epoch: its metrics, and `training_state()` to copy the whole training state.

    `training_state()` returns copies, never views of the live weights (the optimizer updates
    those in place as soon as training goes on), and it can only be called while this epoch is
    the loop's current one: afterwards the weights are another epoch's, so it raises.
    """
    epoch: int
    metrics: dict
    improved: bool   # best val macro-F1 so far
    stop: bool       # the loop ends after this epoch (early stop, last epoch, or divergence)
    status: str      # "running", "early_stopped", "completed" or "diverged"
    _state: object = field(repr=False, default=None)
    _current: bool = field(repr=False, default=True)

    def training_state(self) -> dict:
        if not self._current:
            raise RuntimeError(f"training_state() of epoch {self.epoch} asked for after the loop "
                               f"went on: take it before the next epoch")
        if self._state is None:
            raise RuntimeError(f"epoch {self.epoch} diverged: it has no training state to keep")
        return copy.deepcopy(self._state())


@torch.no_grad()
def evaluate(model: nn.Module, split: EncodedSplit, batch_size: int = 1024,
             label_smoothing: float = 0.0, precision: str = "fp32") -> dict:
    """Loss, accuracy and macro-F1 (scikit-learn) over a split, plus the logits in row order
    (float32, whatever the precision the forward passes ran in)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = torch.empty(len(split), 6)
    for idx in eval_batches(split.lengths, batch_size):
        tokens, lengths, _ = split.batch(idx)
        with autocast(precision, device):
            logits[idx] = model(tokens.to(device), lengths).float().cpu()
    model.train(was_training)
    loss = nn.functional.cross_entropy(logits, split.labels, label_smoothing=label_smoothing).item()
    pred = logits.argmax(1).numpy()
    y = split.labels.numpy()
    return {"loss": loss, "acc": float(accuracy_score(y, pred)),
            "f1": float(f1_score(y, pred, average="macro", labels=list(range(6)), zero_division=0)),
            "logits": logits}


def class_weights(labels: torch.Tensor, power: float) -> torch.Tensor | None:
    """Per-class loss weights (count ** -power), scaled so an average training row weighs 1.

    Macro-F1 counts the rare classes (love, surprise) as much as joy; power > 0 moves the
    decision boundary towards them."""
    if power == 0:
        return None
    counts = torch.bincount(labels, minlength=6).clamp(min=1).double()
    weights = counts ** -power
    weights *= len(labels) / (weights * counts).sum()
    return weights.float()


def _scheduler(optimizer, epochs: int, warmup_epochs: float, steps_per_epoch: int):
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, round(warmup_epochs * steps_per_epoch))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup <= 0:
        return cosine
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def _build(cfg: TrainConfig, splits: Splits, device: torch.device):
    """A run's network, optimizer, LR schedule, loss and gradient scaler (fp16's; a pass-through
    otherwise), drawn in this order from the seeded RNG."""
    opt = cfg.optim
    model = cfg.network(splits.vocab_size).to(device)
    # fused: one kernel for the whole update (the dense embedding gradient makes it large)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay,
                                  fused=True)
    steps_per_epoch = count_batches(splits.train.lengths, opt.batch_size)
    scheduler = _scheduler(optimizer, cfg.run.epochs, opt.warmup_epochs, steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(splits.train.labels, opt.class_weight_power),
                                  label_smoothing=opt.label_smoothing).to(device)
    return model, optimizer, scheduler, loss_fn, grad_scaler(cfg.run.precision, device)


def _restore(resume: dict, cfg: TrainConfig, splits: Splits, model, optimizer, scheduler,
             scaler, device: torch.device) -> dict:
    """Put a saved training state back into the run; returns its `best` record."""
    check_checkpoint(resume, splits.vocab_sha256, cfg)
    model.load_state_dict(resume["model"])  # (optimizer state follows the params' device)
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    if scaler.is_enabled() and resume.get("grad_scaler"):
        scaler.load_state_dict(resume["grad_scaler"])
    torch.set_rng_state(resume["rng_state"])
    if device.type == "cuda" and resume.get("cuda_rng_state") is not None:  # dropout masks
        torch.cuda.set_rng_state(resume["cuda_rng_state"], device)
    return dict(resume["best"])


def _train_epoch(cfg: TrainConfig, splits: Splits, epoch: int, model, optimizer, scheduler,
                 loss_fn, scaler, device: torch.device) -> tuple[float, bool]:
    """One epoch's updates: (the summed training loss, whether every batch's loss was finite;
    the epoch stops at the first that is not)."""
    run, opt = cfg.run, cfg.optim
    # the batch order of epoch e depends only on (seed, e): a resumed run sees the same batches
    gen = torch.Generator().manual_seed(run.seed * 100_003 + epoch)
    loss_sum = 0.0
    for idx in bucketed_batches(splits.train.lengths, opt.batch_size, gen):
        tokens, lengths, labels = splits.train.batch(idx)
        if device.type != "cpu":
            tokens, labels = tokens.to(device, non_blocking=True), labels.to(device)
        with autocast(run.precision, device):
            loss = loss_fn(model(tokens, lengths), labels)
        value = loss.item()
        if not math.isfinite(value):
            return loss_sum, False
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if opt.grad_clip > 0:
            scaler.unscale_(optimizer)  # (clip the true gradients, not fp16's scaled ones)
            nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
        scaler.step(optimizer)  # (fp16: skipped when a gradient overflowed)
        scaler.update()
        scheduler.step()
        loss_sum += value * len(idx)
    return loss_sum, True


def _state_of(cfg: TrainConfig, splits: Splits, epoch: int, metrics: dict, best: dict, model,
              optimizer, scheduler, scaler, device: torch.device):
    """The training state of the epoch just trained, as a function (`Epoch.training_state`
    copies what it returns), its epoch, metrics and best record bound now."""
    best = dict(best)

    def state():
        return {
            "format": CHECKPOINT_FORMAT, "epoch": epoch, "config": cfg.to_flat(),
            "vocab_size": splits.vocab_size, "vocab_sha256": splits.vocab_sha256,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng_state": torch.get_rng_state(),
            "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "cuda_rng_state": (torch.cuda.get_rng_state(device) if device.type == "cuda"
                               else None),
            "best": best, "metrics": metrics,
        }
    return state


def _patience_spent(best: dict, patience: int) -> bool:
    """Early stopping: `patience` epochs (> 0) in a row without a better val macro-F1."""
    return patience > 0 and best["bad_epochs"] >= patience


def train_epochs(config: TrainConfig | dict, splits: Splits, *,
                 resume: dict | None = None) -> Iterator[Epoch]:
    """Train `config` on `splits.train`, yielding an `Epoch` (with val metrics) after each epoch.

    Resumed from the state of the epoch the run ended at (its last, or the one its patience ran
    out at), it yields nothing: that run has ended."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_flat(config)
    run, opt = cfg.run, cfg.optim
    torch.set_num_threads(run.threads)
    seed_everything(run.seed)
    device = torch.device(run.device)
    model, optimizer, scheduler, loss_fn, scaler = _build(cfg, splits, device)
    best = {"val_f1": -1.0, "epoch": 0, "bad_epochs": 0}
    first_epoch = 1
    if resume is not None:
        best = _restore(resume, cfg, splits, model, optimizer, scheduler, scaler, device)
        first_epoch = resume["epoch"] + 1  # (past the last epoch: nothing is left to train)
        if _patience_spent(best, opt.patience):
            return  # the state of the epoch at which its own patience ended the run

    model.train()
    previous = None
    for epoch in range(first_epoch, run.epochs + 1):
        if previous is not None:  # its weights are about to change
            previous._current = False
        start, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        loss_sum, finite = _train_epoch(cfg, splits, epoch, model, optimizer, scheduler,
                                        loss_fn, scaler, device)
        train_s = time.perf_counter() - start
        if not finite:
            metrics = {"epoch": epoch, "train_loss": float("nan"), "val_loss": float("nan"),
                       "val_acc": 0.0, "val_f1": 0.0, "lr": lr, "sentences_per_s": 0.0}
            yield Epoch(epoch, metrics, False, True, "diverged", None)
            return
        val = evaluate(model, splits.val, run.eval_batch_size, opt.label_smoothing, run.precision)
        improved = val["f1"] > best["val_f1"]
        if improved:
            best = {"val_f1": val["f1"], "epoch": epoch, "bad_epochs": 0}
        else:
            best["bad_epochs"] += 1
        early = _patience_spent(best, opt.patience)
        last = epoch == run.epochs
        status = "early_stopped" if early and not last else ("completed" if last else "running")
        metrics = {
            "epoch": epoch, "train_loss": loss_sum / len(splits.train), "val_loss": val["loss"],
            "val_acc": val["acc"], "val_f1": val["f1"], "lr": lr,
            "sentences_per_s": len(splits.train) / train_s, "epoch_s": time.perf_counter() - start,
            "best_val_f1": best["val_f1"], "best_epoch": best["epoch"],
        }
        previous = Epoch(epoch, metrics, improved, early or last, status,
                         _state_of(cfg, splits, epoch, metrics, best, model, optimizer,
                                   scheduler, scaler, device))
        yield previous
        if early:
            return
