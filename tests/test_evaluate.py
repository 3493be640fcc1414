"""evaluate_best and predict on a tiny real experiment; and their refusals."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dataprep.schema import LABELS
from dataprep.vocab import Vocab
from model.checkpoint import model_from_checkpoint
from model.data import EncodedSplit
from tests.conftest import run_cli
from tests.helpers import MEASURED, config_of, trials_csv
from tuning import space as space_mod

pytestmark = pytest.mark.slow
OUTPUTS = ["model.pt", "metrics.json", "classification_report.csv", "confusion_matrix.csv",
           "confusion_matrix.png", "learning_curve.png", "search_history.png", "report.md"]


@pytest.fixture(scope="module")
def evaluated(tiny_experiment):
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/tiny", "--reseed", "1",
                   root=tiny_experiment)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tiny_experiment, json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_output_is_written_and_consistent(evaluated):
    root, summary = evaluated
    best = root / "artifacts" / "best"
    for name in OUTPUTS:
        assert (best / name).is_file() and (best / name).stat().st_size > 0, name
    m = json.loads((best / "metrics.json").read_text())
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (6, 6) and cm.sum() == 2000  # every test row, once
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert [m["per_class"][name]["support"] for name in LABELS] == cm.sum(1).tolist()
    assert cm.sum(1).tolist() == [581, 695, 159, 275, 224, 66]
    assert summary["accuracy"] == m["accuracy"] and summary["trial_id"] == m["trial_id"]
    # chosen on validation, as the search chose it: the best mean's best seed
    chosen = json.loads((root / "artifacts/search/tiny/best_config.json").read_text())
    assert m["trial_id"] == chosen["trial_id"] and m["selection"] == chosen["selection"]
    assert m["val_f1"] == pytest.approx(chosen["val_f1"]) and m["seed"] == chosen["seed"]
    assert len(m["reseed"]) == 1 and m["reseed"][0]["seed"] == m["seed"] + 1
    csv = pd.read_csv(best / "confusion_matrix.csv", index_col=0)
    assert csv.values.tolist() == m["confusion_matrix"]


def test_pngs_are_real_images(evaluated):
    import matplotlib.image

    root, _ = evaluated
    for name in ("confusion_matrix.png", "learning_curve.png", "search_history.png"):
        raw = (root / "artifacts/best" / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(root / "artifacts/best" / name)
        assert image.shape[0] > 200 and image.shape[1] > 200


def test_report_has_baselines_and_importance(evaluated):
    root, _ = evaluated
    report = (root / "artifacts/best/report.md").read_text()
    m = json.loads((root / "artifacts/best/metrics.json").read_text())
    assert "| majority class |" in report
    # the TF-IDF baseline is tuned on validation, and says which setting won
    assert "| TF-IDF (1-1 grams) + LinearSVC (C=1, class weight balanced; tuned on validation) |" \
        in report
    majority = next(b for b in m["baselines"] if b["model"] == "majority class")
    assert majority["test_accuracy"] == pytest.approx(695 / 2000)  # "joy" is the majority
    tfidf = next(b for b in m["baselines"] if b["model"].startswith("TF-IDF"))
    assert tfidf["test_accuracy"] > 0.89  # the untuned 1-2 gram setting had 0.880
    assert "Hyperparameter importance" in report and "Other seeds" in report
    # how the winner was chosen, with its seeds' spread on validation
    assert "best **mean** validation macro-F1 over its seeds" in report
    assert f"{m['selection']['mean_val_f1']:.4f} ± {m['selection']['std_val_f1']:.4f}" in report
    assert "## The winner's seeds (validation)" in report and "## The candidates" in report
    # fANOVA over the search's searched keys; with 3 or more distinct measured search trials
    # (the tiny search has 4) it has something to rank: not {}
    trials = trials_csv(root, "tiny")
    measured = trials[(trials["phase"] == "search") & trials["status"].isin(MEASURED)
                      & trials["best_val_f1"].notna()]
    assert len({config_of(row) for _, row in measured.iterrows()}) >= 3
    assert m["importance"]
    searched = {k for k, v in space_mod.SPACE.items() if isinstance(v, dict)}
    assert set(m["importance"]) <= searched
    assert str(root) not in report  # no absolute paths in what users share


def test_predict_label_is_the_argmax_and_matches_the_model(evaluated):
    root, _ = evaluated
    texts = ["i am thrilled", "i feel so lonely and sad", "qwertyuiop zxcvb",
             " ".join(["i feel wonderful"] * 2000)]
    proc = run_cli("tuning.predict", "--json", *texts, root=root)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["text"] for r in rows] == texts
    state = torch.load(root / "artifacts/best/model.pt", weights_only=True)
    model = model_from_checkpoint(state)
    # encoded by hand, not by the product's tokenizer: these texts are lowercase words, so a
    # word's id is its place in the checkpoint's vocabulary, 1 (<unk>) for an unknown word
    ids_of = {word: i for i, word in enumerate(state["vocab"])}
    by_hand = [[ids_of.get(word, 1) for word in t.split()] for t in texts]
    assert by_hand[2] == [1, 1]  # (nonsense is unknown)
    assert by_hand == [Vocab(state["vocab"]).encode(t) for t in texts]
    batch = EncodedSplit.from_ids(by_hand, [0] * len(texts))
    with torch.no_grad():
        direct = torch.softmax(model(batch.tokens, batch.lengths), 1)
    for row, p in zip(rows, direct):
        probs = [row["probabilities"][name] for name in LABELS]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert row["label"] == LABELS[int(np.argmax(probs))] == LABELS[int(p.argmax())]
        assert probs == pytest.approx(p.tolist(), abs=1e-5)


def test_predict_reads_stdin_and_reports_empty_lines(evaluated):
    root, _ = evaluated
    proc = run_cli("tuning.predict", root=root, input="i am furious\n\ni am scared\n")
    assert proc.returncode == 0
    assert len(proc.stdout.strip().splitlines()) == 2
    assert "text 2 is empty" in proc.stderr
    proc = run_cli("tuning.predict", "", "   ", root=root)
    assert proc.returncode == 1 and "no non-empty text" in proc.stderr


# ---- refusals ---------------------------------------------------------------------------------

def _copy(root, dest):
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns("best"))
    return dest


def _assert_refused(proc, needle, best: Path, best_before: dict) -> None:
    """Refused with one line naming `needle`, and artifacts/best/ (`best`) as it was."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr.strip().splitlines()[-1]
    assert _snapshot(best) == best_before


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*"))} if folder.exists() else {}


