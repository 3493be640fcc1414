"""The training configuration: typed, validated once, every default written once.

`TrainConfig` = a model family's section (the network: `RNNConfig` in model/network.py,
`CNNConfig` in model/cnn.py, ...) + `OptimConfig` (how it learns) + `RunConfig` (how and where a
run goes: not hyperparameters). `family` says which network; field names are unique across a
family's section and the other two, so a flat `{name: value}` mapping (a search trial's config,
a checkpoint's, a `--config` file) maps onto them by name, and a search space's keys are the
hyperparameters' field names. Families share the names of what they share (embedding_dim,
embedding_dropout, dropout); a key no section of the config's family has is refused, naming
the family that has it.

To add a hyperparameter: a field in its section (default, check), its use in the network or the
loop, and optionally a range in `tuning/space.py`. To add a family: README, Architecture.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields

from model.bag import BagClassifier, BagConfig
from model.cnn import CNNClassifier, CNNConfig
from model.fields import Checked, in_range, one_of, typed
from model.network import RNNClassifier, RNNConfig
from model.precision import PRECISIONS
from model.transformer import TransformerClassifier, TransformerConfig
from plumbing.errors import UsageError

# family name -> (its config section, its network). The first is the default (the harness's
# first model: configs and experiments from before families were added are all `rnn`).
FAMILIES = {
    "rnn": (RNNConfig, RNNClassifier),
    "cnn": (CNNConfig, CNNClassifier),
    "transformer": (TransformerConfig, TransformerClassifier),
    "bag": (BagConfig, BagClassifier),
}
DEFAULT_FAMILY = "rnn"
FAMILY_KEY = "family"
ModelConfig = RNNConfig | CNNConfig | TransformerConfig | BagConfig


@dataclass(frozen=True)
class OptimConfig(Checked):
    """How it learns: AdamW, a warmup + cosine schedule over the run's epochs, the loss, and
    early stopping."""
    lr: float = typed(3e-3, lambda v: 0 < v <= 1, "in (0, 1]")
    weight_decay: float = in_range(1e-4, 0.0, 1.0)
    batch_size: int = in_range(64, 1, 65_536)
    warmup_epochs: float = in_range(0.0, 0.0, 10_000)
    grad_clip: float = in_range(1.0, 0.0, 1e6)         # max gradient norm; 0 turns clipping off
    label_smoothing: float = in_range(0.0, 0.0, 0.5)
    # loss weight of a class = (its train count)^-power: 0 none, 1 balanced
    class_weight_power: float = in_range(0.0, 0.0, 2.0)
    patience: int = in_range(3, 0, 10_000)  # epochs without a better val macro-F1 before stopping; 0 never


@dataclass(frozen=True)
class RunConfig(Checked):
    """How and where a run goes. Results depend on them too (threads change float sums), but
    they are not searched: a search sets them from its flags."""
    seed: int = in_range(0, 0, 2**32 - 1)
    threads: int = in_range(1, 1, 1024)     # torch.set_num_threads
    epochs: int = in_range(10, 1, 10_000)   # at most; the cosine schedule spans all of them
    device: str = typed("cpu", lambda v: v in ("cpu", "cuda") or v.startswith("cuda:"),
                         "cpu or cuda[:N]")
    eval_batch_size: int = in_range(1024, 1, 1_000_000)
    # what the forward passes compute in (model/precision.py): fp32, or bf16/fp16 autocast with
    # float32 weights and optimizer state
    precision: str = one_of("fp32", PRECISIONS)


RUN_KEYS = tuple(f.name for f in fields(RunConfig))
OPTIM_KEYS = tuple(f.name for f in fields(OptimConfig))


def family_keys(family: str) -> tuple[str, ...]:
    """The hyperparameters a family reads: its section's fields, then OptimConfig's."""
    return tuple(f.name for f in fields(FAMILIES[family][0])) + OPTIM_KEYS


# every hyperparameter of every family, once, in a stable order: `family`, the rnn's (the
# harness's first columns), the other families' own, then OptimConfig's
HYPERPARAMETERS = tuple(dict.fromkeys(
    [FAMILY_KEY] + [k for family in FAMILIES for k in family_keys(family) if k not in OPTIM_KEYS]
    + list(OPTIM_KEYS)))
# The keys a search adds to each trial's config: the seed that trial seeds are derived from, and
# (intensification trials only) which extra seed of its configuration the trial is: 1, 2, ...
SEARCH_SEED_KEY = "search_seed"
REPLICATE_KEY = "replicate"


def family_of(flat: dict) -> str:
    """The family a flat config (or a trial's params, a trials.csv row) names; a UsageError
    unless it is one. A config with no family is an rnn's (as every config before families)."""
    family = flat.get(FAMILY_KEY)
    if family is None or isinstance(family, float) and math.isnan(family):  # (NaN: a table's)
        return DEFAULT_FAMILY
    if family not in FAMILIES:
        raise UsageError(f"config key {FAMILY_KEY!r}: must be one of {list(FAMILIES)}, "
                         f"got {family!r}")
    return family


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=RNNConfig)  # the family's section
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def family(self) -> str:
        return next(name for name, (section, _) in FAMILIES.items()
                    if isinstance(self.model, section))

    @classmethod
    def from_flat(cls, flat: dict | None = None) -> TrainConfig:
        """Defaults updated with `flat`; an unknown key, a key of another family than `flat`'s
        or a bad value is a UsageError naming it."""
        flat = dict(flat or {})
        family = family_of(flat)
        flat.pop(FAMILY_KEY, None)
        sections = {"model": FAMILIES[family][0], "optim": OptimConfig, "run": RunConfig}
        known = {f.name: name for name, section in sections.items() for f in fields(section)}
        for key in flat:
            if key in known:
                continue
            owners = [name for name in FAMILIES if key in family_keys(name)]
            if owners:
                raise UsageError(f"config key {key!r} is a hyperparameter of family "
                                 f"{' and '.join(owners)}, not of {family!r} (set "
                                 f"{FAMILY_KEY}: {owners[0]}, or leave it out)")
            raise UsageError(f"unknown config key {key!r} (known for family {family!r}: "
                             f"{', '.join(sorted([FAMILY_KEY, *known]))})")
        by_section = {name: {} for name in sections}
        for key, value in flat.items():
            by_section[known[key]][key] = value
        return cls(**{name: sections[name](**values) for name, values in by_section.items()})

    def to_flat(self) -> dict:
        return {FAMILY_KEY: self.family, **asdict(self.run), **asdict(self.model),
                **asdict(self.optim)}

    def replace(self, **changes) -> TrainConfig:
        return TrainConfig.from_flat({**self.to_flat(), **changes})

    def id(self) -> str:
        """A short hash of the whole config (names `python -m model.train`'s run folders); an
        fp32 config's leaves precision out, so its folder is the one it had before precisions."""
        flat = self.to_flat()
        if flat["precision"] == "fp32":
            del flat["precision"]
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:10]

    def network(self, vocab_size: int):
        """The family's network for this config (untrained)."""
        return FAMILIES[self.family][1](vocab_size, self.model)


