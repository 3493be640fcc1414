"""The `transformer` family: a small encoder trained from scratch (no pretrained weights:
nothing here can download them). Embedding + positions -> pre-norm encoder layers with a
padding mask -> mean / max / first-token pooling -> dropout -> linear."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from model.fields import Checked, in_range, one_of
from model.network import NUM_CLASSES, padding_mask, pool
from plumbing.errors import UsageError

POSITIONS = ("learned", "sinusoidal")
TRANSFORMER_POOLINGS = ("mean", "max", "first")
MAX_POSITIONS = 512  # learned positions: longer texts keep their first 512 tokens


@dataclass(frozen=True)
class TransformerConfig(Checked):
    """embedding (the model width) + positions -> transformer_layers encoder layers ->
    pooling -> dropout -> linear. `first` pools a learned token put before each text."""
    embedding_dim: int = in_range(128, 1, 4096)
    embedding_dropout: float = in_range(0.1, 0.0, 0.95)
    transformer_layers: int = in_range(2, 1, 12)
    transformer_heads: int = in_range(4, 1, 64)      # must divide embedding_dim
    transformer_ff: int = in_range(256, 1, 16384)    # feed-forward width of each layer
    transformer_dropout: float = in_range(0.1, 0.0, 0.95)  # inside the layers
    transformer_positions: str = one_of("learned", POSITIONS)
    transformer_pooling: str = one_of("mean", TRANSFORMER_POOLINGS)
    dropout: float = in_range(0.1, 0.0, 0.95)        # before the output layer

    def check(self) -> None:
        if self.embedding_dim % self.transformer_heads:
            raise UsageError(f"config key 'transformer_heads': must divide embedding_dim "
                             f"({self.embedding_dim}), got {self.transformer_heads}")


def sinusoid(positions: int, dim: int) -> torch.Tensor:
    """The fixed positional table of Vaswani et al. (2017), (positions, dim)."""
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    table = torch.zeros(positions, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class TransformerClassifier(nn.Module):
    def __init__(self, vocab_size: int, config: TransformerConfig, num_classes: int = NUM_CLASSES):
        super().__init__()
        dim = config.embedding_dim
        self.pooling = config.transformer_pooling
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        if config.transformer_positions == "learned":
            self.positions = nn.Embedding(MAX_POSITIONS + 1, dim)
        else:
            self.register_buffer("sinusoid", sinusoid(MAX_POSITIONS + 1, dim), persistent=False)
            self.positions = None
        self.first = nn.Parameter(torch.zeros(dim)) if self.pooling == "first" else None
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        layer = nn.TransformerEncoderLayer(dim, config.transformer_heads, config.transformer_ff,
                                           dropout=config.transformer_dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.transformer_layers,
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)  # (pre-norm layers leave the last output unnormalised)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tokens, lengths = tokens[:, :MAX_POSITIONS], lengths.clamp(1, MAX_POSITIONS)
        x = self.embedding(tokens)
        if self.first is not None:
            x = torch.cat([self.first.expand(len(x), 1, -1), x], dim=1)
            lengths = lengths + 1
        width = x.shape[1]
        table = (self.positions.weight if self.positions is not None else self.sinusoid)
        x = self.embedding_dropout(x + table[:width])
        mask = padding_mask(lengths, width).to(x.device)
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        if self.pooling == "first":
            pooled = x[:, 0]
        else:
            pooled = pool(x, mask, self.pooling)
        return self.head(self.dropout(pooled))
