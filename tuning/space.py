"""The search space, in one place.

Each entry is a plain spec, `{kind: args}`, turned into a Ray Tune distribution by `to_tune`:
  loguniform: [low, high]   learning rates and weight decay (scale-free)
  uniform:    [low, high]   dropouts
  int:        [low, high]   integers, both ends included
  choice:     [v1, v2, ...] categorical
  a bare value              fixed (not searched)
A `--space FILE.yaml|json` maps some of these keys to new specs; every other key keeps its range.
Keys are the hyperparameters' field names (model/config.py); bounds and values are checked by
the fields' own rules.

The space is conditional: `family` picks the network, and a trial samples only the keys its
family reads (model/config.py `family_keys`), through Optuna's define-by-run interface
(`ConditionalSpace`, handed to OptunaSearch as its space). So a trial's params, its seed, its
row in trials.csv and its Optuna trial hold its family's hyperparameters only (Optuna's TPE
models the keys every trial has jointly, the family among them, and a family's own keys over the
trials that have them), and warm start, points-to-evaluate and the importance table
work as before. With `family` fixed (the default, `rnn`), a trial asks for the same keys in the
same order as the plain dict space did, so TPE suggests the same values.
"""
from __future__ import annotations

from model.config import (
    FAMILIES,
    FAMILY_KEY,
    HYPERPARAMETERS,
    TrainConfig,
    family_keys,
    family_of,
)
from plumbing.cli import read_yaml_or_json
from plumbing.errors import UsageError

# Sized for the default budget (50 trials in about 10 minutes on 2 cores); why each range is what
# it is, and what was left out, is in docs/guide.md (the search space).
SPACE = {
    "family": "rnn",  # {"choice": ["rnn", "cnn", "transformer", "bag"]}: one search across them
    # rnn (model/network.py)
    "rnn": "lstm",
    "embedding_dim": {"choice": [64, 128, 200]},
    "hidden_size": {"choice": [64, 128, 192]},
    "num_layers": 1,
    "bidirectional": {"choice": [True, False]},
    "pooling": "max",
    "embedding_dropout": {"uniform": [0.0, 0.4]},
    "rnn_dropout": 0.0,                          # acts only when num_layers > 1
    "dropout": {"uniform": [0.1, 0.6]},            # (every family: before the output layer)
    # cnn (model/cnn.py): embedding_dim, embedding_dropout and dropout as above
    "cnn_widths": {"choice": ["1,2,3", "2,3,4", "3,4,5", "2,3,4,5"]},
    "cnn_filters": {"choice": [64, 100, 128, 200]},
    # transformer (model/transformer.py): every transformer_heads must divide every embedding_dim
    "transformer_layers": {"int": [1, 4]},
    "transformer_heads": {"choice": [2, 4]},
    "transformer_ff": {"choice": [128, 256, 512]},
    "transformer_dropout": {"uniform": [0.0, 0.3]},
    "transformer_positions": {"choice": ["learned", "sinusoidal"]},
    "transformer_pooling": {"choice": ["mean", "max", "first"]},
    # bag (model/bag.py)
    "bag_pooling": {"choice": ["mean", "max", "mean_max"]},
    # every family (OptimConfig)
    "lr": {"loguniform": [1e-3, 1e-2]},
    "weight_decay": {"loguniform": [1e-6, 1e-2]},
    "batch_size": {"choice": [64, 128]},
}
# Where the searcher starts (`points_to_evaluate`), when inside the space: the model's default
# BiLSTM ({}: every default), the best region of the first searches, and each other family's
# defaults (a search across families tries each at least once).
KNOWN_GOOD = [
    {},
    {"embedding_dim": 128, "hidden_size": 192, "bidirectional": False, "embedding_dropout": 0.25,
     "dropout": 0.5, "lr": 7e-3, "weight_decay": 5e-5, "batch_size": 64},
    {"family": "cnn"},
    {"family": "transformer"},
    {"family": "bag"},
]
KINDS = ("loguniform", "uniform", "int", "choice")


def _owner(key: str) -> str:
    """A family that reads `key` (the first, for a key they share)."""
    return next((f for f in FAMILIES if key in family_keys(f)), family_of({}))


def check_value(key: str, value, where: str) -> None:
    try:
        TrainConfig.from_flat({key: value} if key == FAMILY_KEY else
                              {FAMILY_KEY: _owner(key), key: value})
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def values_of(spec) -> list:
    """The values a spec can take (a range of floats: its two ends)."""
    if not isinstance(spec, dict):
        return [spec]
    kind, args = next(iter(spec.items()))
    return list(range(args[0], args[1] + 1)) if kind == "int" else list(args)


def families(space: dict) -> list[str]:
    """The families a space searches (or the one it fixes)."""
    return values_of(space.get(FAMILY_KEY, family_of({})))


