"""The seeded training loop every trial runs, and `python -m model.train` for one configuration.

`fit(config, splits)` is a generator: it yields one `Epoch` per epoch (metrics, plus a way to
take a checkpoint), so a caller can report, save and stop between epochs; passing a saved
checkpoint back as `resume=` continues exactly where it stopped.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from dataprep.atomic import atomic_path, write_text
from dataprep.schema import DataError, UsageError
from model.data import EncodedSplit, Splits, bucketed_batches, count_batches, eval_batches
from model.network import POOLINGS, RNNS, EmotionClassifier

CHECKPOINT_FORMAT = 1

# A sound BiLSTM: the defaults of `python -m model.train` and the centre of the search space.
DEFAULTS = {
    "seed": 0,
    "threads": 1,            # torch.set_num_threads; part of the config because results depend on it
    "epochs": 10,            # max epochs; the cosine schedule spans all of them
    "rnn": "lstm",
    "embedding_dim": 128,
    "hidden_size": 128,
    "num_layers": 1,
    "bidirectional": True,
    "pooling": "max",
    "embedding_dropout": 0.1,
    "rnn_dropout": 0.0,      # between stacked layers (needs num_layers > 1)
    "dropout": 0.3,          # before the output layer
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "warmup_epochs": 0.0,
    "grad_clip": 1.0,        # max gradient norm; 0 turns clipping off
    "label_smoothing": 0.0,
    "class_weight_power": 0.0,  # loss weight of a class = (its train count)^-power: 0 none, 1 balanced
    "patience": 3,           # epochs without a better val macro-F1 before stopping; 0 = never
    "eval_batch_size": 1024,
    "device": "cpu",         # "cuda" for a GPU trial (the search sets it from --gpus-per-trial)
}


# Settings of a run, not hyperparameters: how and where it runs, and how long at most. A search
# sets them from its flags; everything else in DEFAULTS is a hyperparameter.
RUN_KEYS = ("seed", "threads", "epochs", "device", "eval_batch_size")
HYPERPARAMETERS = tuple(k for k in DEFAULTS if k not in RUN_KEYS)
# The key a search adds to each trial's config: the seed that trial seeds are derived from.
SEARCH_SEED_KEY = "search_seed"


def _between(lo, hi):
    return lambda v: lo <= v <= hi, f"in [{lo}, {hi}]"


# key -> (types, check, what the check wants)
_RULES = {
    "seed": ((int,), *_between(0, 2**32 - 1)),
    "threads": ((int,), *_between(1, 1024)),
    "epochs": ((int,), *_between(1, 10_000)),
    "rnn": ((str,), lambda v: v in RNNS, f"one of {sorted(RNNS)}"),
    "embedding_dim": ((int,), *_between(1, 4096)),
    "hidden_size": ((int,), *_between(1, 4096)),
    "num_layers": ((int,), *_between(1, 8)),
    "bidirectional": ((bool,), lambda v: True, "true or false"),
    "pooling": ((str,), lambda v: v in POOLINGS, f"one of {list(POOLINGS)}"),
    "embedding_dropout": ((int, float), *_between(0.0, 0.95)),
    "rnn_dropout": ((int, float), *_between(0.0, 0.95)),
    "dropout": ((int, float), *_between(0.0, 0.95)),
    "lr": ((int, float), lambda v: 0 < v <= 1, "in (0, 1]"),
    "weight_decay": ((int, float), *_between(0.0, 1.0)),
    "batch_size": ((int,), *_between(1, 65_536)),
    "warmup_epochs": ((int, float), *_between(0.0, 10_000)),
    "grad_clip": ((int, float), *_between(0.0, 1e6)),
    "label_smoothing": ((int, float), *_between(0.0, 0.5)),
    "class_weight_power": ((int, float), *_between(0.0, 2.0)),
    "patience": ((int,), *_between(0, 10_000)),
    "eval_batch_size": ((int,), *_between(1, 1_000_000)),
    "device": ((str,), lambda v: v in ("cpu", "cuda") or v.startswith("cuda:"), "cpu or cuda[:N]"),
}


def make_config(overrides: dict | None = None) -> dict:
    """DEFAULTS updated with `overrides`; an unknown key or a bad value is a UsageError naming it."""
    cfg = dict(DEFAULTS)
    for key, value in (overrides or {}).items():
        if key not in _RULES:
            raise UsageError(f"unknown config key {key!r} (known: {', '.join(sorted(_RULES))})")
        types, ok, want = _RULES[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise UsageError(f"config key {key!r}: expected {'/'.join(t.__name__ for t in types)}, "
                             f"got {value!r}")
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise UsageError(f"config key {key!r}: must be {want}, got {value!r}")
        cfg[key] = value
    return cfg


def trial_seed(config: dict) -> int:
    """A search trial's seed: a hash of the search seed and the trial's hyperparameters only.

    The same hyperparameters in the same search always train from the same initial weights and
    batch order: retries, resumes and reruns included, whatever order or node the trials ran
    in, and whatever the run settings (RUN_KEYS): the same configuration rerun with more epochs,
    more threads or on a GPU starts from the same seed, so only the setting changed differs.
    """
    params = {k: config.get(k, DEFAULTS[k]) for k in HYPERPARAMETERS}
    blob = json.dumps([config.get(SEARCH_SEED_KEY, 0), params], sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big")


def config_from_document(doc, where: str) -> dict:
    """The config overrides in a parsed --config file.

    Three shapes are accepted: plain config keys; a search's best_config.json (the winner's full
    config under "config", its seed included); a trial's params.json (hyperparameters and the
    search seed: the trial's own seed is derived from them, as the search did)."""
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: expected a JSON object of config keys")
    if isinstance(doc.get("config"), dict):  # best_config.json
        doc = doc["config"]
    if SEARCH_SEED_KEY in doc:  # a trial's params.json
        rest = {k: v for k, v in doc.items() if k != SEARCH_SEED_KEY}
        return {**rest, "seed": rest.get("seed", trial_seed(doc))}
    return dict(doc)


