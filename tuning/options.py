"""A search's options: every setting it was started with (the space and points themselves, the
warm-start trials, the objectives, its ids), one frozen object as `TrainConfig` is for a trial.

Written once when the experiment starts (and again, whole, when `--resume --samples` extends
it), atomically, to `harness/search_options.json` beside the experiment, where Tune never
writes: Tune copies the experiment's top-level `*.json`/`*.pkl` into its staging folder on a
resume and uploads them again, in place, at every save (`experiment_state.py`), which a kill -9
can cut. The file holds the options and the sha256 of their canonical JSON, so a cut or edited
file is told from a whole one by its content. A copy goes to the local report folder, to read.
Everyone reads them back through `read_options`, from beside the experiment: the search,
evaluate_best, the report, retention and tracking.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from plumbing.errors import DataError
from plumbing.files import write_text
from tuning.storage import Storage

OPTIONS_FILE = "search_options.json"
HARNESS_DIR = "harness"  # our files beside the experiment: out of Tune's top-level copies
# what an options file from before a key existed meant by its absence
LEGACY = {"keep_checkpoints": "all", "extendable": False, "sampler": "tpe", "objectives": ["f1"],
          "warm_start": []}


@dataclass(frozen=True)
class SearchOptions:
    name: str
    samples: int = 50
    max_epochs: int = 6
    concurrency: int | None = None  # None until Ray is up (what the cluster holds)
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    precision: str = "fp32"  # what trials compute in (model/precision.py), as resolved
    precision_note: str = "fp32"  # what was asked for, and why this (auto's measurement)
    seed: int = 0
    time_budget_s: float | None = None
    grace_period: int = 1
    reduction_factor: float = 3.0
    sampler: str = "tpe"
    objectives: tuple[str, ...] = ("f1",)
    # the ranges themselves (an experiment from before they were stored: its --space path, or
    # None for SPACE; tuning.space.stored_space reads each)
    space: dict | str | None = None
    points: list | None = None  # None: the space's known-good points
    warm_start: list = field(default_factory=list)  # the earlier trials themselves
    optuna_storage: str | None = None
    mlflow: str | None = None
    subset: int | None = None
    intensify_top: int = 0
    intensify_seeds: int = 2
    keep_checkpoints: str = "leaders"
    verbose: bool = False
    extendable: bool = True  # its searcher can take more samples (tuner.Extendable)
    search_id: str | None = None  # tells its MLflow runs and study trials from a namesake's

    @property
    def stage_trials(self) -> int:
        """How many intensification trials the options ask for (0: the stage is off)."""
        return self.intensify_top * self.intensify_seeds

    def replace(self, **changes) -> SearchOptions:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        doc["objectives"] = list(self.objectives)
        return doc

    @classmethod
    def from_json(cls, doc: dict, where: str = OPTIONS_FILE) -> SearchOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {**LEGACY, **{k: v for k, v in doc.items() if k in known}}
        values["objectives"] = tuple(values["objectives"] or ["f1"])
        values["warm_start"] = values["warm_start"] or []  # (False or None before)
        try:
            return cls(**values)
        except TypeError as e:
            raise DataError(f"{where}: not a search's options ({e})") from None


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _envelope(options: SearchOptions) -> dict:
    doc = options.to_json()
    return {"sha256": hashlib.sha256(_canonical(doc)).hexdigest(), "options": doc}


def _opened(doc, where: str) -> SearchOptions | None:
    """The options an envelope holds, or None when its hash says it was cut or changed."""
    if not isinstance(doc, dict) or "options" not in doc:
        return None
    if hashlib.sha256(_canonical(doc["options"])).hexdigest() != doc.get("sha256"):
        return None
    return SearchOptions.from_json(doc["options"], where)


def write_options(options: SearchOptions, storage: Storage, report_dir: Path) -> None:
    """Beside the experiment (whole or not at all: a local file is renamed into place, an
    object store's upload is atomic), then the local report's copy."""
    envelope = _envelope(options)
    storage.write_json(envelope, options.name, HARNESS_DIR, OPTIONS_FILE)
    write_text(report_dir / OPTIONS_FILE, json.dumps(envelope, indent=2, sort_keys=True) + "\n")


def read_options(storage: Storage, name: str) -> SearchOptions:
    """The options of experiment `name`, from the copy beside it (the local report's copy is
    for reading: two experiments of one name in two storages share that folder); for an
    experiment from before harness/, its plain top-level search_options.json. A DataError
    naming the file when neither holds whole options."""
    where = storage.uri(name, HARNESS_DIR, OPTIONS_FILE)
    try:
        options = _opened(storage.read_json(name, HARNESS_DIR, OPTIONS_FILE), where)
        if options is not None:
            return options
        raise DataError(f"{where} is cut short or was changed (its sha256 does not match): "
                        f"the experiment's settings are lost")
    except (OSError, ValueError):
        pass
    try:  # an experiment from before harness/: its options at the top level, unhashed
        legacy = storage.read_json(name, OPTIONS_FILE)
        if isinstance(legacy, dict) and "options" not in legacy:
            return SearchOptions.from_json(legacy, storage.uri(name, OPTIONS_FILE))
    except (OSError, ValueError):
        pass
    raise DataError(f"{where} is missing or unreadable: the experiment's settings are lost")


def in_harness(storage: Storage, name: str) -> bool:
    """Whether the experiment's options are in harness/ (not only in a file from before)."""
    import pyarrow.fs as pafs

    info = storage.fs.get_file_info(storage.path(name, HARNESS_DIR, OPTIONS_FILE))
    return info.type == pafs.FileType.File