def check_families(space: dict, overrides, where: str) -> dict:
    """A UsageError unless every key of `overrides` is read by a family the whole space can
    choose, and every transformer's head count divides every embedding width it may meet."""
    chosen = families(space)
    for key in overrides:
        if key != FAMILY_KEY and not any(key in family_keys(f) for f in chosen):
            owners = [f for f in FAMILIES if key in family_keys(f)]
            raise UsageError(f"{where}: {key!r} is a hyperparameter of family "
                             f"{' and '.join(owners)}, which this space does not search "
                             f"({FAMILY_KEY}: {space[FAMILY_KEY]})")
    if "transformer" in chosen:
        for heads in values_of(space["transformer_heads"]):
            for dim in values_of(space["embedding_dim"]):
                if dim % heads:
                    raise UsageError(f"{where}: transformer_heads {heads} does not divide "
                                     f"embedding_dim {dim} (a transformer needs it to)")
    return space


def validate(space: dict, where: str = "search space") -> dict:
    for key, spec in space.items():
        if key not in HYPERPARAMETERS:
            raise UsageError(f"{where}: unknown or fixed key {key!r} (searchable: "
                             f"{', '.join(sorted(HYPERPARAMETERS))})")
        if not isinstance(spec, dict):
            check_value(key, spec, where)
            continue
        if len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise UsageError(f"{where}: {key}: expected one of {{{', '.join(KINDS)}: ...}} or a value")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise UsageError(f"{where}: {key}: choice needs a non-empty list")
            for v in args:
                check_value(key, v, where)
            continue
        if not isinstance(args, list) or len(args) != 2:
            raise UsageError(f"{where}: {key}: {kind} needs [low, high]")
        low, high = args
        if kind == "int" and not all(isinstance(v, int) and not isinstance(v, bool) for v in args):
            raise UsageError(f"{where}: {key}: int bounds must be integers, got {args}")
        for v in args:
            check_value(key, v, where)
        if not low < high:
            raise UsageError(f"{where}: {key}: {kind} needs low < high, got {args}")
        if kind == "loguniform" and low <= 0:
            raise UsageError(f"{where}: {key}: loguniform needs low > 0, got {args}")
    return space


def load_space(path: str | None) -> dict:
    """SPACE, with the ranges of a YAML/JSON file laid over it."""
    space = dict(SPACE)
    if path is None:
        return space
    overrides = read_yaml_or_json(path, "--space")
    if not isinstance(overrides, dict):
        raise UsageError(f"--space {path}: expected a mapping of config keys to ranges")
    space.update(validate(overrides, f"--space {path}"))
    return check_families(space, overrides, f"--space {path}")


def stored_space(stored) -> dict:
    """The space a search ran over, from its search_options.json: the ranges themselves (so a
    resume or an evaluation elsewhere needs no --space file), or, for an experiment from before
    they were stored, the --space path it was given (None: SPACE)."""
    if isinstance(stored, dict):
        # (a space stored before families has none of their keys: SPACE's, with family rnn)
        return {**SPACE, **validate(stored, "search_options.json: space")}
    return load_space(stored)


def differing_keys(space: dict, other: dict) -> list[str]:
    """The keys whose range (or fixed value) differs between two spaces, as stored in JSON."""
    import json

    a, b = (json.loads(json.dumps(s)) for s in (space, other))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


class ConditionalSpace:
    """The space as an Optuna define-by-run function (OptunaSearch's `space`): the family first,
    then, in the space's order, the keys that family reads, each sampled from its spec; the fixed
    ones are returned as constants. A class, not a closure: Tune pickles the searcher with the
    experiment."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, trial) -> dict:
        fixed = {}
        family = self._value(trial, FAMILY_KEY, fixed)
        for key in self.space:
            if key != FAMILY_KEY and key in family_keys(family):
                self._value(trial, key, fixed)
        return fixed

    def _value(self, trial, key: str, fixed: dict):
        spec = self.space.get(key, family_of({}) if key == FAMILY_KEY else None)
        if not isinstance(spec, dict):
            fixed[key] = spec
            return spec
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            return trial.suggest_categorical(key, list(args))
        if kind == "int":
            return trial.suggest_int(key, args[0], args[1])
        return trial.suggest_float(key, args[0], args[1], log=kind == "loguniform")


def to_optuna(space: dict) -> dict:
    """The searched keys as Optuna distributions (for importance analysis of finished trials)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    make = {"loguniform": lambda a: FloatDistribution(a[0], a[1], log=True),
            "uniform": lambda a: FloatDistribution(a[0], a[1]),
            "int": lambda a: IntDistribution(a[0], a[1]),
            "choice": lambda a: CategoricalDistribution(a)}
    return {key: make[next(iter(spec))](next(iter(spec.values())))
            for key, spec in space.items() if isinstance(spec, dict)}


def distributions(space: dict, params: dict) -> dict:
    """The Optuna distributions of the searched keys among `params` (a trial's: its family's)."""
    return {k: d for k, d in to_optuna(space).items() if k in params}


def contains(space: dict, point: dict) -> bool:
    """Whether a known-good point lies inside the (possibly overridden) space."""
    for key, value in point.items():
        spec = space.get(key)
        if not isinstance(spec, dict):
            if spec != value:
                return False
            continue
        kind, args = next(iter(spec.items()))
        if kind == "choice" and value not in args:
            return False
        if kind != "choice" and not args[0] <= value <= args[1]:
            return False
    return True