def test_no_experiment_is_a_clear_error(root):
    proc = run_cli("tuning.evaluate_best", root=root)
    assert proc.returncode == 1 and "run `python -m tuning.search` first" in proc.stderr
    (root / "ray_results" / "empty").mkdir(parents=True)
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/empty", root=root)
    assert proc.returncode == 1 and "not a Ray Tune experiment" in proc.stderr
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/missing", root=root)
    assert proc.returncode == 2 and "--experiment" in proc.stderr
    # a secret in the URI: refused before anything reads it, and not repeated
    proc = run_cli("tuning.evaluate_best", "--experiment", "s3://AKIAX:s3cr/et@bucket/exps/x",
                   root=root)
    assert proc.returncode == 2 and "AWS_SECRET_ACCESS_KEY" in proc.stderr
    assert "s3cr" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_corrupt_or_missing_checkpoint_and_vocab_mismatch_are_refused(evaluated, tmp_path):
    root, _ = evaluated
    work = _copy(root, tmp_path / "copy")
    m = json.loads((root / "artifacts/best/metrics.json").read_text())
    trial_dir = work / "ray_results/tiny" / f"trial_{m['trial_id']}"
    best_ckpt = sorted(trial_dir.glob("checkpoint_*"))
    # a prior good artifacts/best must survive every refusal untouched
    shutil.copytree(root / "artifacts/best", work / "artifacts/best")
    before = _snapshot(work / "artifacts/best")

    vocab = work / "artifacts/vocab.json"
    original_vocab = vocab.read_bytes()
    vocab.write_bytes(original_vocab.replace(b'"size"', b'"size" ', 1))
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/tiny", root=work)
    _assert_refused(proc, "another vocab", work / "artifacts/best", before)
    vocab.write_bytes(original_vocab)

    for ckpt in best_ckpt:
        data = (ckpt / "state.pt").read_bytes()
        (ckpt / "state.pt").write_bytes(data[: len(data) // 3])
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/tiny", root=work)
    _assert_refused(proc, "not a loadable checkpoint", work / "artifacts/best", before)

    for ckpt in best_ckpt:
        shutil.rmtree(ckpt)
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/tiny", root=work)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert _snapshot(work / "artifacts/best") == before
    assert not list((work / "artifacts").glob(".best.*"))


def test_predict_refuses_a_tampered_model(evaluated, tmp_path):
    root, _ = evaluated
    work = tmp_path / "p"
    shutil.copytree(root / "artifacts", work / "artifacts")
    model = work / "artifacts/best/model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    proc = run_cli("tuning.predict", "hello", root=work)
    assert proc.returncode == 1 and "not a loadable checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    model.unlink()
    proc = run_cli("tuning.predict", "hello", root=work)
    assert proc.returncode == 1 and "evaluate_best" in proc.stderr


def test_reseed_tests_the_best_epochs_weights_not_the_last_ones(prepared_root):
    import io

    from model.data import load_processed
    from model.loop import evaluate, train_epochs
    from plumbing.paths import paths
    from tests.test_model import PEAKS_EARLY
    from tuning.results.reseed import reseed

    splits = load_processed(paths(prepared_root), with_test=True).head(1500, 400)
    # the reference: the best epoch's weights written out as it happens (a true snapshot)
    best_f1, best_bytes, last = -1.0, None, None
    for epoch in train_epochs(PEAKS_EARLY, splits):
        last = epoch.epoch
        if epoch.improved:
            best_f1, best_bytes, best_epoch = epoch.metrics["val_f1"], io.BytesIO(), epoch.epoch
            torch.save(epoch.training_state(), best_bytes)
    assert best_epoch != last, "precondition: the best epoch is not the last"
    best_bytes.seek(0)
    expected = evaluate(model_from_checkpoint(torch.load(best_bytes, weights_only=True)), splits.test)
    [row] = reseed(PEAKS_EARLY, splits, [PEAKS_EARLY["seed"]])
    assert row["val_f1"] == best_f1
    assert (row["test_accuracy"], row["test_f1_macro"]) == (expected["acc"], expected["f1"])
