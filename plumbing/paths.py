"""Every path the project reads or writes, in one place.

The root is `$EMOTION_ROOT` when set (tests point it at a temporary folder), else the checkout
this package lives in (when installed editable), else the current directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def project_root() -> Path:
    env = os.environ.get("EMOTION_ROOT")
    if env:
        return Path(env).resolve()
    if (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT
    return Path.cwd().resolve()


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def data_raw(self) -> Path:  # the raw splits as read once from the source (immutable)
        return self.root / "data" / "raw"

    @property
    def data_processed(self) -> Path:  # derived: parquet splits + manifest
        return self.root / "data" / "processed"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def ray_results(self) -> Path:
        return self.root / "ray_results"

    @property
    def vocab(self) -> Path:
        return self.artifacts / "vocab.json"

    @property
    def manifest(self) -> Path:
        return self.data_processed / "manifest.json"

    def processed_split(self, split: str) -> Path:
        return self.data_processed / f"{split}.parquet"

    def raw_split(self, split: str) -> Path:
        return self.data_raw / f"{split}.parquet"

    @property
    def train_runs(self) -> Path:
        return self.artifacts / "train"

    @property
    def search_reports(self) -> Path:
        return self.artifacts / "search"

    @property
    def best(self) -> Path:
        return self.artifacts / "best"


def paths(root: Path | str | None = None) -> Paths:
    return Paths(Path(root).resolve() if root is not None else project_root())
