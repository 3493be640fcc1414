"""How big and how fast a trained network is on a CPU: its parameter count, the time to
classify one sentence (batch 1, median, one thread) and sentences per second at batch 256 (one
thread), over a fixed set of texts (the first rows of a split: the same for every trial).

Times are of the network's forward pass on token ids: tokenising is the same for every family.
One thread, so a figure does not depend on how many cores a machine has, or on what else runs
on the others (a search runs a trial per core)."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from model.data import EncodedSplit
from model.precision import autocast

SENTENCES = 128       # batch-1 passes timed (after WARMUP untimed ones)
WARMUP = 8
BATCH = 256
BATCH_ROWS = 1024     # rows timed at batch BATCH
FIGURES = ("params", "latency_ms", "sentences_per_s_b256")  # what `measure` returns


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def measure(model: nn.Module, split: EncodedSplit, precision: str = "fp32") -> dict:
    """{"params", "latency_ms", "sentences_per_s_b256"} of `model` in `precision` (left as it
    was found: its mode, torch's thread count and RNG untouched)."""
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(1)
    try:
        n = min(len(split), SENTENCES + WARMUP)
        times = []
        for row in range(n):
            tokens, lengths, _ = split.batch(torch.tensor([row]))
            start = time.perf_counter()
            # (a block a pass: autocast keeps its low-precision copies of the weights until
            # the block ends, and a served model converts them at each call)
            with autocast(precision, "cpu"):
                model(tokens, lengths)
            if row >= min(WARMUP, n - 1):
                times.append(time.perf_counter() - start)
        rows = torch.arange(min(len(split), BATCH_ROWS))
        start = time.perf_counter()
        for chunk in rows.split(BATCH):
            with autocast(precision, "cpu"):
                model(*split.batch(chunk)[:2])
        per_s = len(rows) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return {"params": parameter_count(model), "latency_ms": statistics.median(times) * 1e3,
            "sentences_per_s_b256": per_s}
