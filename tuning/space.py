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
"""
from __future__ import annotations

from ray import tune

from model.config import (
    DEFAULTS,
    HYPERPARAMETERS,
    REPLICATE_KEY,
    RUN_KEYS,
    SEARCH_SEED_KEY,
    TrainConfig,
)
from plumbing.cli import read_yaml_or_json
from plumbing.errors import UsageError

# Sized for the default budget (50 trials in about 10 minutes on 2 cores); why each range is what
# it is, and what was left out, is in docs/guide.md (the search space).
SPACE = {
    "rnn": "lstm",
    "embedding_dim": {"choice": [64, 128, 200]},
    "hidden_size": {"choice": [64, 128, 192]},
    "num_layers": 1,
    "bidirectional": {"choice": [True, False]},
    "pooling": "max",
    "embedding_dropout": {"uniform": [0.0, 0.4]},
    "rnn_dropout": 0.0,                          # acts only when num_layers > 1
    "dropout": {"uniform": [0.1, 0.6]},
    "lr": {"loguniform": [1e-3, 1e-2]},
    "weight_decay": {"loguniform": [1e-6, 1e-2]},
    "batch_size": {"choice": [64, 128]},
}
# Where the searcher starts (`points_to_evaluate`), when inside the space: the model's default
# BiLSTM ({}: every default), and the best region of the first searches.
KNOWN_GOOD = [
    {},
    {"embedding_dim": 128, "hidden_size": 192, "bidirectional": False, "embedding_dropout": 0.25,
     "dropout": 0.5, "lr": 7e-3, "weight_decay": 5e-5, "batch_size": 64},
]
KINDS = ("loguniform", "uniform", "int", "choice")


def _check_value(key: str, value, where: str) -> None:
    try:
        TrainConfig.from_flat({key: value})
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def validate(space: dict, where: str = "search space") -> dict:
    for key, spec in space.items():
        if key not in HYPERPARAMETERS:
            raise UsageError(f"{where}: unknown or fixed key {key!r} (searchable: "
                             f"{', '.join(sorted(HYPERPARAMETERS))})")
        if not isinstance(spec, dict):
            _check_value(key, spec, where)
            continue
        if len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise UsageError(f"{where}: {key}: expected one of {{{', '.join(KINDS)}: ...}} or a value")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise UsageError(f"{where}: {key}: choice needs a non-empty list")
            for v in args:
                _check_value(key, v, where)
            continue
        if not isinstance(args, list) or len(args) != 2:
            raise UsageError(f"{where}: {key}: {kind} needs [low, high]")
        low, high = args
        if kind == "int" and not all(isinstance(v, int) and not isinstance(v, bool) for v in args):
            raise UsageError(f"{where}: {key}: int bounds must be integers, got {args}")
        for v in args:
            _check_value(key, v, where)
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
    return space


def stored_space(stored) -> dict:
    """The space a search ran over, from its search_options.json: the ranges themselves (so a
    resume or an evaluation elsewhere needs no --space file), or, for an experiment from before
    they were stored, the --space path it was given (None: SPACE)."""
    if isinstance(stored, dict):
        return {**SPACE, **validate(stored, "search_options.json: space")}
    return load_space(stored)


def differing_keys(space: dict, other: dict) -> list[str]:
    """The keys whose range (or fixed value) differs between two spaces, as stored in JSON."""
    import json

    a, b = (json.loads(json.dumps(s)) for s in (space, other))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def to_tune(space: dict) -> dict:
    out = {}
    for key, spec in space.items():
        if not isinstance(spec, dict):
            out[key] = spec
            continue
        kind, args = next(iter(spec.items()))
        out[key] = {
            "loguniform": lambda a: tune.loguniform(*a),
            "uniform": lambda a: tune.uniform(*a),
            "int": lambda a: tune.randint(a[0], a[1] + 1),  # tune.randint excludes the upper end
            "choice": lambda a: tune.choice(list(a)),
        }[kind](args)
    return out


def to_optuna(space: dict) -> dict:
    """The searched keys as Optuna distributions (for importance analysis of finished trials)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    make = {"loguniform": lambda a: FloatDistribution(a[0], a[1], log=True),
            "uniform": lambda a: FloatDistribution(a[0], a[1]),
            "int": lambda a: IntDistribution(a[0], a[1]),
            "choice": lambda a: CategoricalDistribution(a)}
    return {key: make[next(iter(spec))](next(iter(spec.values())))
            for key, spec in space.items() if isinstance(spec, dict)}


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


def load_points(path: str, space: dict) -> list[dict]:
    """`--points FILE`: a YAML/JSON list of configurations the searcher tries first, in order.

    Each maps searched keys to values inside the space (keys left out are sampled); fixed keys
    may be given only with their fixed value, so a trial's params.json can be pasted as is."""
    points = read_yaml_or_json(path, "--points")
    return points_in_space(points, space, f"--points {path}")


def points_in_space(points, space: dict, where: str = "points") -> list[dict]:
    """The searched keys of each point, checked to lie inside the space."""
    if not isinstance(points, list) or not all(isinstance(pt, dict) for pt in points):
        raise UsageError(f"{where}: expected a list of mappings (config key: value)")
    searched = []
    for i, point in enumerate(points, 1):
        where_i = f"{where}: point {i}"
        # a trial's params.json also holds the run settings and the search seed: not searched
        unknown = sorted(set(point) - set(space) - set(RUN_KEYS)
                        - {SEARCH_SEED_KEY, REPLICATE_KEY})
        if unknown:
            raise UsageError(f"{where_i}: {unknown[0]!r} is not a key of the search space")
        point = {k: v for k, v in point.items() if k in space}
        for key, value in point.items():
            _check_value(key, value, where_i)
            if not contains(space, {key: value}):
                raise UsageError(f"{where_i}: {key}={value!r} is outside the search space "
                                 f"({space[key]})")
        searched.append({k: v for k, v in point.items() if isinstance(space[k], dict)})
    return searched


def known_good_points(space: dict) -> list[dict]:
    """KNOWN_GOOD's points that lie inside `space` (only its searched keys)."""
    points = []
    for known in KNOWN_GOOD:
        point = {k: known.get(k, DEFAULTS[k]) for k, spec in space.items() if isinstance(spec, dict)}
        fixed = {k: known[k] for k in known if not isinstance(space.get(k), dict)}
        if contains(space, {**point, **fixed}):
            points.append(point)
    return points
