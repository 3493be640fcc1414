"""Retraining a configuration with other seeds, each tested at its best validation epoch:
evaluate_best's --reseed, and how benchmarks/race.py scores a search's pick."""
from __future__ import annotations

import sys

from model.checkpoint import model_from_checkpoint
from model.config import TrainConfig
from model.data import Splits
from model.loop import evaluate, train_epochs


def reseed(config: dict, splits: Splits, seeds: list[int]) -> list[dict]:
    """Retrain the best config with other seeds (all epochs, best epoch by val) and test each."""
    rows = []
    for seed in seeds:
        best_state, best_f1 = None, -1.0
        cfg = TrainConfig.from_flat({**config, "seed": seed})
        for epoch in train_epochs(cfg, splits):
            if epoch.improved:
                best_f1, best_state = epoch.metrics["val_f1"], epoch.training_state()
        if best_state is None:
            rows.append({"seed": seed, "val_f1": None, "test_accuracy": None, "test_f1_macro": None})
            continue
        res = evaluate(model_from_checkpoint(best_state), splits.test,
                       precision=cfg.run.precision)
        rows.append({"seed": seed, "val_f1": best_f1, "test_accuracy": res["acc"],
                     "test_f1_macro": res["f1"]})
        print(f"  reseed {seed}: val_f1 {best_f1:.4f}  test acc {res['acc']:.4f}  "
              f"f1 {res['f1']:.4f}", file=sys.stderr)
    return rows
