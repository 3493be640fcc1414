"""The training configuration: typed, validated once, every default written once (here).

`TrainConfig` = `ModelConfig` (the network) + `OptimConfig` (how it learns) + `RunConfig` (how
and where a run goes: not hyperparameters). Field names are unique across the three, so a flat
`{name: value}` mapping (a search trial's config, a checkpoint's, a `--config` file) maps onto
them by name, and a search space's keys are the hyperparameters' field names.

To add a hyperparameter: a field below (default, check), its use (e.g. `model/network.py`), and
optionally a range in `tuning/space.py`.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields

from plumbing.errors import UsageError

RNNS = ("lstm", "gru")
POOLINGS = ("last", "mean", "max")
_TYPES = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _field(default, check, want: str):
    """A config field: its default, and the check its values must pass (`want` says it)."""
    return field(default=default, metadata={"types": _TYPES[type(default)], "check": check,
                                            "want": want})


def _in(default, lo, hi):
    return _field(default, lambda v: lo <= v <= hi, f"in [{lo}, {hi}]")


def _one_of(default, options):
    return _field(default, lambda v: v in options, f"one of {list(options)}")


def check_value(key: str, value, meta) -> None:
    """A UsageError naming `key` unless `value` has the field's type and passes its check."""
    types = meta["types"]
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise UsageError(f"config key {key!r}: expected {'/'.join(t.__name__ for t in types)}, "
                         f"got {value!r}")
    if isinstance(value, float) and not math.isfinite(value) or not meta["check"](value):
        raise UsageError(f"config key {key!r}: must be {meta['want']}, got {value!r}")


class _Checked:
    def __post_init__(self):
        for f in fields(self):
            check_value(f.name, getattr(self, f.name), f.metadata)


@dataclass(frozen=True)
class ModelConfig(_Checked):
    """The network: embedding -> (Bi)LSTM/GRU -> pooling -> dropout -> linear."""
    rnn: str = _one_of("lstm", RNNS)
    embedding_dim: int = _in(128, 1, 4096)
    hidden_size: int = _in(128, 1, 4096)
    num_layers: int = _in(1, 1, 8)
    bidirectional: bool = _field(True, lambda v: True, "true or false")
    pooling: str = _one_of("max", POOLINGS)
    embedding_dropout: float = _in(0.1, 0.0, 0.95)
    rnn_dropout: float = _in(0.0, 0.0, 0.95)  # between stacked layers (needs num_layers > 1)
    dropout: float = _in(0.3, 0.0, 0.95)      # before the output layer


@dataclass(frozen=True)
class OptimConfig(_Checked):
    """How it learns: AdamW, a warmup + cosine schedule over the run's epochs, the loss, and
    early stopping."""
    lr: float = _field(3e-3, lambda v: 0 < v <= 1, "in (0, 1]")
    weight_decay: float = _in(1e-4, 0.0, 1.0)
    batch_size: int = _in(64, 1, 65_536)
    warmup_epochs: float = _in(0.0, 0.0, 10_000)
    grad_clip: float = _in(1.0, 0.0, 1e6)         # max gradient norm; 0 turns clipping off
    label_smoothing: float = _in(0.0, 0.0, 0.5)
    # loss weight of a class = (its train count)^-power: 0 none, 1 balanced
    class_weight_power: float = _in(0.0, 0.0, 2.0)
    patience: int = _in(3, 0, 10_000)  # epochs without a better val macro-F1 before stopping; 0 never


@dataclass(frozen=True)
class RunConfig(_Checked):
    """How and where a run goes. Results depend on them too (threads change float sums), but
    they are not searched: a search sets them from its flags."""
    seed: int = _in(0, 0, 2**32 - 1)
    threads: int = _in(1, 1, 1024)     # torch.set_num_threads
    epochs: int = _in(10, 1, 10_000)   # at most; the cosine schedule spans all of them
    device: str = _field("cpu", lambda v: v in ("cpu", "cuda") or v.startswith("cuda:"),
                         "cpu or cuda[:N]")
    eval_batch_size: int = _in(1024, 1, 1_000_000)


SECTIONS = {"model": ModelConfig, "optim": OptimConfig, "run": RunConfig}
HYPERPARAMETERS = tuple(f.name for section in (ModelConfig, OptimConfig) for f in fields(section))
RUN_KEYS = tuple(f.name for f in fields(RunConfig))
# The keys a search adds to each trial's config: the seed that trial seeds are derived from, and
# (intensification trials only) which extra seed of its configuration the trial is: 1, 2, ...
SEARCH_SEED_KEY = "search_seed"
REPLICATE_KEY = "replicate"


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_flat(cls, flat: dict | None = None) -> TrainConfig:
        """Defaults updated with `flat`; an unknown key or a bad value is a UsageError naming it."""
        flat = flat or {}
        known = {f.name: name for name, section in SECTIONS.items() for f in fields(section)}
        for key in flat:
            if key not in known:
                raise UsageError(f"unknown config key {key!r} (known: {', '.join(sorted(known))})")
        by_section = {name: {} for name in SECTIONS}
        for key, value in flat.items():
            by_section[known[key]][key] = value
        return cls(**{name: SECTIONS[name](**values) for name, values in by_section.items()})

    def to_flat(self) -> dict:
        return {**asdict(self.run), **asdict(self.model), **asdict(self.optim)}

    def replace(self, **changes) -> TrainConfig:
        return TrainConfig.from_flat({**self.to_flat(), **changes})

    def id(self) -> str:
        """A short hash of the whole config (names `python -m model.train`'s run folders)."""
        return hashlib.sha256(json.dumps(self.to_flat(), sort_keys=True).encode()).hexdigest()[:10]


DEFAULTS = TrainConfig().to_flat()


def trial_seed(params: dict) -> int:
    """A search trial's seed: a hash of the search seed and the trial's hyperparameters only.

    The same hyperparameters in the same search always train from the same initial weights and
    batch order: retries, resumes and reruns included, whatever order or node the trials ran
    in, and whatever the run settings (RUN_KEYS): the same configuration rerun with more epochs,
    more threads or on a GPU starts from the same seed, so only the setting changed differs.
    Replicate r > 0 (an intensification trial: the same hyperparameters, another seed) hashes r
    in too; replicate 0 is the search's own trial.
    """
    hyper = {k: params.get(k, DEFAULTS[k]) for k in HYPERPARAMETERS}
    key = [params.get(SEARCH_SEED_KEY, 0), hyper]
    if params.get(REPLICATE_KEY, 0):
        key.append(params[REPLICATE_KEY])
    blob = json.dumps(key, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big")


def from_trial_params(params: dict) -> dict:
    """A search trial's params (its Tune config) -> the flat config it trains with: the search
    seed and replicate replaced by the trial's own seed."""
    flat = {k: v for k, v in params.items() if k not in (SEARCH_SEED_KEY, REPLICATE_KEY)}
    return {**flat, "seed": flat.get("seed", trial_seed(params))}


def config_from_document(doc, where: str) -> dict:
    """The flat config in a parsed --config file. Three shapes are accepted: plain config keys;
    a search's best_config.json (the winner's full config under "config", its seed included); a
    trial's params.json (hyperparameters and the search seed: the trial's own seed is derived
    from them, as the search did)."""
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: expected a mapping of config keys")
    if isinstance(doc.get("config"), dict):  # best_config.json
        doc = doc["config"]
    return from_trial_params(doc) if SEARCH_SEED_KEY in doc else dict(doc)
