"""Model families: each trains, resumes and repeats itself; the conditional space; the trial
seed and dedup per family; size and latency; the frontier and the pick rule; refusals. A tiny
search across the families, and a multi-objective one, are the slow tier."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import yaml

from model.config import (
    FAMILIES,
    HYPERPARAMETERS,
    TrainConfig,
    family_keys,
    from_trial_params,
    trial_seed,
)
from model.data import load_processed
from model.loop import train_epochs
from model.speed import measure
from plumbing.errors import UsageError
from plumbing.paths import paths
from tests.conftest import (
    SEARCH_SMALL,
    assert_study_matches_trials_csv,
    run_cli,
    search_root,
    study_by_trial,
)
from tests.helpers import (
    MEASURED,
    config_of,
    frontier_by_hand,
    trials_csv,
    undominated,
    without_timing,
)
from tuning import points as points_mod
from tuning import space as space_mod
from tuning.outcome import frontier
from tuning.results.tables import pareto
from tuning.search.trainable import trial_speed
from tuning.selection import config_key, fastest_within

# the study state of a trial of each trials.csv status (tuning/search/searcher.py's docstring)
STATE_OF = {"completed": optuna.trial.TrialState.COMPLETE,
            "early_stopped": optuna.trial.TrialState.COMPLETE,
            "diverged": optuna.trial.TrialState.COMPLETE,
            "asha_stopped": optuna.trial.TrialState.PRUNED,
            "budget_stopped": optuna.trial.TrialState.PRUNED,
            "error": optuna.trial.TrialState.FAIL}
# each family small enough to train in a second or two on 1,000 rows
SMALL = {
    "rnn": {"embedding_dim": 32, "hidden_size": 32},
    "cnn": {"embedding_dim": 32, "cnn_filters": 16, "cnn_widths": "2,3"},
    "transformer": {"embedding_dim": 32, "transformer_heads": 2, "transformer_ff": 64,
                    "transformer_layers": 1},
    "bag": {"embedding_dim": 32},
}


@pytest.fixture(scope="module")
def small_splits(prepared_root):
    return load_processed(paths(prepared_root)).head(1000, 300)


def config(family: str, **extra) -> TrainConfig:
    return TrainConfig.from_flat({"family": family, **SMALL[family], "batch_size": 32,
                                  "epochs": 3, "seed": 7, **extra})


# ---- each family: trains, repeats itself, resumes, ignores padding ------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_deterministically_and_resumes_exactly(family, small_splits):
    cfg = config(family)
    first = [without_timing(e.metrics) for e in train_epochs(cfg, small_splits)]
    again, state = [], None
    for e in train_epochs(cfg, small_splits):
        again.append(without_timing(e.metrics))
        if e.epoch == 1:
            state = e.training_state()
    assert first == again and len(first) == 3
    # resumed after epoch 1 (through a real file): epochs 2 and 3 as the uninterrupted run
    resumed = [without_timing(e.metrics) for e in train_epochs(cfg, small_splits, resume=state)]
    assert resumed == first[1:]
    # and it learns something: better than the first epoch's training loss
    assert first[-1]["train_loss"] < first[0]["train_loss"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_gives_a_sentence_the_same_logits_alone_or_padded_in_a_batch(family):
    torch.manual_seed(0)
    net = config(family, dropout=0.0).network(40).eval()
    tokens = torch.tensor([[5, 6, 7, 0, 0, 0], [8, 9, 10, 11, 12, 13], [3, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([3, 6, 1])
    logits = net(tokens, lengths)
    assert logits.shape == (3, 6)
    for i in range(3):
        alone = net(tokens[i:i + 1, : lengths[i]], lengths[i:i + 1])
        torch.testing.assert_close(alone, logits[i:i + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [
    {"transformer_positions": "sinusoidal", "transformer_pooling": "first"},
    {"transformer_positions": "learned", "transformer_pooling": "max"},
])
def test_transformer_positions_and_poolings_work(options):
    net = config("transformer", **options).network(40).eval()
    assert net(torch.tensor([[4, 5, 6]]), torch.tensor([3])).shape == (1, 6)


def test_measuring_a_trial_leaves_its_numbers_unchanged(small_splits):
    """The trainable measures size and latency on its first epoch's weights: building that
    network must not draw from the RNG the training goes on drawing dropout masks from."""
    cfg = config("rnn")
    plain = [without_timing(e.metrics) for e in train_epochs(cfg, small_splits)]
    measured, speed = [], None
    threads = torch.get_num_threads()
    for e in train_epochs(cfg, small_splits):
        if speed is None:
            speed = trial_speed(e.training_state(), small_splits)
        measured.append(without_timing(e.metrics))
    assert measured == plain
    assert torch.get_num_threads() == threads
    assert speed["params"] == sum(p.numel() for p in cfg.network(small_splits.vocab_size)
                                  .parameters())
    assert speed["latency_ms"] > 0 and speed["sentences_per_s_b256"] > 0


def _run_trial(params: dict, splits, into: Path, checkpoint=None) -> tuple[list[dict], list[Path]]:
    """The trainable run once as Tune runs it (tune.report and tune.get_checkpoint stood in
    for): the results it reported, and a copy (under `into`) of each checkpoint it reported."""
    import shutil
    from unittest import mock

    from ray import tune

    from tuning.search import trainable

    results, kept = [], []

    def report(metrics, checkpoint=None):
        results.append(dict(metrics))
        if checkpoint is not None:  # (the trainable's folder is gone once report returns)
            kept.append(into / f"checkpoint_{len(kept)}")
            shutil.copytree(checkpoint.path, kept[-1])

    node = mock.Mock(**{"get_node_id.return_value": "node"})
    with mock.patch.object(tune, "report", report), \
            mock.patch.object(tune, "get_checkpoint", lambda: checkpoint), \
            mock.patch.object(trainable.ray, "get_runtime_context", lambda: node):
        try:
            trainable.train_trial(params, splits)
        except RuntimeError as e:
            assert "injected fault" in str(e)
    return results, kept


def test_a_restarted_trial_that_diverges_at_once_reports_the_figures_it_measured(
        small_splits, tmp_path, monkeypatch):
    """A trial retried after a crash (or resumed after a kill) restarts from its last checkpoint;
    one that then diverges on its first epoch reports the speed figures it measured before,
    which the checkpoint carries (a multi-objective search would otherwise tell it FAIL)."""
    from ray import tune

    from model.speed import FIGURES
    from tuning.search.trainable import DIVERGE_EPOCH_ENV, FAULT_EPOCH_ENV

    params = {"family": "rnn", **SMALL["rnn"], "batch_size": 32, "epochs": 3, "seed": 7}
    monkeypatch.setenv(FAULT_EPOCH_ENV, "1")  # the first run crashes after epoch 1
    first, kept = _run_trial(params, small_splits, tmp_path / "first")
    assert [r["epoch"] for r in first] == [1] and len(kept) == 1
    measured = {k: first[0][k] for k in FIGURES}
    assert all(v > 0 for v in measured.values())
    # the retry resumes from that checkpoint and diverges on its first epoch, epoch 2
    monkeypatch.setenv(DIVERGE_EPOCH_ENV, "2")
    again, _ = _run_trial(params, small_splits, tmp_path / "again",
                          tune.Checkpoint.from_directory(str(kept[0])))
    assert [(r["epoch"], r["status"]) for r in again] == [(2, "diverged")]
    assert {k: again[0][k] for k in FIGURES} == measured


def test_the_bag_is_smaller_and_faster_than_the_rnn_at_the_same_width(small_splits):
    """What the frontier rests on: one sentence through a bag of embeddings is cheaper than
    through an LSTM over them (same embedding width)."""
    rnn = measure(config("rnn", embedding_dim=64, hidden_size=128).network(
        small_splits.vocab_size), small_splits.val)
    bag = measure(config("bag", embedding_dim=64).network(small_splits.vocab_size),
                  small_splits.val)
    assert bag["params"] < rnn["params"] and bag["latency_ms"] < rnn["latency_ms"]


# ---- config: the family's keys only -------------------------------------------------------------

@pytest.mark.parametrize("flat,needle", [
    ({"family": "lstm"}, "'family': must be one of"),
    ({"family": "cnn", "hidden_size": 64}, "'hidden_size' is a hyperparameter of family rnn"),
    ({"bag_pooling": "mean"}, "'bag_pooling' is a hyperparameter of family bag, not of 'rnn'"),
    ({"family": "transformer", "embedding_dim": 30, "transformer_heads": 4}, "must divide"),
    ({"family": "cnn", "cnn_widths": "3,3"}, "'cnn_widths'"),
    ({"family": "cnn", "cnn_widths": [3, 4]}, "'cnn_widths'"),
])
def test_a_bad_family_or_a_key_of_another_family_is_refused(flat, needle):
    with pytest.raises(UsageError, match=needle):
        TrainConfig.from_flat(flat)


def test_every_family_key_is_a_hyperparameter_once():
    assert len(set(HYPERPARAMETERS)) == len(HYPERPARAMETERS) and HYPERPARAMETERS[0] == "family"
    for family in FAMILIES:
        assert set(family_keys(family)) <= set(HYPERPARAMETERS)
        assert TrainConfig.from_flat({"family": family}).family == family


def test_the_rnn_seed_is_the_hash_it_was_before_families():
    """An rnn trial's seed hashes exactly the keys it did before families were added (no
    `family`, no other family's key): the default search's trials, and their numbers, are the
    same bit for bit. The formula below is the one model/config.py had."""
    before = ("rnn", "embedding_dim", "hidden_size", "num_layers", "bidirectional", "pooling",
              "embedding_dropout", "rnn_dropout", "dropout", "lr", "weight_decay", "batch_size",
              "warmup_epochs", "grad_clip", "label_smoothing", "class_weight_power", "patience")
    defaults = TrainConfig().to_flat()
    for params in ({"search_seed": 3, "hidden_size": 64, "lr": 0.004},
                   {"search_seed": 0, "family": "rnn", "rnn": "gru", "replicate": 2}):
        hyper = {k: params.get(k, defaults[k]) for k in before}
        key = [params.get("search_seed", 0), hyper] + ([params["replicate"]]
                                                         if params.get("replicate") else [])
        blob = json.dumps(key, sort_keys=True).encode()
        assert trial_seed(params) == int.from_bytes(hashlib.sha256(blob).digest()[:4], "big")


def test_seed_and_dedup_read_only_the_family_keys():
    cnn = {"family": "cnn", "cnn_filters": 64, "lr": 0.003, "search_seed": 1}
    bag = {"family": "bag", "lr": 0.003, "search_seed": 1}
    # another family's defaults do not enter: a key the family does not read changes nothing
    assert config_key(cnn) == config_key({**cnn, "hidden_size": 999})
    assert trial_seed(cnn) == trial_seed({**cnn, "hidden_size": 999})
    # two families that share every other value are two configurations with two seeds
    assert config_key(bag) != config_key({**bag, "family": "cnn"})
    assert trial_seed(bag) != trial_seed({**bag, "family": "cnn"})
    assert from_trial_params(cnn)["seed"] == trial_seed(cnn)


# ---- the conditional space ----------------------------------------------------------------------

def _old_style_search(space: dict, seed: int):
    """Ray's OptunaSearch over the plain dict space of Tune distributions: how the search ran
    before the space was conditional (the rnn keys of SPACE, in its order)."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    make = {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
            "choice": lambda a: tune.choice(list(a))}
    dist = {k: make[next(iter(v))](next(iter(v.values()))) for k, v in space.items()
            if isinstance(v, dict) and k in family_keys("rnn")}
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
    searcher.set_search_properties("val_f1", "max", dist)
    return searcher


