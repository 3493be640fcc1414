"""The `cnn` family (Kim, 2014): parallel 1-D convolutions of several widths over the
embeddings, max-over-time pooling, dropout, linear."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.fields import Checked, in_range, typed
from model.network import NUM_CLASSES, padding_mask, pool


def parse_widths(text: str) -> tuple[int, ...]:
    """"3,4,5" -> (3, 4, 5). A string, so the set of widths is one categorical value to a
    searcher, a CSV cell and an MLflow param alike."""
    return tuple(int(w) for w in text.split(","))


def _widths_ok(text: str) -> bool:
    try:
        widths = parse_widths(text)
    except ValueError:
        return False
    return 0 < len(widths) <= 8 and all(1 <= w <= 16 for w in widths) and len(set(widths)) == len(widths)


@dataclass(frozen=True)
class CNNConfig(Checked):
    """embedding -> convolutions of each width (cnn_filters each, ReLU) -> max over time ->
    dropout -> linear."""
    embedding_dim: int = in_range(128, 1, 4096)
    embedding_dropout: float = in_range(0.1, 0.0, 0.95)
    cnn_widths: str = typed("3,4,5", _widths_ok, "distinct widths in [1, 16], comma-separated "
                                                 "(e.g. \"3,4,5\")")
    cnn_filters: int = in_range(100, 1, 4096)    # feature maps per width
    dropout: float = in_range(0.5, 0.0, 0.95)    # before the output layer


class CNNClassifier(nn.Module):
    def __init__(self, vocab_size: int, config: CNNConfig, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.widths = parse_widths(config.cnn_widths)
        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=0)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.convs = nn.ModuleList(nn.Conv1d(config.embedding_dim, config.cnn_filters, w)
                                   for w in self.widths)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.cnn_filters * len(self.widths), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, time) ids padded with 0; lengths: (batch,). Returns logits."""
        lengths = lengths.clamp(min=1)
        # right-pad to the widest filter: a sentence shorter than a filter still gets one window
        short = max(self.widths) - tokens.shape[1]
        if short > 0:
            tokens = nn.functional.pad(tokens, (0, short))
        x = self.embedding_dropout(self.embedding(tokens)).transpose(1, 2)  # (batch, dim, time)
        pooled = []
        for width, conv in zip(self.widths, self.convs, strict=True):
            out = torch.relu(conv(x)).transpose(1, 2)  # (batch, time - width + 1, filters)
            # windows that start inside the sentence (one at least): a batch's padding, which
            # depends on its other rows, never decides a row's maximum
            valid = padding_mask((lengths - width + 1).clamp(min=1), out.shape[1])
            pooled.append(pool(out, valid, "max"))
        return self.head(self.dropout(torch.cat(pooled, dim=1)))
