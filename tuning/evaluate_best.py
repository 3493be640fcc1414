"""python -m tuning.evaluate_best: the best trial's honest numbers on the test split, and a report.

The search never reads the test split; this is the one place that does, once, for the checkpoint
chosen on validation macro-F1. Everything goes to a temporary folder that replaces
artifacts/best/ only when complete.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from dataprep.cli import ArgumentParser, non_negative_int, run_main
from dataprep.paths import Paths, paths
from dataprep.schema import LABELS, DataError, UsageError
from dataprep.vocab import Vocab
from model.data import Splits, load_processed
from model.train import (
    CHECKPOINT_FORMAT,
    check_checkpoint,
    evaluate,
    fit,
    load_checkpoint,
    make_config,
    model_from_checkpoint,
)

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


# The TF-IDF + linear SVM baseline is tuned as the LSTM is: every setting fit on train, the one
# with the best validation macro-F1 kept, then scored once on test.
TFIDF_GRID = {"ngram_range": [(1, 1), (1, 2)], "C": [0.1, 0.3, 1.0, 3.0],
              "class_weight": [None, "balanced"]}


def tuned_tfidf_svm(frames: dict[str, pd.DataFrame]):
    """The TF-IDF + LinearSVC setting of TFIDF_GRID with the best validation macro-F1, fit on
    train; returns (pipeline, setting)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import ParameterGrid
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    train, val = frames["train"], frames["val"]
    best, best_f1 = None, -1.0
    for ngram_range in TFIDF_GRID["ngram_range"]:  # vectorise once per n-gram range
        vectorizer = TfidfVectorizer(ngram_range=ngram_range, sublinear_tf=True)
        x_train = vectorizer.fit_transform(train["text"])
        x_val = vectorizer.transform(val["text"])
        svm_grid = {k: v for k, v in TFIDF_GRID.items() if k != "ngram_range"}
        for setting in ParameterGrid(svm_grid):
            svm = LinearSVC(**setting, random_state=0).fit(x_train, train["label"])
            f1 = f1_score(val["label"], svm.predict(x_val), average="macro")
            if f1 > best_f1:
                best_f1 = f1
                best = make_pipeline(vectorizer, svm), {"ngram_range": ngram_range, **setting}
    return best


def baselines(p: Paths) -> list[dict]:
    """Majority class and TF-IDF + linear SVM (tuned on validation), fit on train, scored on
    validation and test."""
    from sklearn.dummy import DummyClassifier

    frames = {s: pd.read_parquet(p.processed_split(s), columns=["text", "label"])
              for s in ("train", "val", "test")}
    majority = DummyClassifier(strategy="most_frequent").fit(frames["train"]["text"],
                                                            frames["train"]["label"])
    svm, setting = tuned_tfidf_svm(frames)
    low, high = setting["ngram_range"]
    svm_name = (f"TF-IDF ({low}-{high} grams) + LinearSVC (C={setting['C']:g}, class weight "
            f"{setting['class_weight'] or 'none'}; tuned on validation)")
    rows = []
    for name, clf in (("majority class", majority), (svm_name, svm)):
        row = {"model": name}
        for split in ("val", "test"):
            pred = clf.predict(frames[split]["text"])
            y = frames[split]["label"]
            row[f"{split}_accuracy"] = float(accuracy_score(y, pred))
            row[f"{split}_f1_macro"] = float(f1_score(y, pred, average="macro", zero_division=0))
        rows.append(row)
    return rows