def test_with_the_family_fixed_tpe_suggests_what_the_plain_space_did():
    from ray.tune.search.optuna import OptunaSearch

    old = _old_style_search(space_mod.SPACE, seed=0)
    new = OptunaSearch(space=space_mod.ConditionalSpace(space_mod.SPACE), metric="val_f1",
                       mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    for i in range(14):  # past TPE's 10 random startup trials
        a, b = old.suggest(f"t{i}"), new.suggest(f"t{i}")
        assert {k: v for k, v in b.items() if k in a} == a
        assert b["family"] == "rnn" and b["rnn"] == "lstm" and b["num_layers"] == 1
        assert set(b) == {k for k in space_mod.SPACE if k in family_keys("rnn")} | {"family"}
        value = {"val_f1": (i * 7919 % 13) / 13}
        old.on_trial_complete(f"t{i}", value)
        new.on_trial_complete(f"t{i}", value)


def test_a_mixed_trial_samples_its_family_keys_only():
    space = {**space_mod.SPACE, "family": {"choice": list(FAMILIES)}}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(24):
        trial = study.ask()
        params = {**space_mod.ConditionalSpace(space)(trial), **trial.params}
        family = params["family"]
        seen.add(family)
        assert set(params) - {"family"} <= set(family_keys(family))
        TrainConfig.from_flat(params)  # a config its family accepts
        study.tell(trial, 0.5)
    assert seen == set(FAMILIES)


def test_known_good_points_start_every_family_of_a_mixed_space():
    mixed = {**space_mod.SPACE, "family": {"choice": list(FAMILIES)}}
    points = points_mod.known_good_points(mixed)
    assert [p["family"] for p in points] == ["rnn", "rnn", "cnn", "transformer", "bag"]
    for point in points:
        assert set(point) - {"family"} <= set(family_keys(point["family"]))
    # the default space (rnn fixed): only the rnn points, without a family key (as before)
    assert [set(p) for p in points_mod.known_good_points(space_mod.SPACE)] == \
        [{k for k in family_keys("rnn") if isinstance(space_mod.SPACE.get(k), dict)}] * 2


@pytest.mark.parametrize("content,needle", [
    ({"family": "lstm"}, "'family': must be one of"),
    ({"family": "cnn", "hidden_size": {"choice": [64]}},
     "'hidden_size' is a hyperparameter of family rnn, which this space does not search"),
    ({"family": "transformer", "transformer_heads": {"choice": [3]}}, "must divide embedding_dim"),
    ({"family": "transformer", "transformer_heads": {"choice": [2, 16]},
      "embedding_dim": {"choice": [64, 200]}}, "transformer_heads 16 does not divide embedding_dim 200"),
    ({"family": {"choice": ["cnn", "gpt"]}}, "'family'"),
])
def test_bad_family_spaces_are_usage_errors(tmp_path, content, needle):
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump(content))
    with pytest.raises(UsageError, match=needle):
        space_mod.load_space(str(f))