def config_id(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]


def build_model(cfg: dict, vocab_size: int) -> EmotionClassifier:
    return EmotionClassifier(
        vocab_size, embedding_dim=cfg["embedding_dim"], hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_layers"], bidirectional=cfg["bidirectional"], rnn=cfg["rnn"],
        pooling=cfg["pooling"], embedding_dropout=cfg["embedding_dropout"],
        rnn_dropout=cfg["rnn_dropout"], dropout=cfg["dropout"])


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
             label_smoothing: float = 0.0) -> dict:
    """Loss, accuracy and macro-F1 (scikit-learn) over a split, plus the logits in row order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = torch.empty(len(split), 6)
    for idx in eval_batches(split.lengths, batch_size):
        tokens, lengths, _ = split.batch(idx)
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


def _scheduler(optimizer, cfg: dict, steps_per_epoch: int):
    total = max(1, cfg["epochs"] * steps_per_epoch)
    warmup = min(total - 1, round(cfg["warmup_epochs"] * steps_per_epoch))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup <= 0:
        return cosine
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def fit(config: dict, splits: Splits, *, resume: dict | None = None) -> Iterator[Epoch]:
    cfg = make_config(config)
    torch.set_num_threads(cfg["threads"])
    seed_everything(cfg["seed"])
    device = torch.device(cfg["device"])
    model = build_model(cfg, splits.vocab_size).to(device)
    # fused: one kernel for the whole update (the dense embedding gradient makes it large)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                  fused=True)
    steps_per_epoch = count_batches(splits.train.lengths, cfg["batch_size"])
    scheduler = _scheduler(optimizer, cfg, steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(splits.train.labels, cfg["class_weight_power"]),
                                  label_smoothing=cfg["label_smoothing"]).to(device)
    best = {"val_f1": -1.0, "epoch": 0, "bad_epochs": 0}
    first_epoch = 1
    if resume is not None:
        check_checkpoint(resume, splits.vocab_sha256, cfg)
        model.load_state_dict(resume["model"])  # (optimizer state follows the params' device)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng_state"])
        best = dict(resume["best"])
        first_epoch = resume["epoch"] + 1

    model.train()
    previous = None
    for epoch in range(first_epoch, cfg["epochs"] + 1):
        if previous is not None:  # its weights are about to change
            previous._current = False
        # the batch order of epoch e depends only on (seed, e): a resumed run sees the same batches
        gen = torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch)
        start, loss_sum, finite = time.perf_counter(), 0.0, True
        lr = optimizer.param_groups[0]["lr"]
        for idx in bucketed_batches(splits.train.lengths, cfg["batch_size"], gen):
            tokens, lengths, labels = splits.train.batch(idx)
            if device.type != "cpu":
                tokens, labels = tokens.to(device, non_blocking=True), labels.to(device)
            loss = loss_fn(model(tokens, lengths), labels)
            value = loss.item()
            if not math.isfinite(value):
                finite = False
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            optimizer.step()
            scheduler.step()
            loss_sum += value * len(idx)
        train_s = time.perf_counter() - start
        if not finite:
            metrics = {"epoch": epoch, "train_loss": float("nan"), "val_loss": float("nan"),
                       "val_acc": 0.0, "val_f1": 0.0, "lr": lr, "sentences_per_s": 0.0}
            yield Epoch(epoch, metrics, False, True, "diverged", None)
            return
        val = evaluate(model, splits.val, cfg["eval_batch_size"], cfg["label_smoothing"])
        improved = val["f1"] > best["val_f1"]
        if improved:
            best = {"val_f1": val["f1"], "epoch": epoch, "bad_epochs": 0}
        else:
            best["bad_epochs"] += 1
        early = cfg["patience"] > 0 and best["bad_epochs"] >= cfg["patience"]
        last = epoch == cfg["epochs"]
        status = "early_stopped" if early and not last else ("completed" if last else "running")
        metrics = {
            "epoch": epoch, "train_loss": loss_sum / len(splits.train), "val_loss": val["loss"],
            "val_acc": val["acc"], "val_f1": val["f1"], "lr": lr,
            "sentences_per_s": len(splits.train) / train_s, "epoch_s": time.perf_counter() - start,
            "best_val_f1": best["val_f1"], "best_epoch": best["epoch"],
        }

        def state(epoch=epoch, metrics=metrics, best=dict(best)):  # noqa: B006 - bind now
            return {
                "format": CHECKPOINT_FORMAT, "epoch": epoch, "config": cfg,
                "vocab_size": splits.vocab_size, "vocab_sha256": splits.vocab_sha256,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng_state": torch.get_rng_state(),
                "best": best, "metrics": metrics,
            }

        previous = Epoch(epoch, metrics, improved, early or last, status, state)
        yield previous
        if early:
            return


# ---- checkpoints -----------------------------------------------------------------------------

def save_checkpoint(state: dict, path: Path | str) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


class CheckpointError(DataError):
    pass


def load_checkpoint(path: Path | str) -> dict:
    """torch.load with weights_only=True: a tampered file cannot run code, only fail to load."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or unsafe pickle
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this project (format "
                              f"{state.get('format') if isinstance(state, dict) else '?'})")
    return state