def hyperparameter_importance(trials: pd.DataFrame, space: dict) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched hyperparameter for the trials' best val_f1."""
    import optuna

    from tuning.space import to_optuna

    dists = to_optuna(space)
    done = trials[trials["best_val_f1"].notna()]
    if len(done) < 3 or not dists:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, row in done.iterrows():
        params = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in dists}
        try:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                      value=float(row["best_val_f1"])))
        except ValueError:  # a value outside the (overridden) space: leave that trial out
            continue
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return {k: float(v) for k, v in optuna.importance.get_param_importances(
            study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError):  # too few distinct trials
        return {}


def reseed(config: dict, splits: Splits, seeds: list[int]) -> list[dict]:
    """Retrain the best config with other seeds (all epochs, best epoch by val) and test each."""
    rows = []
    for seed in seeds:
        best_state, best_f1 = None, -1.0
        cfg = make_config({**config, "seed": seed})
        for epoch in fit(cfg, splits):
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


# ---- plots ------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: list[list[int]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(np.array(cm), cmap="Blues")
    ax.set_xticks(range(6), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(6), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(r) for r in cm) or 1
    for i, row in enumerate(cm):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    ax.set_title("Test confusion matrix (counts)")
    _save(plt, fig, path)


def plot_learning_curve(history: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(history["epoch"], history["train_loss"], "o-", label="train loss")
    a1.plot(history["epoch"], history["val_loss"], "o-", label="val loss")
    a1.set_xlabel("epoch")
    a1.legend()
    a2.plot(history["epoch"], history["val_f1"], "o-", label="val macro-F1")
    a2.plot(history["epoch"], history["val_acc"], "o-", label="val accuracy")
    a2.set_xlabel("epoch")
    a2.legend()
    fig.suptitle("Best trial: learning curves")
    _save(plt, fig, path)


def plot_search_history(trials: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    done = trials[trials["best_val_f1"].notna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = {"completed": "tab:blue", "early_stopped": "tab:green", "asha_stopped": "tab:orange",
              "error": "tab:red", "unfinished": "tab:gray"}
    for status, group in done.groupby("status"):
        ax.scatter(group.index + 1, group["best_val_f1"], label=status,
                   color=colors.get(status, "black"), s=25)
    ax.plot(done.index + 1, done["best_val_f1"].cummax(), color="black", lw=1, label="running best")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel("best val macro-F1")
    ax.legend()
    ax.set_title("Search history")
    _save(plt, fig, path)


# ---- report -----------------------------------------------------------------------------------

def _table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out: Path, m: dict, base: list[dict], importance: dict, reseeds: list[dict],
                 trials: pd.DataFrame, experiment: str) -> None:
    counts = trials["status"].value_counts().to_dict()
    parts = [
        f"# Best model of experiment `{experiment}`",
        (f"Trial `{m['trial_id']}` (epoch {m['best_epoch']}, seed {m['seed']}), chosen on "
         f"validation macro-F1 among {len(trials)} trials "
         f"({', '.join(f'{n} {s}' for s, n in counts.items())}). "
         "The test split was read once, here."),
        "## Validation vs test",
        _table([{"split": "validation", "accuracy": m["val_acc"], "macro-F1": m["val_f1"]},
                {"split": "test", "accuracy": m["accuracy"], "macro-F1": m["f1_macro"],
                 "weighted-F1": m["f1_weighted"]}],
               ["split", "accuracy", "macro-F1", "weighted-F1"]),
        "## Against baselines (same splits, same run)",
        _table([{"model": "tuned LSTM (this)", "val_accuracy": m["val_acc"],
                 "val_f1_macro": m["val_f1"], "test_accuracy": m["accuracy"],
                 "test_f1_macro": m["f1_macro"]}] + base,
               ["model", "val_accuracy", "val_f1_macro", "test_accuracy", "test_f1_macro"]),
    ]
    if reseeds:
        acc = np.array([r["test_accuracy"] for r in reseeds if r["test_accuracy"] is not None])
        f1 = np.array([r["test_f1_macro"] for r in reseeds if r["test_f1_macro"] is not None])
        parts += ["## Other seeds (same config, full epochs)",
                  _table(reseeds, ["seed", "val_f1", "test_accuracy", "test_f1_macro"]),
                  f"Test accuracy {acc.mean():.4f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.4f}, "
                  f"macro-F1 {f1.mean():.4f} ± {f1.std(ddof=1) if len(f1) > 1 else 0:.4f} "
                  f"over {len(acc)} seeds." if len(acc) else "No reseeded run finished."]
    parts += [
        "## Per class (test)",
        _table([{"label": k, **v} for k, v in m["per_class"].items()],
               ["label", "precision", "recall", "f1-score", "support"]),
        "![confusion matrix](confusion_matrix.png)",
        "## Best configuration",
        "```json\n" + json.dumps(m["config"], indent=2, sort_keys=True) + "\n```",
        "## Hyperparameter importance (Optuna fANOVA over the trials' best val_f1)",
        _table([{"hyperparameter": k, "importance": v} for k, v in importance.items()],
               ["hyperparameter", "importance"]) if importance else
        "Not enough finished trials to estimate importance.",
        "## Curves",
        "![learning curve](learning_curve.png)\n\n![search history](search_history.png)",
    ]
    (out / "report.md").write_text("\n\n".join(parts) + "\n")


# ---- main -------------------------------------------------------------------------------------

def find_experiment(p: Paths, flag: str | None) -> Path:
    from tuning.search import latest_experiment

    if flag:
        exp = Path(flag)
        if not exp.is_dir():
            raise UsageError(f"--experiment {flag}: no such folder")
        return exp
    exp = latest_experiment(p.ray_results)
    if exp is None:
        raise DataError(f"no experiment in {p.ray_results}: run `python -m tuning.search` first "
                        f"or pass --experiment")
    return exp


def main(argv=None) -> int:
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", metavar="DIR", help="ray_results/NAME (default: the latest)")
    ap.add_argument("--reseed", type=non_negative_int, default=0, metavar="K",
                    help="also retrain the best config with K other seeds: test mean ± std")
    args = ap.parse_args(argv)
    p = paths()
    from tuning import space as space_mod
    from tuning.results import best_trial, load_experiment, trials_frame
    from tuning.trainable import CHECKPOINT_FILE, model_config

    exp = find_experiment(p, args.experiment)
    analysis = load_experiment(exp)
    trials = trials_frame(analysis)
    if not trials["best_val_f1"].notna().any():
        raise DataError(f"{exp}: no trial finished an epoch")
    trial, checkpoint = best_trial(analysis)
    with checkpoint.as_directory() as folder:
        state = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    splits = load_processed(p, with_test=True)
    check_checkpoint(state, splits.vocab_sha256)
    model = model_from_checkpoint(state)
    print(f"best trial {trial.trial_id}: val_f1 {state['metrics']['val_f1']:.4f} at epoch "
          f"{state['epoch']}; evaluating once on the test split", file=sys.stderr)
    res = evaluate(model, splits.test)
    m = test_metrics(splits.test.labels.numpy(), res["logits"].argmax(1).numpy())
    m.update(val_f1=state["metrics"]["val_f1"], val_acc=state["metrics"]["val_acc"],
             trial_id=trial.trial_id, best_epoch=state["epoch"], seed=state["config"]["seed"],
             config=state["config"], experiment=exp.name, test_rows=len(splits.test))

    print("baselines (majority, TF-IDF + LinearSVC)...", file=sys.stderr)
    base = baselines(p)
    opts_file = p.search_reports / exp.name / "search_options.json"
    opts = json.loads(opts_file.read_text()) if opts_file.is_file() else {}
    importance = hyperparameter_importance(trials, space_mod.load_space(opts.get("space")))
    reseeds = []
    if args.reseed:
        seeds = [state["config"]["seed"] + i for i in range(1, args.reseed + 1)]
        print(f"retraining the best config with seeds {seeds}...", file=sys.stderr)
        # on the same training rows as the search (a --subset search retrains on that subset)
        train = splits.head(opts["subset"], opts["subset"]) if opts.get("subset") else splits
        reseeds = reseed(model_config(trial.config) | {"device": "cpu"}, train, seeds)
    m["baselines"], m["importance"], m["reseed"] = base, importance, reseeds

    history = analysis.trial_dataframes[trial.trial_id]
    vocab = Vocab.load(p.vocab)
    p.artifacts.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".best.", dir=p.artifacts))
    try:
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
        write_report(tmp, m, base, importance, reseeds, trials, exp.name)
        tmp.chmod(0o755)
        # swap the complete folder in; the old one is removed only after the new one is in place
        old = p.artifacts / ".best.old"
        shutil.rmtree(old, ignore_errors=True)
        if p.best.exists():
            p.best.rename(old)
        tmp.rename(p.best)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"test accuracy {m['accuracy']:.4f}  macro-F1 {m['f1_macro']:.4f}  weighted-F1 "
          f"{m['f1_weighted']:.4f}  ({len(splits.test)} rows)", file=sys.stderr)
    for row in base:
        print(f"  baseline {row['model']}: test accuracy {row['test_accuracy']:.4f}  macro-F1 "
              f"{row['test_f1_macro']:.4f}", file=sys.stderr)
    print(f"wrote {p.best}/ (report.md, metrics.json, model.pt, plots)", file=sys.stderr)
    print(json.dumps({"accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
                      "f1_weighted": m["f1_weighted"], "val_f1": m["val_f1"],
                      "trial_id": m["trial_id"]}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
