"""Processed parquet -> tensors (once), and the seeded length-bucketed batches."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from plumbing.errors import DataError
from plumbing.files import sha256_file
from plumbing.paths import Paths


@dataclass
class EncodedSplit:
    tokens: torch.Tensor   # (rows, max_len) int64, padded with 0
    lengths: torch.Tensor  # (rows,) int64
    labels: torch.Tensor   # (rows,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> EncodedSplit:
        n = min(n, len(self))
        width = max(1, int(self.lengths[:n].max())) if n else 1
        return EncodedSplit(self.tokens[:n, :width], self.lengths[:n], self.labels[:n])

    def batch(self, idx: torch.Tensor):
        lengths = self.lengths[idx]
        width = max(1, int(lengths.max()))
        return self.tokens[idx, :width], lengths, self.labels[idx]

    @classmethod
    def from_ids(cls, ids: list[list[int]], labels) -> EncodedSplit:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        tokens = np.zeros((len(ids), max(1, int(lengths.max(initial=1)))), dtype=np.int64)
        for row, x in enumerate(ids):
            tokens[row, : len(x)] = x
        return cls(torch.from_numpy(tokens), torch.from_numpy(lengths),
                   torch.from_numpy(np.array(labels, dtype=np.int64)))


@dataclass
class Splits:
    """What training needs, small enough to ship once through Ray's object store."""
    train: EncodedSplit
    val: EncodedSplit
    vocab_size: int
    vocab_sha256: str
    test: EncodedSplit | None = None

    def head(self, n_train: int, n_val: int) -> Splits:
        return Splits(self.train.head(n_train), self.val.head(n_val), self.vocab_size,
                      self.vocab_sha256, self.test)


def read_split(path) -> EncodedSplit:
    table = pq.read_table(path, columns=["input_ids", "label"])
    return EncodedSplit.from_ids(table.column("input_ids").to_pylist(),
                                 table.column("label").to_numpy())


def load_processed(p: Paths, *, with_test: bool = False) -> Splits:
    """Train and validation (the test split only when asked: the search never reads it)."""
    needed = [p.processed_split("train"), p.processed_split("val"), p.vocab]
    if with_test:
        needed.append(p.processed_split("test"))
    missing = [str(f) for f in needed if not f.is_file()]
    if missing:
        raise DataError(f"no processed data ({', '.join(missing)} missing): run "
                        f"`python -m dataprep --source DIR` (or `make data`) first")
    vocab_size = json.loads(p.vocab.read_text())["size"]
    return Splits(read_split(needed[0]), read_split(needed[1]), vocab_size, sha256_file(p.vocab),
                  read_split(p.processed_split("test")) if with_test else None)


def _by_length(order: torch.Tensor, lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Cut rows already sorted by length into batches that never mix two lengths."""
    _, counts = torch.unique_consecutive(lengths[order], return_counts=True)
    return [chunk for group in torch.split(order, counts.tolist())
            for chunk in torch.split(group, batch_size)]


def bucketed_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Batches of one length each, with seeded random membership, in a shuffled order.

    Every batch holds sentences of a single length, so there is no padding and the recurrence
    runs on a plain dense tensor (no packing); the last batch of each length may be smaller.
    """
    n = len(lengths)
    tie_break = torch.randperm(n, generator=generator)
    order = torch.argsort(lengths * n + tie_break)
    chunks = _by_length(order, lengths, batch_size)
    return [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]


def count_batches(lengths: torch.Tensor, batch_size: int) -> int:
    """How many batches `bucketed_batches` makes (the same every epoch)."""
    _, counts = torch.unique(lengths, return_counts=True)
    return int(((counts + batch_size - 1) // batch_size).sum())


def eval_batches(lengths: torch.Tensor, batch_size: int):
    """Fixed order for evaluation: by length, one length per batch, no shuffling."""
    return _by_length(torch.argsort(lengths, stable=True), lengths, batch_size)