DEFAULTS = TrainConfig().to_flat()


def family_defaults(family: str) -> dict:
    return TrainConfig.from_flat({FAMILY_KEY: family}).to_flat()


def seed_keys(family: str) -> tuple[str, ...]:
    """The keys a trial seed hashes: the hyperparameters the family reads. An rnn's are exactly
    those of the harness before families (so its seeds, and numbers, are unchanged); any other
    family's name is hashed in too (a bag and a cnn may share every other value)."""
    keys = family_keys(family)
    return keys if family == DEFAULT_FAMILY else (FAMILY_KEY, *keys)


def trial_seed(params: dict) -> int:
    """A search trial's seed: a hash of the search seed and the trial's hyperparameters only
    (those its family reads: `seed_keys`).

    The same hyperparameters in the same search always train from the same initial weights and
    batch order: retries, resumes and reruns included, whatever order or node the trials ran
    in, and whatever the run settings (RUN_KEYS): the same configuration rerun with more epochs,
    more threads or on a GPU starts from the same seed, so only the setting changed differs.
    Replicate r > 0 (an intensification trial: the same hyperparameters, another seed) hashes r
    in too; replicate 0 is the search's own trial.
    """
    family = family_of(params)
    defaults = family_defaults(family)
    hyper = {k: params.get(k, defaults[k]) for k in seed_keys(family)}
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
