"""A run's numeric precision: what a forward pass computes in, on a CPU or a CUDA GPU.

- fp32: everything in float32 (the default; what every result before precisions was).
- bf16: `torch.autocast` to bfloat16 for the matmuls (the LSTM's gates, the linears); the
  weights, their gradients and the optimizer's state stay float32 ("mixed precision"), so a
  checkpoint is the same kind of file in every precision and loads in any other.
- fp16: float16 autocast with a gradient scaler (float16's range is too small for raw
  gradients); CUDA only.

`resolve` turns what a user asked for (`auto` too) into one of these for a device, refusing in
one line what the device cannot do. Only CPUs with bf16 instructions (AMX-BF16, AVX512_BF16)
compute bf16 natively; elsewhere torch emulates it, slower than fp32, so it is refused unless
asked for by name (`bf16-emulated`). `auto` times a few training steps in fp32 and bf16 and
picks bf16 only where it is native and pays.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "fp16")          # what a run computes in (RunConfig.precision)
CHOICES = ("auto", "fp32", "bf16", "bf16-emulated", "fp16")  # what a --precision flag takes
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo's names
UNCHECKED = "no CUDA device on this machine to check"
PAYS = 0.85  # auto takes bf16 when its training step takes at most this fraction of fp32's


def autocast(precision: str, device: torch.device | str):
    """The context a forward pass (and its loss) runs in: autocast, or nothing for fp32."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """fp16's loss scaling; for fp32 and bf16 a disabled scaler, which passes every call through
    (bf16 has float32's range: its gradients need no scaling)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def cpu_bf16_flags() -> list[str]:
    """The CPU's native-bf16 instruction sets, as /proc/cpuinfo names them (torch's own checks
    where there is no /proc/cpuinfo)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        found = {"amx_bf16": torch.cpu._is_amx_tile_supported(),
                 "avx512_bf16": torch.cpu._is_avx512_bf16_supported()}
        return [name for name in NATIVE_CPU_FLAGS if found[name]]
    return [name for name in NATIVE_CPU_FLAGS if name in flags]


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """(whether the device computes bf16 natively, a few words saying why)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():  # (a cluster's driver: its trials' nodes have one)
            return False, UNCHECKED
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device)
        return ok, f"{name} {'computes' if ok else 'has no native'} bf16"
    flags = cpu_bf16_flags()
    if flags:
        return True, f"this CPU has {'/'.join(flags)}"
    return False, f"this CPU has no native bf16 (neither {' nor '.join(NATIVE_CPU_FLAGS)})"


@dataclass(frozen=True)
class Resolved:
    precision: str  # one of PRECISIONS
    note: str       # what was asked and why this: printed once, stored with the experiment


def resolve(asked: str, device: torch.device | str = "cpu", threads: int = 1,
            flag: str = "--precision") -> Resolved:
    """`asked` (one of CHOICES) as a precision the device can run; a UsageError naming `flag`
    for one it cannot."""
    from plumbing.errors import UsageError

    device = torch.device(device)
    if asked not in CHOICES:
        raise UsageError(f"{flag} {asked}: must be one of {', '.join(CHOICES)}")
    if asked == "fp32":
        return Resolved("fp32", "fp32")
    if asked == "fp16":
        if device.type != "cuda":
            raise UsageError(f"{flag} fp16: needs a CUDA device (float16 training needs a "
                             f"gradient scaler, which this harness runs on CUDA only)")
        return Resolved("fp16", "fp16")
    native, why = native_bf16(device)
    if asked == "bf16" and (native or why == UNCHECKED):
        return Resolved("bf16", f"bf16 ({why})")
    if asked == "bf16-emulated" and device.type == "cuda":
        return Resolved("bf16", f"bf16 ({why})")
    if asked == "bf16-emulated":
        lstm = "" if native or lstm_runs() else (
            "; torch has no bf16 LSTM for this CPU: a trial of an LSTM will fail")
        return Resolved("bf16", f"bf16 ({why}: emulated, slower than fp32{lstm})")
    if asked == "bf16":
        raise UsageError(f"{flag} bf16: {why}, so bf16 would be emulated, slower than fp32; "
                         f"{flag} bf16-emulated runs it anyway")
    if not native:  # auto
        return Resolved("fp32", f"auto: fp32 ({why})")
    ratio = step_time_ratio(device, threads)
    pick = "bf16" if ratio <= PAYS else "fp32"
    return Resolved(pick, f"auto: {pick} ({why}; a training step in bf16 took {ratio:.2f} x "
                          f"fp32's, bf16 when at most {PAYS})")


def lstm_runs(precision: str = "bf16") -> bool:
    """Whether torch can run an LSTM under CPU autocast in `precision` here (oneDNN has no bf16
    LSTM for CPUs without AVX-512, and none in fp16 on some with it: it fails to build the
    primitive)."""
    with torch.random.fork_rng(devices=[]):  # (its weights are drawn: a run's draws are not)
        lstm = torch.nn.LSTM(4, 4, batch_first=True)
        try:
            with autocast(precision, "cpu"):
                lstm(torch.zeros(1, 2, 4))[0].sum().backward()
        except RuntimeError:
            return False
    return True


def step_time_ratio(device: torch.device, threads: int, steps: int = 12) -> float:
    """bf16's time for a training step of the default network on a batch of 64 x 20 tokens,
    over fp32's (the median of `steps` steps each, after 3 untimed), on `device` with
    `threads` threads. Seeded from a fork of torch's RNG: nothing a run draws changes."""
    from model.config import TrainConfig

    times = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for precision in ("fp32", "bf16"):
                times[precision] = _median_step(TrainConfig().network(20_000).to(device),
                                                precision, device, steps)
        finally:
            torch.set_num_threads(previous)
            if device.type == "cuda":  # (the driver keeps no GPU memory for the search)
                torch.cuda.empty_cache()
    return times["bf16"] / times["fp32"]


def _median_step(model, precision: str, device: torch.device, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    tokens = torch.randint(1, 20_000, (64, 20), device=device)
    lengths = torch.full((64,), 20)
    labels = torch.randint(0, 6, (64,), device=device)
    times = []
    for step in range(steps + 3):
        start = time.perf_counter()
        with autocast(precision, device):
            loss = torch.nn.functional.cross_entropy(model(tokens, lengths), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def on_this_cpu(trained: str, asked: str | None = None, flag: str = "--precision") -> Resolved:
    """The precision a model trained in `trained` runs in on this machine's CPU (evaluation,
    prediction, serving, latency): `asked` if given (resolved as `resolve` does), else the one it
    was trained in where this CPU computes it natively, fp32 otherwise (fp16 is CUDA's)."""
    if asked is not None:
        return resolve(asked, "cpu", flag=flag)
    if trained == "fp32":
        return Resolved("fp32", "fp32 (the model's)")
    native, why = native_bf16("cpu")
    if trained == "bf16" and native:
        return Resolved("bf16", f"bf16 (the model's; {why})")
    reason = why if trained == "bf16" else "fp16 runs on CUDA only here"
    return Resolved("fp32", f"fp32 (the model trained in {trained}; {reason})")
