"""Training throughput of the reference BiLSTM against this machine's matmul rate.

One training epoch on the real train split (BiLSTM, embedding 128, hidden 128, batch 64, one
thread), timed without the validation pass; then, in the same run, single-thread float32 matmul
rates (the best of three shapes is the denominator). Prints figures, and last a JSON line with sentences_per_s, tokens_per_s, train_gflops,
matmul_gflops, fraction_of_matmul. Target: fraction_of_matmul >= 0.60.

FLOPs counted: per token and direction, the LSTM's four gates cost 2*4H*(E+H) forward (input and
recurrent products); backward costs twice the forward; the linear head adds 2*(2H)*6 per
sentence, times 3. Element-wise gate math, the embedding and the optimizer are not counted
(they are work, but not matmul work: time spent there lowers the fraction).
"""
from __future__ import annotations

import sys
import time

import torch
from common import cpu_model, finish  # benchmarks/common.py (scripts run from this folder)

from model.config import TrainConfig
from model.data import bucketed_batches, load_processed
from model.loop import train_epochs
from plumbing.paths import paths

REFERENCE = {"rnn": "lstm", "bidirectional": True, "num_layers": 1, "embedding_dim": 128,
             "hidden_size": 128, "batch_size": 64, "threads": 1, "epochs": 1, "pooling": "max"}


def matmul_gflops(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9


def main() -> int:
    torch.set_num_threads(1)
    splits = load_processed(paths())
    cfg = TrainConfig.from_flat(REFERENCE)
    tokens = int(splits.train.lengths.sum())
    E, H = cfg.model.embedding_dim, cfg.model.hidden_size
    dirs = 2 if cfg.model.bidirectional else 1
    flops = 3 * (tokens * dirs * 2 * 4 * H * (E + H) + len(splits.train) * 2 * dirs * H * 6)

    # padding the bucketed batches of epoch 1 carry (the same generator seed as the loop uses)
    gen = torch.Generator().manual_seed(cfg.run.seed * 100_003 + 1)
    lengths = splits.train.lengths
    padding = sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum())
                  for b in bucketed_batches(lengths, cfg.optim.batch_size, gen))
    runs = []
    for _ in range(2):  # the first epoch also warms up allocators and kernels
        epoch = next(iter(train_epochs(cfg, splits)))
        runs.append(epoch.metrics)
    m = max(runs, key=lambda r: r["sentences_per_s"])
    train_s = len(splits.train) / m["sentences_per_s"]
    rates = {f"{a}x{b}x{c}": matmul_gflops(a, b, c) for a, b, c in
             [(64, 128, 512), (64, 256, 512), (1024, 1024, 1024)]}
    train_gflops = flops / train_s / 1e9
    peak = max(rates.values())  # the best rate measured: the strictest denominator
    result = {
        "sentences_per_s": round(m["sentences_per_s"], 1),
        "tokens_per_s": round(tokens / train_s, 1),
        "train_s": round(train_s, 3),
        "train_gflops": round(train_gflops, 2),
        "matmul_gflops": round(peak, 2),
        "matmul_gflops_by_shape": {k: round(v, 2) for k, v in rates.items()},
        "fraction_of_matmul": round(train_gflops / peak, 3),
        "train_tokens": tokens,
        "padding_fraction": round(padding / tokens, 5),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": 1,
    }
    return finish(
        f"one epoch: {len(splits.train)} sentences, {tokens} tokens in {train_s:.2f} s "
        f"({result['sentences_per_s']:.0f} sentences/s, {result['tokens_per_s']:.0f} tokens/s)\n"
        f"train: {train_gflops:.1f} GFLOP/s; matmul (1 thread): "
        + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) + " GFLOP/s\n"
        f"fraction of the best single-thread matmul rate: {result['fraction_of_matmul']:.3f} "
        f"(target >= 0.60)", result)


if __name__ == "__main__":
    sys.exit(main())
