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
from model.data import load_processed
from model.loop import evaluate
from model.precision import CHOICES, Resolved, on_this_cpu, resolve
from model.speed import measure
from plumbing.cli import ArgumentParser, non_negative_int, redact, refuse_secrets, run_main
from plumbing.errors import DataError, UsageError
from plumbing.files import atomic_folder
from plumbing.paths import Paths, paths
from tuning.results.reseed import reseed

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


def parse_args(argv=None):
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", metavar="DIR|URI",
                    help="ray_results/NAME, or STORAGE_URI/NAME (s3://..., gs://...; only the "
                         "best trial's checkpoint is fetched) (default: the latest in ray_results/)")
    ap.add_argument("--reseed", type=non_negative_int, default=0, metavar="K",
                    help="also retrain the best config with K other seeds: test mean ± std")
    ap.add_argument("--precision", choices=CHOICES, default=None,
                    help="what the test pass, the latency and the written model compute in "
                         "(default: what the model trained in, where this CPU has it natively; "
                         "else fp32)")
    ap.add_argument("--pick", nargs="+", default=["best"], metavar="RULE",
                    help="which trial to evaluate: best (default: the best val macro-F1, as the "
                         "search chose), or `fastest-within D`: the fastest (single-sentence "
                         "latency) search trial within D of the best val macro-F1, e.g. "
                         "--pick fastest-within 0.005")
    args = ap.parse_args(argv)
    args.within = parse_pick(ap, args.pick)
    try:
        refuse_secrets("--experiment", args.experiment)
    except UsageError as e:
        ap.error(f"argument {e}")
    return args


def say_choice(choice: dict, trial_id: str, state: dict) -> None:
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
    print(f"best trial {trial_id}: val_f1 {state['metrics']['val_f1']:.4f} at epoch "
          f"{state['epoch']}; evaluating once on the test split", file=sys.stderr)


def measure_winner(p: Paths, analysis, trials, within, options, reseeds: int,
                   precision: Resolved | None = None):
    """The test pass of the chosen checkpoint in `precision` (by default on_this_cpu's), its
    speed, the baselines, the importance table and the reseeds: (metrics.json's content, the
    trial, the checkpoint's state)."""
    from tuning import space as space_mod
    from tuning.results.baselines import baselines
    from tuning.results.importance import hyperparameter_importance
    from tuning.results.tables import winner
    from tuning.storage import read_checkpoint

    trial, checkpoint, choice = winner(analysis, trials, within)
    state = read_checkpoint(checkpoint)
    splits = load_processed(p, with_test=True)
    check_checkpoint(state, splits.vocab_sha256)
    model = model_from_checkpoint(state)
    say_choice(choice, trial.trial_id, state)
    trained = state["config"].get("precision", "fp32")
    served = precision or on_this_cpu(trained)
    print(f"precision {served.note}", file=sys.stderr)
    res = evaluate(model, splits.test, precision=served.precision)
    # (on this checkpoint, the machine otherwise idle)
    speed = measure(model, splits.val, served.precision)
    m = test_metrics(splits.test.labels.numpy(), res["logits"].argmax(1).numpy())
    m.update(val_f1=state["metrics"]["val_f1"], val_acc=state["metrics"]["val_acc"],
             trial_id=trial.trial_id, best_epoch=state["epoch"], seed=state["config"]["seed"],
             config=state["config"], experiment=options.name, test_rows=len(splits.test),
             selection=choice, family=TrainConfig.from_flat(state["config"]).family, speed=speed,
             precision=served.precision)
    print("baselines (majority, TF-IDF + LinearSVC)...", file=sys.stderr)
    m["baselines"] = baselines(p)
    m["importance"] = hyperparameter_importance(trials, space_mod.stored_space(options.space))
    m["reseed"] = []
    if reseeds:
        seeds = [state["config"]["seed"] + i for i in range(1, reseeds + 1)]
        print(f"retraining the best config with seeds {seeds}...", file=sys.stderr)
        # on the same training rows as the search (a --subset search retrains on that subset)
        train = splits.head(options.subset, options.subset) if options.subset else splits
        # (in the precision the configuration trained in, where this CPU has it)
        m["reseed"] = reseed(from_trial_params(trial.config) | {
            "device": "cpu", "precision": on_this_cpu(trained).precision}, train, seeds)
    return m, trial, state


def write_best(p: Paths, m: dict, state: dict, history, trials) -> None:
    """artifacts/best/, replaced only once complete: the model, metrics, tables, plots, report."""
    from tuning.results.plots import (
        plot_confusion,
        plot_frontier,
        plot_learning_curve,
        plot_search_history,
    )
    from tuning.results.report import write_report

    vocab = Vocab.load(p.vocab)
    with atomic_folder(p.best) as tmp:
        # `precision`: what its test figures were measured in, what predict and MLflow serve
        torch.save({"format": CHECKPOINT_FORMAT, "model": state["model"], "config": state["config"],
                    "precision": m["precision"],
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
        write_report(tmp, m, m["baselines"], m["importance"], m["reseed"], trials, m["experiment"])


def main(argv=None) -> int:
    args = parse_args(argv)
    asked = resolve(args.precision, "cpu") if args.precision else None  # (refused before all)
    p = paths()
    from tuning.options import read_options
    from tuning.results.tables import load_experiment, trials_frame

    storage, name = find_experiment(p, args.experiment)
    analysis = load_experiment(storage, name)
    trials = trials_frame(analysis)
    # (its settings: the space for the importance table, --subset for --reseed, the tracking
    # store; lost or cut options are an error, not an evaluation on other settings)
    options = read_options(storage, name)
    if options.mlflow:  # before the test pass: it must not be run for nothing
        from tuning.tracking import check_store

        check_store(options.mlflow, name)
    m, trial, state = measure_winner(p, analysis, trials, args.within, options, args.reseed,
                                     asked)
    write_best(p, m, state, analysis.trial_dataframes[trial.trial_id], trials)
    speed = m["speed"]
    print(f"test accuracy {m['accuracy']:.4f}  macro-F1 {m['f1_macro']:.4f}  weighted-F1 "
          f"{m['f1_weighted']:.4f}  ({m['test_rows']} rows); {speed['params']:,} parameters, "
          f"{speed['latency_ms']:.3f} ms a sentence (batch 1, one thread), "
          f"{speed['sentences_per_s_b256']:,.0f} sentences/s at batch 256", file=sys.stderr)
    for row in m["baselines"]:
        print(f"  baseline {row['model']}: test accuracy {row['test_accuracy']:.4f}  macro-F1 "
              f"{row['test_f1_macro']:.4f}", file=sys.stderr)
    print(f"wrote {p.best}/ (report.md, metrics.json, model.pt, plots)", file=sys.stderr)
    if options.mlflow:  # the search was tracked: the evaluation joins its experiment
        from tuning.tracking import log_evaluation

        run_id = log_evaluation(options.mlflow, name, m, p.best, options.search_id)
        print(f"MLflow: run {run_id} (evaluate_best) in experiment {name!r}: mlflow ui "
              f"--backend-store-uri {redact(options.mlflow)}", file=sys.stderr)
    print(json.dumps({"accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
                      "f1_weighted": m["f1_weighted"], "val_f1": m["val_f1"],
                      "trial_id": m["trial_id"]}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
