"""Training throughput of the reference BiLSTM against this machine's matmul rate.

One training epoch on the real train split (BiLSTM, embedding 128, hidden 128, batch 64, one
thread), timed without the validation pass, in fp32 and in bf16 (autocast; skipped where torch
cannot run a bf16 LSTM); each against single-thread matmul rates in its own dtype (the best of
three shapes is the denominator), measured in the same run. Prints figures, and last a JSON
line: fp32's sentences_per_s, tokens_per_s, train_gflops, matmul_gflops, fraction_of_matmul,
and each precision's under by_precision. Target: fraction_of_matmul >= 0.60.

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


def matmul_gflops(m: int, k: int, n: int, dtype=torch.float32, seconds: float = 1.0) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9


def in_precision(precision: str, splits, flops: int, tokens: int) -> dict:
    """One precision's epoch (the faster of two: the first warms up) and the same-precision
    single-thread matmul rates (bf16 tensors for bf16: what autocast hands the GEMMs)."""
    cfg = TrainConfig.from_flat({**REFERENCE, "precision": precision})
    runs = [next(iter(train_epochs(cfg, splits))).metrics for _ in range(2)]
    m = max(runs, key=lambda r: r["sentences_per_s"])
    train_s = len(splits.train) / m["sentences_per_s"]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rates = {f"{a}x{b}x{c}": matmul_gflops(a, b, c, dtype) for a, b, c in
             [(64, 128, 512), (64, 256, 512), (1024, 1024, 1024)]}
    train_gflops = flops / train_s / 1e9
    peak = max(rates.values())  # the best rate measured: the strictest denominator
    return {
        "sentences_per_s": round(m["sentences_per_s"], 1),
        "tokens_per_s": round(tokens / train_s, 1),
        "train_s": round(train_s, 3),
        "val_f1": round(m["val_f1"], 4),
        "train_gflops": round(train_gflops, 2),
        "matmul_gflops": round(peak, 2),
        "matmul_gflops_by_shape": {k: round(v, 2) for k, v in rates.items()},
        "fraction_of_matmul": round(train_gflops / peak, 3),
    }


def main() -> int:
    from model.precision import lstm_runs, native_bf16

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
    native, why = native_bf16("cpu")
    by_precision = {"fp32": in_precision("fp32", splits, flops, tokens)}
    # (fp16 is CUDA's; bf16 where torch can run an LSTM in it: native, or emulated on AVX-512)
    by_precision["bf16"] = (in_precision("bf16", splits, flops, tokens) if lstm_runs()
                            else {"skipped": "torch has no bf16 LSTM for this CPU"})
    fp32 = by_precision["fp32"]
    result = {**fp32, "by_precision": by_precision, "native_bf16": native, "bf16_note": why,
              "train_tokens": tokens, "padding_fraction": round(padding / tokens, 5),
              "cpu": cpu_model(), "torch": torch.__version__, "threads": 1}
    lines = [f"one epoch: {len(splits.train)} sentences, {tokens} tokens; {why}"]
    for precision, r in by_precision.items():
        if "skipped" in r:
            lines.append(f"{precision}: skipped ({r['skipped']})")
            continue
        lines.append(f"{precision}: {r['train_s']:.2f} s ({r['sentences_per_s']:.0f} sentences/s), "
                     f"{r['train_gflops']:.1f} GFLOP/s; {precision} matmul (1 thread): "
                     + ", ".join(f"{k} {v:.1f}" for k, v in r["matmul_gflops_by_shape"].items())
                     + f" GFLOP/s; fraction {r['fraction_of_matmul']:.3f}")
    if "skipped" not in by_precision["bf16"]:
        lines.append(f"bf16 epoch / fp32 epoch: "
                     f"{by_precision['bf16']['train_s'] / fp32['train_s']:.2f}")
    return finish("\n".join(lines), result)


if __name__ == "__main__":
    sys.exit(main())
