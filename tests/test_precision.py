"""Precision (model/precision.py): each one trains to the same numbers twice, resumes exactly,
and changes the numbers (autocast took effect); a checkpoint of one evaluates in another;
`--precision` is refused in one line where the device cannot do it; a search carries its
precision into every trial, trials.csv, its options, its checkpoints and the evaluation.

On CPUs without AVX-512 torch has no bf16 LSTM (oneDNN cannot build the primitive), so bf16
is exercised with a GRU and the bag family on every machine, and with an LSTM where it runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import precision as precision_mod
from model.checkpoint import load_checkpoint, model_from_checkpoint
from model.config import TrainConfig
from model.data import load_processed
from model.loop import evaluate, train_epochs
from plumbing.errors import UsageError
from plumbing.paths import paths
from tests.conftest import SEARCH_SMALL, run_cli, search_root
from tests.helpers import stored_options, trials_csv, without_timing

NETWORKS = {"bag": {"family": "bag"}, "gru": {"rnn": "gru", "hidden_size": 32},
            "lstm": {"rnn": "lstm", "hidden_size": 32}}


def cpu_flags_by_hand() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split()) & {"amx_bf16", "avx512_bf16"}
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")


@pytest.fixture(scope="module")
def small_splits(prepared_root):
    return load_processed(paths(prepared_root)).head(256, 128)


def config(network: str, precision: str, **extra) -> TrainConfig:
    return TrainConfig.from_flat({**NETWORKS[network], "embedding_dim": 32, "batch_size": 32,
                                  "epochs": 2, "seed": 5, "precision": precision, **extra})


def runs(network: str, precision: str) -> bool:
    """Whether torch runs this network in this precision on this CPU (oneDNN builds no bf16
    LSTM without AVX-512, and no fp16 one on some AVX-512 CPUs)."""
    return network != "lstm" or precision_mod.lstm_runs(precision)


@pytest.mark.parametrize("network", list(NETWORKS))
def test_each_precision_repeats_itself_and_resumes_exactly(network, small_splits):
    numbers = {}
    for precision in ("fp32", "bf16", "fp16"):
        if not runs(network, precision):
            continue
        cfg = config(network, precision)
        first = [without_timing(e.metrics) for e in train_epochs(cfg, small_splits)]
        assert [without_timing(e.metrics) for e in train_epochs(cfg, small_splits)] == first
        # stopped after epoch 1 and resumed from its state: the same epoch 2
        epoch = next(train_epochs(cfg, small_splits))
        state = epoch.training_state()
        assert (state["grad_scaler"] is not None) == (precision == "fp16")
        resumed = [without_timing(e.metrics) for e in train_epochs(cfg, small_splits,
                                                                    resume=state)]
        assert resumed == first[1:], precision
        numbers[precision] = first
    if len(numbers) == 1:
        pytest.skip(f"torch runs no {network} in a lower precision on this CPU")
    # autocast took effect: the lower precisions' numbers are not fp32's
    for precision in set(numbers) - {"fp32"}:
        assert numbers[precision] != numbers["fp32"], precision


def test_a_checkpoint_of_one_precision_evaluates_in_another(small_splits):
    cfg = config("gru", "bf16")
    epochs = list(train_epochs(cfg, small_splits))
    *_, last = epochs
    state = last.training_state()
    # float32 master weights and optimizer state, whatever the precision computed in
    tensors = [*state["model"].values(), *[v for s in state["optimizer"]["state"].values()
                                           for v in s.values() if v.dim() > 0]]
    assert {t.dtype for t in tensors} == {torch.float32}
    model = model_from_checkpoint(state)
    again = evaluate(model, small_splits.val, precision="bf16")
    assert (again["f1"], again["acc"], again["loss"]) == (
        last.metrics["val_f1"], last.metrics["val_acc"], last.metrics["val_loss"])
    in_fp32 = evaluate(model, small_splits.val, precision="fp32")
    assert in_fp32["logits"].dtype == torch.float32 and not torch.equal(in_fp32["logits"],
                                                                         again["logits"])
    # and an fp32 checkpoint runs in bf16
    fp32 = next(train_epochs(config("gru", "fp32"), small_splits)).training_state()
    assert evaluate(model_from_checkpoint(fp32), small_splits.val, precision="bf16")["f1"] >= 0


@pytest.mark.parametrize("flags,ratio,asked,expected", [
    ([], None, "auto", "fp32"), ([], None, "bf16-emulated", "bf16"), ([], None, "fp32", "fp32"),
    (["amx_bf16"], 0.55, "auto", "bf16"), (["avx512_bf16"], 0.95, "auto", "fp32"),
    (["amx_bf16"], None, "bf16", "bf16")])
def test_auto_picks_bf16_only_where_native_and_faster(monkeypatch, flags, ratio, asked, expected):
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda: flags)

    def timed(device, threads):
        assert ratio is not None, "timed where the CPU has no native bf16"
        return ratio
    monkeypatch.setattr(precision_mod, "step_time_ratio", timed)
    resolved = precision_mod.resolve(asked, "cpu")
    assert resolved.precision == expected
    if asked == "auto":
        assert resolved.note.startswith(f"auto: {expected}")


@pytest.mark.parametrize("flags,asked,needle", [
    ([], "bf16", "--precision bf16: this CPU has no native bf16"),
    (["amx_bf16"], "fp16", "--precision fp16: needs a CUDA device")])
def test_what_the_cpu_cannot_do_is_refused_in_one_line(monkeypatch, flags, asked, needle):
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda: flags)
    with pytest.raises(UsageError) as refused:
        precision_mod.resolve(asked, "cpu")
    assert str(refused.value).startswith(needle) and "\n" not in str(refused.value)


def test_native_bf16_is_read_off_the_cpus_flags():
    assert precision_mod.native_bf16("cpu")[0] == bool(cpu_flags_by_hand())


@pytest.mark.parametrize("flags,trained,expected", [
    ([], "bf16", "fp32"), (["amx_bf16"], "bf16", "bf16"), (["amx_bf16"], "fp16", "fp32"),
    ([], "fp32", "fp32")])
def test_a_model_runs_on_a_cpu_in_what_it_trained_in_where_native(monkeypatch, flags, trained,
                                                                   expected):
    monkeypatch.setattr(precision_mod, "cpu_bf16_flags", lambda: flags)
    assert precision_mod.on_this_cpu(trained).precision == expected


def test_the_commands_refuse_a_precision_the_cpu_cannot_run(root):
    for module, args in (("tuning.search", ["--samples", "1"]), ("model.train", []),
                         ("tuning.evaluate_best", [])):
        proc = run_cli(module, *args, "--precision", "fp16", root=root)
        assert proc.returncode == 2, (module, proc.stderr)
        assert "--precision fp16: needs a CUDA device" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    if not cpu_flags_by_hand():  # a bf16 config (a bf16 search's winner) on a CPU without it
        (root / "bf16.yaml").write_text("precision: bf16\n")
        proc = run_cli("model.train", "--config", "bf16.yaml", root=root)
        assert proc.returncode == 2 and "the config's precision is bf16: --precision bf16: " \
            "this CPU has no native bf16" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_bf16_search_carries_its_precision_to_trials_options_and_evaluation(prepared_root,
                                                                             tmp_path):
    """bf16 (emulated where the CPU has none) with a GRU: trials.csv and the options say bf16,
    each checkpoint's config too, the latency is measured in what the model runs in here; the
    evaluation's test figures are those of the checkpoint evaluated in bf16 by hand; a resume in
    another precision is refused."""
    root = search_root(prepared_root, tmp_path, with_test=True)
    (root / "space.yaml").write_text("rnn: gru\nembedding_dim: 32\nhidden_size: 32\n")
    proc = run_cli("tuning.search", "--samples", "2", "--max-epochs", "1", "--name", "half",
                   *SEARCH_SMALL, "--subset", "300", "--space", "space.yaml",
                   "--precision", "bf16-emulated", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "precision bf16" in proc.stderr
    table = trials_csv(root, "half")
    served = "bf16" if cpu_flags_by_hand() else "fp32"
    assert (table["precision"] == "bf16").all() and (table["latency_precision"] == served).all()
    exp = root / "ray_results" / "half"
    options = stored_options((exp / "harness/search_options.json").read_text())
    assert options["precision"] == "bf16" and options["precision_note"].startswith("bf16")
    for checkpoint in exp.glob("trial_*/checkpoint_*/state.pt"):
        assert load_checkpoint(checkpoint)["config"]["precision"] == "bf16"
    refused = run_cli("tuning.search", "--name", "half", "--resume", "--precision", "fp32",
                      root=root)
    assert refused.returncode == 2 and "--precision fp32 differs" in refused.stderr

    proc = run_cli("tuning.evaluate_best", "--precision", "bf16-emulated", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((root / "artifacts/best/metrics.json").read_text())
    written = load_checkpoint(root / "artifacts/best/model.pt")
    # evaluated in bf16, as the model trained: what predict and MLflow serve it in
    assert metrics["precision"] == "bf16" and written["precision"] == "bf16"
    assert written["config"]["precision"] == metrics["config"]["precision"] == "bf16"
    best = json.loads((root / "artifacts/search/half/best_config.json").read_text())
    state = load_checkpoint(next((exp / f"trial_{best['trial_id']}").glob("checkpoint_*"))
                            / "state.pt")
    splits = load_processed(paths(root), with_test=True)
    by_hand = evaluate(model_from_checkpoint(state), splits.test, precision="bf16")
    assert metrics["accuracy"] == pytest.approx(by_hand["acc"], abs=1e-12)
    assert metrics["f1_macro"] == pytest.approx(by_hand["f1"], abs=1e-12)

    # by default in what the model trained in where this CPU has it natively, else fp32
    proc = run_cli("tuning.evaluate_best", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((root / "artifacts/best/metrics.json").read_text())
    written = load_checkpoint(root / "artifacts/best/model.pt")
    assert metrics["precision"] == written["precision"] == served
    assert written["config"]["precision"] == "bf16"  # (what it trained in stays said)
    from tuning.predict import Predictor

    assert Predictor(root / "artifacts/best/model.pt").precision == served


def test_an_fp32_config_keeps_the_run_folder_it_had_before_precisions():
    import hashlib

    flat = TrainConfig.from_flat({"seed": 3}).to_flat()
    before = {k: v for k, v in flat.items() if k != "precision"}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:10]
    assert TrainConfig.from_flat({"seed": 3}).id() == digest
    assert TrainConfig.from_flat({"seed": 3, "precision": "bf16"}).id() != digest