def test_points_name_their_family_and_only_its_keys():
    mixed = {**space_mod.SPACE, "family": {"choice": list(FAMILIES)}}
    with pytest.raises(UsageError, match="say which"):
        points_mod.points_in_space([{"lr": 0.003}], mixed)
    with pytest.raises(UsageError, match="'hidden_size' is not a hyperparameter of family 'bag'"):
        points_mod.points_in_space([{"family": "bag", "hidden_size": 64}], mixed)
    assert points_mod.points_in_space([{"family": "bag", "bag_pooling": "max"}], mixed) == \
        [{"family": "bag", "bag_pooling": "max"}]


# ---- the frontier and the pick rule -------------------------------------------------------------

def _table(rows):
    cols = ["trial_id", "phase", "status", "seed", "best_val_f1", "best_epoch", "latency_ms",
            "family"]
    return pd.DataFrame([dict(zip(cols, r, strict=True)) for r in rows])


def test_the_frontier_and_fastest_within():
    #               id   phase    status        seed  f1    ep  ms     family
    table = _table([("a", "search", "completed", 1, 0.900, 3, 2.00, "rnn"),
                    ("b", "search", "completed", 2, 0.897, 3, 0.50, "cnn"),
                    ("c", "search", "asha_stopped", 3, 0.896, 1, 0.10, "bag"),
                    ("d", "search", "completed", 4, 0.880, 3, 0.05, "bag"),
                    ("e", "search", "completed", 5, 0.850, 3, 0.40, "cnn"),   # dominated by c
                    ("f", "search", "budget_stopped", 6, 0.899, 1, 0.01, "bag")])  # not measured
    assert frontier({"x": (0.9, 1.0), "y": (0.8, 2.0), "z": (0.9, 1.0)}) == {"x", "z"}
    # (f's figure is a run the time budget cut short: not a measurement of its configuration)
    assert list(table.loc[pareto(table), "trial_id"]) == ["a", "b", "c", "d"]
    pick = fastest_within(table, 0.005)
    assert pick["trial_id"] == "c" and pick["pick"]["n_within"] == 3
    assert pick["pick"]["best_trial_id"] == "a" and pick["pick"]["latency_ms"] == 0.10
    assert fastest_within(table, 0.0)["trial_id"] == "a"
    assert fastest_within(table, 0.03)["trial_id"] == "d"
    # a tie in latency goes to the higher val macro-F1
    tie = pd.concat([table, _table([("g", "search", "completed", 7, 0.898, 3, 0.10, "bag")])],
                    ignore_index=True)
    assert fastest_within(tie, 0.005)["trial_id"] == "g"