def check_checkpoint(state: dict, vocab_sha256: str, cfg: dict | None = None) -> None:
    if state["vocab_sha256"] != vocab_sha256:
        raise CheckpointError("checkpoint was trained with another vocab than artifacts/vocab.json "
                              "(the data was rebuilt differently since): retrain or rebuild")
    if cfg is not None and state["config"] != cfg:
        raise CheckpointError("checkpoint's config differs from the run being resumed")


def model_from_checkpoint(state: dict) -> EmotionClassifier:
    model = build_model(make_config(state["config"]), state["vocab_size"])
    model.load_state_dict(state["model"])
    return model.eval()


# ---- CLI -------------------------------------------------------------------------------------

LOG_FIELDS = ["epoch", "train_loss", "val_loss", "val_acc", "val_f1", "lr", "sentences_per_s",
              "epoch_s"]


def train_one(cfg: dict, splits: Splits, run_dir: Path, log=print) -> dict:
    """Train one configuration, keep the best checkpoint and a CSV log; return the summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows, best, result = [], None, None
    for ep in fit(cfg, splits):
        m = ep.metrics
        rows.append({k: m[k] for k in LOG_FIELDS if k in m})
        log(f"epoch {ep.epoch:>3}/{cfg['epochs']}  train_loss {m['train_loss']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  val_f1 {m['val_f1']:.4f}  "
            f"{m['sentences_per_s']:.0f} sent/s" + ("  *" if ep.improved else ""))
        if ep.improved:
            save_checkpoint(ep.training_state(), run_dir / "best.pt")
            best = m
        result = ep
    with atomic_path(run_dir / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_text(run_dir / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if best is None:
        return {"status": result.status, "best_val_f1": None, "best_val_acc": None,
                "best_epoch": None, "epochs_run": result.epoch, "checkpoint": None}
    return {"status": result.status, "best_val_f1": round(best["val_f1"], 6),
            "best_val_acc": round(best["val_acc"], 6), "best_epoch": best["epoch"],
            "epochs_run": result.epoch, "checkpoint": str(run_dir / "best.pt")}


def main(argv=None) -> int:
    from dataprep.cli import ArgumentParser, non_negative_int, positive_int
    from dataprep.paths import paths
    from model.data import load_processed

    ap = ArgumentParser(prog="python -m model.train",
                        description="Train one configuration on data/processed; last line is JSON.")
    ap.add_argument("--config", metavar="FILE.json",
                    help="config overrides (keys: see DEFAULTS), or a search's best_config.json, "
                         "or a trial's params.json: retrains that configuration with its seed")
    ap.add_argument("--epochs", type=positive_int)
    ap.add_argument("--seed", type=non_negative_int)
    ap.add_argument("--threads", type=positive_int)
    ap.add_argument("--subset", type=positive_int, metavar="N",
                    help="use only the first N train and validation rows (as the search's --subset)")
    args = ap.parse_args(argv)
    overrides = {}
    if args.config:
        try:
            doc = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"--config {args.config}: cannot read JSON ({e})") from None
        overrides = config_from_document(doc, f"--config {args.config}")
    for key in ("epochs", "seed", "threads"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    cfg = make_config(overrides)
    p = paths()
    splits = load_processed(p)
    if args.subset:
        splits = splits.head(args.subset, args.subset)
    # the run folder is named by the config, so the same config + seed lands in the same place
    run_dir = p.train_runs / f"{config_id(cfg)}-seed{cfg['seed']}"
    summary = train_one(cfg, splits, run_dir, log=lambda s: print(s, file=sys.stderr))
    summary["checkpoint"] = summary["checkpoint"] and str(Path(summary["checkpoint"]).relative_to(p.root))
    print(json.dumps(summary, sort_keys=True))
    return 0 if summary["status"] != "diverged" else 1


if __name__ == "__main__":
    from dataprep.cli import run_main

    sys.exit(run_main(main, "python -m model.train"))
