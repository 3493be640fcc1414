"""The `bag` family (fastText-style): the mean and/or max of the word embeddings into a linear
layer. No word order: the floor every other family must beat, and the fastest."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.fields import Checked, in_range, one_of
from model.network import NUM_CLASSES, padding_mask, pool

BAG_POOLINGS = ("mean", "max", "mean_max")


@dataclass(frozen=True)
class BagConfig(Checked):
    """embedding -> mean / max / both over the words -> dropout -> linear."""
    embedding_dim: int = in_range(128, 1, 4096)
    embedding_dropout: float = in_range(0.1, 0.0, 0.95)
    bag_pooling: str = one_of("mean_max", BAG_POOLINGS)
    dropout: float = in_range(0.1, 0.0, 0.95)    # before the output layer


class BagClassifier(nn.Module):
    def __init__(self, vocab_size: int, config: BagConfig, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.pooling = config.bag_pooling
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.dropout = nn.Dropout(config.dropout)
        width = config.embedding_dim * (2 if self.pooling == "mean_max" else 1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embedding_dropout(self.embedding(tokens))
        mask = padding_mask(lengths, tokens.shape[1])
        hows = ("mean", "max") if self.pooling == "mean_max" else (self.pooling,)
        return self.head(self.dropout(torch.cat([pool(x, mask, h) for h in hows], dim=1)))