def test_the_reports_fastest_within_line_names_what_the_pick_would_evaluate():
    """report.md's "fastest within 0.01" is `--pick fastest-within 0.01`'s trial: among the
    measured search trials with a latency, within 0.01 of the winner's val macro-F1 (not of the
    evaluated trial's; not a trial the time budget cut short, errored or unfinished)."""
    from tuning.results.report import frontier_section

    #               id   phase    status            seed  f1    ep  ms     family
    rows = [("a", "search", "completed", 1, 0.900, 3, 2.00, "rnn"),     # the winner
            ("b", "search", "completed", 2, 0.895, 3, 0.50, "cnn"),     # within 0.01 of a
            ("d", "search", "completed", 3, 0.886, 3, 0.05, "bag"),     # within 0.01 of b only
            ("f", "search", "budget_stopped", 4, 0.899, 1, 0.01, "bag"),  # cut short
            ("u", "search", "unfinished", 5, 0.898, 1, 0.02, "bag"),
            ("x", "search", "error", 6, 0.897, 1, 0.03, "cnn")]
    speed = {"params": 1000, "latency_ms": 0.3, "sentences_per_s_b256": 5000.0}

    def line(table, evaluated):
        table = table.assign(params=pd.array([1000] * len(table), dtype="Int64"),
                             sentences_per_s_b256=5000.0, epoch_s=1.0)
        m = {"trial_id": evaluated, "accuracy": 0.9, "f1_macro": 0.88, "speed": speed}
        (found,) = [p for p in frontier_section(m, table) if "within 0.01 val macro-F1" in p]
        return found

    # evaluated the winner: b (0.50 ms), not f, u or x (faster, but no measurement)
    text = line(_table(rows), "a")
    assert "the fastest is trial `b` (cnn, 0.8950, 0.500 ms): 4.0x lower latency" in text
    # evaluated b (`--pick fastest-within 0.005`): still within 0.01 of the winner's 0.900,
    # so d (0.886) is not within
    measured = _table([r for r in rows if r[0] in "abd"])
    assert "the fastest is trial `b`" in line(measured, "b")
    assert fastest_within(measured, 0.01)["trial_id"] == "b"


