"""python -m tuning.evaluate_best: the best trial's honest numbers on the test split, and a report.

The search never reads the test split; this is the one place that does, once, for the checkpoint
chosen on validation macro-F1. Everything goes to a temporary folder that replaces
artifacts/best/ only when complete.
"""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from dataprep.schema import LABELS
from dataprep.vocab import Vocab
from model.checkpoint import (
    CHECKPOINT_FORMAT,
    check_checkpoint,
    model_from_checkpoint,
)
from model.config import TrainConfig, from_trial_params
from model.data import Splits, load_processed
from model.loop import evaluate, train_epochs
from model.speed import measure
from plumbing.cli import ArgumentParser, non_negative_int, redact, refuse_secrets, run_main
from plumbing.errors import DataError, UsageError
from plumbing.files import atomic_folder
from plumbing.paths import Paths, paths

PROG = "python -m tuning.evaluate_best"
MODEL_FILE = "model.pt"


def test_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    ids = list(range(len(LABELS)))
    report = classification_report(y_true, y_pred, labels=ids, target_names=list(LABELS),
                                   output_dict=True, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", labels=ids, zero_division=0)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", labels=ids,
                                      zero_division=0)),
        "per_class": {name: {k: (int(v) if k == "support" else float(v))
                             for k, v in report[name].items()} for name in LABELS},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


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
        res = evaluate(model_from_checkpoint(best_state), splits.test)
        rows.append({"seed": seed, "val_f1": best_f1, "test_accuracy": res["acc"],
                     "test_f1_macro": res["f1"]})
        print(f"  reseed {seed}: val_f1 {best_f1:.4f}  test acc {res['acc']:.4f}  "
              f"f1 {res['f1']:.4f}", file=sys.stderr)
    return rows


def parse_pick(ap, words: list[str]) -> float | None:
    """--pick best -> None; --pick fastest-within D -> D (>= 0); anything else: a usage error."""
    if words == ["best"]:
        return None
    if len(words) == 2 and words[0] == "fastest-within":
        try:
            within = float(words[1])
        except ValueError:
            within = -1.0
        if math.isfinite(within) and within >= 0:
            return within
        ap.error(f"argument --pick: fastest-within needs a distance >= 0, got {words[1]!r}")
    ap.error(f"argument --pick: expected `best` or `fastest-within D`, got {' '.join(words)!r}")


def find_experiment(p: Paths, flag: str | None):
    """--experiment (a folder or a URI), else the latest in ray_results/: (its storage, name)."""
    from tuning.storage import open_experiment, open_storage

    if flag:
        return open_experiment(flag)
    storage = open_storage(None, p.ray_results)
    name = storage.latest_experiment()
    if name is None:
        raise DataError(f"no experiment in {p.ray_results}: run `python -m tuning.search` first "
                        f"or pass --experiment")
    return storage, name


