"""Baselines scored in the same run as the tuned LSTM, on the same splits: the majority class,
and TF-IDF + a linear SVM tuned on validation as the LSTM is."""
from __future__ import annotations

import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from plumbing.paths import Paths

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