def test_the_report_reads_an_experiment_from_before_families():
    """Trials measured no size or latency before families: the report's family table leaves
    those cells empty instead of failing after the test pass."""
    from tuning.results.report import frontier_section

    trials = pd.DataFrame({"trial_id": ["a", "b"], "phase": ["search", "search"],
                           "status": ["completed", "asha_stopped"], "family": ["rnn", "rnn"],
                           "best_val_f1": [0.9, 0.8], "latency_ms": [float("nan")] * 2,
                           "sentences_per_s_b256": [float("nan")] * 2,
                           "epoch_s": [float("nan")] * 2,
                           "params": pd.array([None, None], dtype="Int64")})
    m = {"trial_id": "a", "accuracy": 0.93, "f1_macro": 0.89,
         "speed": {"params": 1000, "latency_ms": 0.3, "sentences_per_s_b256": 5000.0}}
    text = "\n".join(frontier_section(m, trials))
    assert "| rnn | 2 | a | 0.9000 | 0.9300 | 0.8900 |" in text


# ---- searches across families (slow: real Ray) --------------------------------------------------

@pytest.mark.slow
def test_a_tiny_search_across_families_and_the_fastest_pick(prepared_root, tmp_path):
    root = search_root(prepared_root, tmp_path, with_test=True)
    (root / "mixed.yaml").write_text("family: {choice: [rnn, cnn, transformer, bag]}\n")
    proc = run_cli("tuning.search", "--samples", "6", "--max-epochs", "2", "--name", "mix",
                   "--space", "mixed.yaml", "--optuna-storage", "sqlite:///optuna.db",
                   *SEARCH_SMALL, root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = trials_csv(root, "mix")
    # the known-good points start every family (rnn twice: the default and the best region)
    assert set(table["family"]) == set(FAMILIES)
    params = {p.parent.name.removeprefix("trial_"): json.loads(p.read_text())
              for p in (root / "ray_results" / "mix").glob("trial_*/params.json")}
    for _, row in table.iterrows():
        family, own = row["family"], params[row["trial_id"]]
        # a trial holds its family's hyperparameters only; trials.csv leaves the others empty
        run_keys = {"family", "epochs", "threads", "search_seed", "device", "precision"}
        assert set(own) - run_keys <= set(family_keys(family))
        others = [k for k in HYPERPARAMETERS if k not in family_keys(family) and k != "family"]
        assert row[others].isna().all()
        assert row["seed"] == trial_seed(own)
        assert row["params"] > 0 and row["latency_ms"] > 0 and row["sentences_per_s_b256"] > 0
    # trials.csv's frontier is the one worked out by hand; every trial measured a latency, so
    # some are on it
    on = frontier_by_hand(table)
    assert on and set(table.loc[table["pareto"], "trial_id"]) == on
    # the Optuna study holds each trial's own family's params
    study = study_by_trial("sqlite:///" + str(root / "optuna.db"), "mix")
    assert_study_matches_trials_csv(study, table)
    for t in study.values():
        assert set(t.params) - {"family"} <= set(family_keys(t.params["family"]))

    # the fastest trial within 0.02 of the best is evaluated (its checkpoint was kept)
    proc = run_cli("tuning.evaluate_best", "--experiment", "ray_results/mix", "--pick",
                   "fastest-within", "0.02", root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((root / "artifacts" / "best" / "metrics.json").read_text())
    done = table[table["phase"] == "search"]
    best = done["best_val_f1"].max()
    close = done[done["best_val_f1"] >= best - 0.02]
    assert metrics["trial_id"] == close.loc[close["latency_ms"].idxmin(), "trial_id"]
    assert metrics["selection"]["pick"]["within"] == 0.02
    report = (root / "artifacts" / "best" / "report.md").read_text()
    assert "--pick fastest-within 0.02" in report and "## Families" in report
    for family in FAMILIES:
        assert f"| {family} |" in report
    assert (root / "artifacts" / "best" / "frontier.png").stat().st_size > 0
    # fANOVA across families ranks what every trial has: the family and the shared keys; with
    # 3 or more distinct measured search trials it has something to rank (not {})
    measured = done[done["status"].isin(MEASURED) & done["best_val_f1"].notna()]
    assert len({config_of(row) for _, row in measured.iterrows()}) >= 3
    assert metrics["importance"]
    shared = set.intersection(*(set(family_keys(f)) for f in FAMILIES))
    assert set(metrics["importance"]) <= shared | {"family"}


@pytest.mark.slow
def test_a_multi_objective_search_tells_optuna_both_figures(prepared_root, tmp_path):
    root = search_root(prepared_root, tmp_path, with_test=False)
    (root / "space.yaml").write_text("family: {choice: [cnn, bag]}\n")
    proc = run_cli("tuning.search", "--samples", "5", "--max-epochs", "2", "--name", "mo",
                   "--space", "space.yaml", "--objectives", "f1,latency",
                   "--optuna-storage", "sqlite:///optuna.db", *SEARCH_SMALL, root=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = trials_csv(root, "mo")
    storage = "sqlite:///" + str(root / "optuna.db")
    study = optuna.load_study(study_name="mo", storage=storage)
    assert len(study.directions) == 2
    # each trial told as tuning/search/searcher.py promises: a finished one COMPLETE with [its
    # best val_f1, its latency], a cut one PRUNED, an errored one FAIL
    told = study_by_trial(storage, "mo")
    assert set(told) == set(table["trial_id"])
    for _, row in table.iterrows():
        trial = told[row["trial_id"]]
        expected = STATE_OF[row["status"]]
        if pd.isna(row["latency_ms"]) and expected == optuna.trial.TrialState.COMPLETE:
            expected = optuna.trial.TrialState.FAIL  # (diverged before measuring: no latency)
        assert trial.state == expected, (row["trial_id"], row["status"])
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.values == pytest.approx([row["best_val_f1"], row["latency_ms"]])
    complete = table[table["status"].map(STATE_OF).eq(optuna.trial.TrialState.COMPLETE)
                     & table["latency_ms"].notna()]
    assert len(complete) >= 1
    # Optuna's Pareto set among the told trials is trials.csv's frontier among them
    best = {t.user_attrs["trial_id"] for t in study.best_trials}
    assert best == undominated(complete)


@pytest.mark.parametrize("args,needle", [
    (["--objectives", "f1,speed"], "--objectives"),
    (["--space", "bad.yaml"], "hyperparameter of family rnn"),
])
def test_search_flag_errors_for_families_exit_2(root, args, needle):
    (root / "bad.yaml").write_text("family: bag\nhidden_size: {choice: [64]}\n")
    proc = run_cli("tuning.search", *args, root=root)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("pick", [["fastest"], ["fastest-within", "-1"], ["fastest-within", "x"],
                                  ["best", "0.1"]])
def test_evaluate_pick_errors_exit_2(root, pick):
    proc = run_cli("tuning.evaluate_best", "--pick", *pick, root=root)
    assert proc.returncode == 2 and "--pick" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_multi_objective_search_survives_trials_that_diverge_before_any_latency(
        prepared_root, tmp_path):
    """A trial that diverges on its first epoch reports no latency (NaN): Tune wants every
    objective's key in every result, and Optuna is told the trial FAIL, not a NaN objective.
    (Every trial diverged here, so no trial kept a checkpoint: the search says so once, exit 1,
    after the trials ran and were told, as any search whose every trial diverged.)"""
    root = search_root(prepared_root, tmp_path, with_test=False)
    proc = run_cli("tuning.search", "--samples", "2", "--max-epochs", "2", "--name", "nan",
                   "--objectives", "f1,latency", "--optuna-storage", "sqlite:///optuna.db",
                   *SEARCH_SMALL, root=root, env={"EMOTION_FAULT_DIVERGE_EPOCH": "1"})
    assert proc.returncode == 1 and "kept no checkpoint" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    table = trials_csv(root, "nan")
    assert list(table["status"]) == ["diverged", "diverged"] and table["latency_ms"].isna().all()
    study = study_by_trial("sqlite:///" + str(root / "optuna.db"), "nan")
    assert sorted(study) == sorted(table["trial_id"])
    assert [t.state for t in study.values()] == [optuna.trial.TrialState.FAIL] * 2