def main(argv=None) -> int:
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", metavar="DIR|URI",
                    help="ray_results/NAME, or STORAGE_URI/NAME (s3://..., gs://...; only the "
                         "best trial's checkpoint is fetched) (default: the latest in ray_results/)")
    ap.add_argument("--reseed", type=non_negative_int, default=0, metavar="K",
                    help="also retrain the best config with K other seeds: test mean ± std")
    ap.add_argument("--pick", nargs="+", default=["best"], metavar="RULE",
                    help="which trial to evaluate: best (default: the best val macro-F1, as the "
                         "search chose), or `fastest-within D`: the fastest (single-sentence "
                         "latency) search trial within D of the best val macro-F1, e.g. "
                         "--pick fastest-within 0.005")
    args = ap.parse_args(argv)
    within = parse_pick(ap, args.pick)
    try:
        refuse_secrets("--experiment", args.experiment)
    except UsageError as e:
        ap.error(f"argument {e}")
    p = paths()
    from tuning import space as space_mod
    from tuning.baselines import baselines
    from tuning.report import (
        plot_confusion,
        plot_frontier,
        plot_learning_curve,
        plot_search_history,
        write_report,
    )
    from tuning.results import (
        hyperparameter_importance,
        load_experiment,
        search_options,
        trials_frame,
        winner,
    )
    from tuning.trainable import read_checkpoint

    storage, name = find_experiment(p, args.experiment)
    analysis = load_experiment(storage, name)
    trials = trials_frame(analysis)
    trial, checkpoint, choice = winner(analysis, trials, within)
    opts = search_options(p.search_reports / name, storage, name) or {}
    if opts.get("mlflow"):  # before the test pass: it must not be run for nothing
        from tuning.tracking import check_store

        check_store(opts["mlflow"], name)
    state = read_checkpoint(checkpoint)
    splits = load_processed(p, with_test=True)
    check_checkpoint(state, splits.vocab_sha256)
    model = model_from_checkpoint(state)
    if choice.get("pick"):
        pick = choice["pick"]
        print(f"picked: {choice['rule']}: trial {choice['trial_id']}, {pick['latency_ms']:.3f} ms "
              f"a sentence (the best, {pick['best_trial_id']}: {pick['best_latency_ms']:.3f} ms)",
              file=sys.stderr)
    elif choice["candidates"]:
        per_seed = ", ".join(f"{seed['val_f1']:.4f}" for seed in choice["seeds"])
        print(f"winner: the configuration with the best mean val_f1 over seeds, "
              f"{choice['mean_val_f1']:.4f} ± {choice['std_val_f1']:.4f} (seeds: {per_seed}); "
              f"its best seed:", file=sys.stderr)
    print(f"best trial {trial.trial_id}: val_f1 {state['metrics']['val_f1']:.4f} at epoch "
          f"{state['epoch']}; evaluating once on the test split", file=sys.stderr)
    res = evaluate(model, splits.test)
    speed = measure(model, splits.val)  # (on this checkpoint, the machine otherwise idle)
    m = test_metrics(splits.test.labels.numpy(), res["logits"].argmax(1).numpy())
    m.update(val_f1=state["metrics"]["val_f1"], val_acc=state["metrics"]["val_acc"],
             trial_id=trial.trial_id, best_epoch=state["epoch"], seed=state["config"]["seed"],
             config=state["config"], experiment=name, test_rows=len(splits.test),
             selection=choice, family=TrainConfig.from_flat(state["config"]).family, speed=speed)

    print("baselines (majority, TF-IDF + LinearSVC)...", file=sys.stderr)
    base = baselines(p)
    importance = hyperparameter_importance(trials, space_mod.stored_space(opts.get("space")))
    reseeds = []
    if args.reseed:
        seeds = [state["config"]["seed"] + i for i in range(1, args.reseed + 1)]
        print(f"retraining the best config with seeds {seeds}...", file=sys.stderr)
        # on the same training rows as the search (a --subset search retrains on that subset)
        train = splits.head(opts["subset"], opts["subset"]) if opts.get("subset") else splits
        reseeds = reseed(from_trial_params(trial.config) | {"device": "cpu"}, train, seeds)
    m["baselines"], m["importance"], m["reseed"] = base, importance, reseeds

    history = analysis.trial_dataframes[trial.trial_id]
    vocab = Vocab.load(p.vocab)
    with atomic_folder(p.best) as tmp:  # artifacts/best/ is replaced only once complete
        torch.save({"format": CHECKPOINT_FORMAT, "model": state["model"], "config": state["config"],
                    "vocab_size": state["vocab_size"], "vocab_sha256": state["vocab_sha256"],
                    "vocab": vocab.itos, "labels": list(LABELS)}, tmp / MODEL_FILE)
        (tmp / "metrics.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
        report = pd.DataFrame(m["per_class"]).T
        report.index.name = "label"
        report.to_csv(tmp / "classification_report.csv")
        pd.DataFrame(m["confusion_matrix"], index=list(LABELS), columns=list(LABELS)).rename_axis(
            "true \\ predicted").to_csv(tmp / "confusion_matrix.csv")
        plot_confusion(m["confusion_matrix"], tmp / "confusion_matrix.png")
        plot_learning_curve(history, tmp / "learning_curve.png")
        plot_search_history(trials, tmp / "search_history.png")
        plot_frontier(trials, m["trial_id"], tmp / "frontier.png")
        write_report(tmp, m, base, importance, reseeds, trials, name)
    print(f"test accuracy {m['accuracy']:.4f}  macro-F1 {m['f1_macro']:.4f}  weighted-F1 "
          f"{m['f1_weighted']:.4f}  ({len(splits.test)} rows); {speed['params']:,} parameters, "
          f"{speed['latency_ms']:.3f} ms a sentence (batch 1, one thread), "
          f"{speed['sentences_per_s_b256']:,.0f} sentences/s at batch 256", file=sys.stderr)
    for row in base:
        print(f"  baseline {row['model']}: test accuracy {row['test_accuracy']:.4f}  macro-F1 "
              f"{row['test_f1_macro']:.4f}", file=sys.stderr)
    print(f"wrote {p.best}/ (report.md, metrics.json, model.pt, plots)", file=sys.stderr)
    if opts.get("mlflow"):  # the search was tracked: the evaluation joins its experiment
        from tuning.tracking import log_evaluation

        run_id = log_evaluation(opts["mlflow"], name, m, p.best, opts.get("search_id"))
        print(f"MLflow: run {run_id} (evaluate_best) in experiment {name!r}: mlflow ui "
              f"--backend-store-uri {redact(opts['mlflow'])}", file=sys.stderr)
    print(json.dumps({"accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
                      "f1_weighted": m["f1_weighted"], "val_f1": m["val_f1"],
                      "trial_id": m["trial_id"]}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
