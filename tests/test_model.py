"""model: the network, the seeded loop, checkpoints and the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from model.checkpoint import (
    check_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from model.config import TrainConfig
from model.data import EncodedSplit, Splits, bucketed_batches, count_batches, load_processed
from model.loop import class_weights, evaluate, train_epochs
from model.network import RNNClassifier, RNNConfig
from plumbing.paths import paths
from tests.conftest import run_cli
from tests.helpers import without_timing

SMALL = {"embedding_dim": 32, "hidden_size": 32, "batch_size": 32, "eval_batch_size": 256}


@pytest.fixture(scope="module")
def real_small(prepared_root) -> Splits:
    """The first 1,500 train and 400 validation rows of the real data."""
    return load_processed(paths(prepared_root)).head(1500, 400)


# ---- network ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_logit_shapes_and_padding_never_changes_logits(rnn, pooling, bidirectional):
    torch.manual_seed(0)
    net = RNNClassifier(50, RNNConfig(embedding_dim=8, hidden_size=12, num_layers=2, rnn=rnn,
                                            pooling=pooling, bidirectional=bidirectional)).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [3, 0, 0, 0, 0]])
    lengths = torch.tensor([3, 5, 1])
    logits = net(tokens, lengths)
    assert logits.shape == (3, 6)
    # the same sentences with extra padding columns, and each sentence alone: identical logits
    padded = torch.cat([tokens, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(net(padded, lengths), logits, rtol=0, atol=1e-6)
    for i in range(3):
        alone = net(tokens[i:i + 1, : lengths[i]], lengths[i:i + 1])
        torch.testing.assert_close(alone, logits[i:i + 1], rtol=0, atol=1e-6)


def test_a_tiny_batch_is_learned_to_100_percent():
    torch.manual_seed(0)
    split = EncodedSplit.from_ids([[2, 3], [4, 5, 6], [7], [8, 9, 2, 3], [5, 5], [9, 8, 7]],
                                  [0, 1, 2, 3, 4, 5])
    net = RNNClassifier(12, RNNConfig(embedding_dim=16, hidden_size=16, dropout=0.0,
                                            embedding_dropout=0.0))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(net(split.tokens, split.lengths), split.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    assert (net(split.tokens, split.lengths).argmax(1) == split.labels).all()


def test_bucketed_batches_cover_every_row_once_with_similar_lengths():
    lengths = torch.randint(1, 40, (16000,))
    gen = torch.Generator().manual_seed(3)
    batches = bucketed_batches(lengths, 64, gen)
    rows = torch.cat(batches).sort().values
    assert torch.equal(rows, torch.arange(16000))
    # one length per batch: no padding at all, so the LSTM never needs packing in training
    assert all(int(lengths[b].min()) == int(lengths[b].max()) for b in batches)
    assert max(len(b) for b in batches) == 64
    assert len(batches) == count_batches(lengths, 64)
    again = bucketed_batches(lengths, 64, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


# ---- the loop ---------------------------------------------------------------------------------

def test_same_config_and_seed_give_identical_metrics(real_small):
    cfg = {**SMALL, "epochs": 3, "seed": 7}
    first = [without_timing(e.metrics) for e in train_epochs(cfg, real_small)]
    second = [without_timing(e.metrics) for e in train_epochs(cfg, real_small)]
    assert first == second
    assert len(first) == 3
    other_seed = [without_timing(e.metrics) for e in train_epochs({**cfg, "seed": 8}, real_small)]
    assert other_seed != first


def test_training_learns_on_real_data(prepared_root):
    splits = load_processed(paths(prepared_root)).head(4000, 400)
    epochs = list(train_epochs({**SMALL, "epochs": 5, "lr": 1e-2}, splits))
    assert epochs[-1].metrics["train_loss"] < epochs[0].metrics["train_loss"] / 2
    assert epochs[-1].metrics["val_acc"] > 0.7  # the majority class gets 0.35


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(real_small, tmp_path):
    cfg = {**SMALL, "epochs": 4, "seed": 3, "dropout": 0.5, "warmup_epochs": 0.5}
    full = [without_timing(e.metrics) for e in train_epochs(cfg, real_small)]
    for epoch in train_epochs(cfg, real_small):
        if epoch.epoch == 2:
            save_checkpoint(epoch.training_state(), tmp_path / "ckpt.pt")
            break
    resumed = [without_timing(e.metrics)
               for e in train_epochs(cfg, real_small, resume=load_checkpoint(tmp_path / "ckpt.pt"))]
    assert [m["epoch"] for m in resumed] == [3, 4]
    assert resumed == full[2:]


def test_checkpoint_round_trip_with_weights_only(real_small, tmp_path):
    epoch = next(iter(train_epochs({**SMALL, "epochs": 2}, real_small)))
    state = epoch.training_state()
    save_checkpoint(state, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert loaded["epoch"] == 1 and loaded["config"] == TrainConfig.from_flat({**SMALL, "epochs": 2}).to_flat()
    assert loaded["vocab_sha256"] == real_small.vocab_sha256
    model = model_from_checkpoint(loaded)
    original = model_from_checkpoint(state)
    x = real_small.val.head(50)
    torch.testing.assert_close(model(x.tokens, x.lengths), original(x.tokens, x.lengths))
    with pytest.raises(Exception, match="another vocab"):
        check_checkpoint(loaded, "0" * 64)


# lr 1e-2, seed 0 on the 1,500/400 subset: val macro-F1 peaks in epoch 3 of 4, then falls
PEAKS_EARLY = {**SMALL, "epochs": 4, "seed": 0, "lr": 1e-2, "patience": 0}


def test_a_kept_training_state_holds_that_epochs_weights_not_the_live_ones(real_small):
    kept, val_f1 = {}, {}
    for epoch in train_epochs(PEAKS_EARLY, real_small):
        kept[epoch.epoch], val_f1[epoch.epoch] = epoch.training_state(), epoch.metrics["val_f1"]
    assert max(val_f1, key=val_f1.get) != 4, "precondition: the best epoch is not the last"
    for n, state in kept.items():
        # the fused optimizer updates the live weights in place: only a copy keeps epoch n's
        again = evaluate(model_from_checkpoint(state), real_small.val, SMALL["eval_batch_size"])
        assert again["f1"] == val_f1[n], n


# lr 0.2, seed 0 on the 1,500/400 subset, patience 1: val macro-F1 falls in epoch 4 (0.158 ->
# 0.128), so its own patience stops the run there, at epoch 4 of 6
STOPS_EARLY = {**SMALL, "epochs": 6, "seed": 0, "lr": 0.2, "patience": 1}


def test_a_run_resumed_from_the_epoch_it_ended_at_trains_no_further(real_small, tmp_path):
    """A trial restored from its last checkpoint (a retry, or a resume after kill -9 that saw
    the epoch but not the trial's end) resumes from the epoch at which its patience ran out, or
    from its last epoch: the loop has nothing left to train. From the epoch before, it trains
    the stopping epoch again, to the same numbers, and stops there."""
    run, states = [], {}
    for epoch in train_epochs(STOPS_EARLY, real_small):
        run.append(epoch)
        states[epoch.epoch] = epoch.training_state()
    stopped = run[-1]
    # (the epoch it stops at differs between CPUs' kernels: 4 on AVX2, 3 on an AVX-512 EPYC)
    assert stopped.status == "early_stopped" and 2 <= stopped.epoch < STOPS_EARLY["epochs"], \
        ("precondition: stops early, after an epoch to resume from", stopped.epoch)
    for n in (stopped.epoch, stopped.epoch - 1):
        save_checkpoint(states[n], tmp_path / f"epoch{n}.pt")
    resumed = list(train_epochs(STOPS_EARLY, real_small, resume=load_checkpoint(
        tmp_path / f"epoch{stopped.epoch}.pt")))
    assert [e.epoch for e in resumed] == []
    before = list(train_epochs(STOPS_EARLY, real_small, resume=load_checkpoint(
        tmp_path / f"epoch{stopped.epoch - 1}.pt")))
    assert [(e.epoch, e.status) for e in before] == [(stopped.epoch, "early_stopped")]
    assert without_timing(before[0].metrics) == without_timing(stopped.metrics)
    # a run that completed its epochs: resumed from its last one, nothing either
    done = {**STOPS_EARLY, "epochs": 2, "patience": 0}
    *_, last = train_epochs(done, real_small)
    assert (last.epoch, last.status) == (2, "completed")
    assert list(train_epochs(done, real_small, resume=last.training_state())) == []


def test_a_training_state_asked_for_after_the_loop_went_on_is_refused(real_small):
    loop = train_epochs({**SMALL, "epochs": 2}, real_small)
    first = next(loop)
    first.training_state()  # while current: fine
    second = next(loop)
    with pytest.raises(RuntimeError, match="after the loop went on"):
        first.training_state()
    assert second.training_state()["epoch"] == 2  # the last epoch's stays valid after the loop


def test_truncated_or_tampered_checkpoint_is_refused(real_small, tmp_path):
    state = next(iter(train_epochs({**SMALL, "epochs": 1}, real_small))).training_state()
    save_checkpoint(state, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": 1, "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="not a loadable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_early_stopping_after_patience_epochs_without_improvement(real_small):
    # a learning rate of ~0 leaves val macro-F1 unchanged: no epoch after the first improves
    epochs = list(train_epochs({**SMALL, "epochs": 10, "lr": 1e-12, "patience": 2}, real_small))
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert epochs[-1].status == "early_stopped" and epochs[-1].stop
    assert [e.improved for e in epochs] == [True, False, False]


def test_balanced_class_weights_give_every_class_the_same_total_weight():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 6 + [3] * 2 + [4] + [5])
    counts = torch.bincount(labels, minlength=6).float()
    assert class_weights(labels, 0.0) is None
    balanced = class_weights(labels, 1.0)
    assert torch.allclose(balanced * counts, torch.full((6,), len(labels) / 6))
    half = class_weights(labels, 0.5)
    assert half[5] > half[0] and (half * counts).sum().item() == pytest.approx(len(labels))


def test_class_weighting_makes_the_model_predict_rare_classes_more(real_small):
    def rare_predictions(power):
        *_, last = train_epochs({**SMALL, "epochs": 2, "class_weight_power": power}, real_small)
        model = model_from_checkpoint(last.training_state())
        pred = evaluate(model, real_small.val)["logits"].argmax(1)
        return int(((pred == 2) | (pred == 5)).sum())  # love, surprise

    assert rare_predictions(1.0) > rare_predictions(0.0)


def test_lr_follows_warmup_then_cosine_over_the_max_epochs(real_small):
    cfg = {**SMALL, "epochs": 4, "lr": 1e-3, "warmup_epochs": 1.0}
    lrs = [e.metrics["lr"] for e in train_epochs(cfg, real_small)]  # the lr at each epoch's start
    assert lrs[0] == pytest.approx(1e-6)          # warm-up starts at 1e-3 of the peak
    steps = count_batches(real_small.train.lengths, 32)
    cosine = [1e-3 * (1 + math.cos(math.pi * (e * steps - steps) / (3 * steps))) / 2
              for e in (1, 2, 3)]
    assert lrs[1:] == pytest.approx(cosine, rel=1e-6)


def test_non_finite_loss_stops_cleanly_with_a_status(real_small, monkeypatch):
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward",
                        lambda self, x, y: (x.sum() * float("nan")))
    epochs = list(train_epochs({**SMALL, "epochs": 3}, real_small))
    assert len(epochs) == 1 and epochs[0].status == "diverged" and epochs[0].stop


# ---- CLI --------------------------------------------------------------------------------------

def test_cli_trains_reproducibly_and_prints_json_last(prepared_root, tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"embedding_dim": 16, "hidden_size": 16, "batch_size": 256}))
    outs = [run_cli("model.train", "--config", str(cfg), "--epochs", "1", "--seed", "1",
                    root=prepared_root) for _ in range(2)]
    for proc in outs:
        assert proc.returncode == 0, proc.stderr
    results = [json.loads(p.stdout.strip().splitlines()[-1]) for p in outs]
    assert results[0] == results[1]
    assert {"best_val_f1", "best_val_acc", "best_epoch", "epochs_run", "checkpoint"} <= set(results[0])
    ckpt = load_checkpoint(prepared_root / results[0]["checkpoint"])
    assert ckpt["config"]["seed"] == 1 and ckpt["config"]["hidden_size"] == 16
    log = (prepared_root / results[0]["checkpoint"]).parent / "log.csv"
    assert log.read_text().splitlines()[0].startswith("epoch,train_loss,val_loss,val_acc,val_f1")


def test_cli_accepts_a_search_winners_file_and_a_trials_params(prepared_root, tmp_path):
    from model.config import trial_seed

    params = {"embedding_dim": 16, "hidden_size": 16, "batch_size": 256, "epochs": 1,
              "search_seed": 7, "threads": 1, "device": "cpu"}
    seed = trial_seed(params)
    best_config = {"trial_id": "x", "val_f1": 0.5, "config": {**params, "seed": 5}}
    del best_config["config"]["search_seed"]
    for doc, expected_seed in ((params, seed), (best_config, 5)):
        f = tmp_path / "doc.json"
        f.write_text(json.dumps(doc))
        proc = run_cli("model.train", "--config", str(f), "--subset", "300", root=prepared_root)
        assert proc.returncode == 0, proc.stderr
        ckpt = load_checkpoint(prepared_root / json.loads(proc.stdout.splitlines()[-1])["checkpoint"])
        assert ckpt["config"]["seed"] == expected_seed and ckpt["config"]["hidden_size"] == 16


def test_the_trial_seed_depends_on_the_hyperparameters_not_the_run_settings():
    from model.config import trial_seed

    base = {"hidden_size": 64, "lr": 0.003, "search_seed": 1}
    assert trial_seed(base) == trial_seed({**base, "epochs": 20, "threads": 4, "device": "cuda",
                                           "precision": "bf16"})
    assert trial_seed(base) != trial_seed({**base, "lr": 0.004})
    assert trial_seed(base) != trial_seed({**base, "search_seed": 2})


def test_each_replicate_of_a_configuration_has_a_seed_of_its_own():
    """Intensification trials: the same hyperparameters with replicate r = 1, 2, ... each train
    from another seed; replicate 0 is the search's own trial (its seed unchanged)."""
    from model.config import from_trial_params, trial_seed

    base = {"hidden_size": 64, "lr": 0.003, "search_seed": 1}
    seeds = [trial_seed({**base, "replicate": r}) for r in range(4)]
    assert seeds[0] == trial_seed(base) and len(set(seeds)) == 4
    flat = from_trial_params({**base, "replicate": 2})  # what a replicate's params.json trains
    assert flat["seed"] == seeds[2] and "replicate" not in flat and "search_seed" not in flat


@pytest.mark.parametrize("config,needle", [
    ({"hiden_size": 8}, "'hiden_size'"), ({"pooling": "attention"}, "'pooling'"),
    ({"lr": -1}, "'lr'"), ({"bidirectional": "yes"}, "'bidirectional'"),
    ({"family": "cnn", "hidden_size": 64}, "'hidden_size' is a hyperparameter of family rnn"),
    ({"family": "gpt"}, "'family'")])
def test_cli_config_errors_exit_2_naming_the_key(prepared_root, tmp_path, config, needle):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(config))
    proc = run_cli("model.train", "--config", str(cfg), root=prepared_root)
    assert proc.returncode == 2 and needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_without_processed_data_says_run_dataprep(root):
    proc = run_cli("model.train", "--epochs", "1", root=root)
    assert proc.returncode == 1 and "python -m dataprep" in proc.stderr
    proc = run_cli("model.train", "--epochs", "0", root=root)
    assert proc.returncode == 2 and "--epochs" in proc.stderr


def test_the_declared_torch_floor_has_the_cpu_fused_adamw_the_loop_uses():
    import re

    import tomllib
    from packaging.version import Version

    from tests.conftest import REPO

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.match(r"torch>=([\d.]+)", d) for d in deps if d.startswith("torch"))
    # torch 2.4's release added the fused Adam/AdamW/SGD kernels for the CPU; before it,
    # AdamW(fused=True) on CPU parameters raises
    assert floor and Version(floor[1]) >= Version("2.4")
    params = [torch.nn.Parameter(torch.ones(3))]
    torch.optim.AdamW(params, fused=True).step()  # and the installed one has them
