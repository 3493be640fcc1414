"""The `rnn` family: embedding -> (Bi)LSTM/GRU over packed sequences -> pooling -> linear.

The harness's first model and its default. A family is a module like this one: a typed config
section (`RNNConfig`) and a network taking (tokens, lengths) to logits; model/config.py's
FAMILIES names them (the README's Architecture section lists the steps)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.fields import Checked, flag, in_range, one_of

NUM_CLASSES = 6
RNN_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU}
POOLINGS = ("last", "mean", "max")


@dataclass(frozen=True)
class RNNConfig(Checked):
    """embedding -> (Bi)LSTM/GRU -> pooling -> dropout -> linear."""
    rnn: str = one_of("lstm", tuple(RNN_LAYERS))
    embedding_dim: int = in_range(128, 1, 4096)
    hidden_size: int = in_range(128, 1, 4096)
    num_layers: int = in_range(1, 1, 8)
    bidirectional: bool = flag(True)
    pooling: str = one_of("max", POOLINGS)
    embedding_dropout: float = in_range(0.1, 0.0, 0.95)
    rnn_dropout: float = in_range(0.0, 0.0, 0.95)  # between stacked layers (needs num_layers > 1)
    dropout: float = in_range(0.3, 0.0, 0.95)      # before the output layer


class RNNClassifier(nn.Module):
    def __init__(self, vocab_size: int, config: RNNConfig, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.pooling = config.pooling
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.rnn = RNN_LAYERS[config.rnn](
            config.embedding_dim, config.hidden_size, num_layers=config.num_layers,
            batch_first=True, bidirectional=config.bidirectional,
            dropout=config.rnn_dropout if config.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size * (2 if config.bidirectional else 1), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, time) ids padded with 0; lengths: (batch,) on the CPU. Returns logits."""
        x = self.embedding_dropout(self.embedding(tokens))
        lengths = lengths.clamp(min=1)
        # A length-bucketed batch is often all one length: then there is no padding to skip and
        # packing would only add copies. Otherwise pack, so padding never enters the recurrence.
        uniform = bool(lengths.min() == tokens.shape[1])
        if uniform:
            out, hidden = self.rnn(x)
        else:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, hidden = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return self.head(self.dropout(self._pool(out, hidden, lengths, uniform)))

    def _pool(self, out, hidden, lengths, uniform: bool) -> torch.Tensor:
        if self.pooling == "last":
            h_n = hidden[0] if isinstance(hidden, tuple) else hidden  # LSTM gives (h, c)
            if self.rnn.bidirectional:  # final forward state and the backward state at t=0
                return torch.cat([h_n[-2], h_n[-1]], dim=1)
            return h_n[-1]
        if uniform:
            return out.mean(1) if self.pooling == "mean" else out.amax(1)
        return pool(out, padding_mask(lengths, out.shape[1]), self.pooling)


def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) True where a position holds a token (lengths clamped to >= 1)."""
    return torch.arange(width) < lengths.clamp(min=1)[:, None]


def pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Mean or max of x (batch, time, dim) over the positions `mask` (batch, time) keeps."""
    mask = mask.to(x.device).unsqueeze(-1)
    if how == "mean":
        return (x * mask).sum(1) / mask.sum(1).to(x.dtype)
    return x.masked_fill(~mask, float("-inf")).amax(1)
