"""EmotionClassifier: embedding -> (Bi)LSTM/GRU over packed sequences -> pooling -> linear."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.config import ModelConfig

NUM_CLASSES = 6
RNN_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU}


class EmotionClassifier(nn.Module):
    def __init__(self, vocab_size: int, config: ModelConfig, num_classes: int = NUM_CLASSES):
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
        lengths = lengths.to(out.device)
        mask = (torch.arange(out.shape[1], device=out.device) < lengths[:, None]).unsqueeze(-1)
        if self.pooling == "mean":
            return (out * mask).sum(1) / lengths[:, None].to(out.dtype)
        return out.masked_fill(~mask, float("-inf")).amax(1)
