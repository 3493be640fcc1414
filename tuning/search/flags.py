"""What `python -m tuning.search` accepts: its flags, their defaults and their checks (a bad
flag is one line and exit 2, before anything is read or written)."""
from __future__ import annotations

import re

from model.precision import CHOICES
from plumbing.cli import (
    ArgumentParser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    refuse_secrets,
)
from plumbing.errors import UsageError

PROG = "python -m tuning.search"
DESCRIPTION = "OptunaSearch (TPE) + ASHA over the LSTM's hyperparameters"
KEEP = ("leaders", "all")  # --keep-checkpoints (tuning/search/retention.py)
# Intensification is off by default: over three default searches it never raised the worst
# winner's test figures and cost 4-5 minutes on two cores (docs/measured.md). `--intensify-top
# 5` turns it on with the 2 further seeds each that were measured.
INTENSIFY_TOP, INTENSIFY_SEEDS = 0, 2
SAMPLERS = ("tpe", "random")
GRACE_PERIOD = 1  # ASHA: epochs every trial gets before it can be stopped (benchmarks/race.py)


def parser() -> ArgumentParser:
    ap = ArgumentParser(prog=PROG, description=DESCRIPTION)
    _search_flags(ap)
    _run_flags(ap)
    return ap


def _search_flags(ap) -> None:
    """What is searched, and how long."""
    ap.add_argument("--samples", type=positive_int, default=None,
                    help="trials to run (default 50); with --resume of an ended search, more "
                         "than it has extends it with new trials")
    ap.add_argument("--max-epochs", type=positive_int, default=None,
                    help="epochs per trial at most, and the length of each trial's cosine LR "
                         "schedule; ASHA's max_t (default 6)")
    ap.add_argument("--concurrency", type=positive_int, default=None,
                    help="trials at once (default: the Ray cluster's CPUs / --cpus-per-trial, "
                         "and GPUs / --gpus-per-trial when given)")
    ap.add_argument("--cpus-per-trial", type=positive_int, default=1,
                    help="CPUs (and torch threads) per trial (default 1)")
    ap.add_argument("--gpus-per-trial", type=non_negative_float, default=0.0,
                    help="GPUs per trial, fractions allowed (default 0)")
    ap.add_argument("--seed", type=non_negative_int, default=0, help="search seed (default 0)")
    ap.add_argument("--precision", choices=CHOICES, default=None,
                    help="what trials compute in: fp32 (default), bf16 (autocast, float32 "
                         "weights; CPUs with AMX-BF16/AVX512_BF16, or a GPU), fp16 (CUDA, with "
                         "a gradient scaler), auto (bf16 where native and measured faster, else "
                         "fp32), bf16-emulated (bf16 on a CPU without it: slower)")

    ap.add_argument("--intensify-top", type=non_negative_int, default=INTENSIFY_TOP, metavar="K",
                    help="after the search, run the K best configurations again with more "
                         "seeds; the best mean val macro-F1 wins (default 0: off, the best "
                         "single trial wins; e.g. 5)")
    ap.add_argument("--intensify-seeds", type=non_negative_int, default=INTENSIFY_SEEDS,
                    metavar="S", help=f"further seeds per configuration (default {INTENSIFY_SEEDS}; "
                                      "0: off)")
    ap.add_argument("--time-budget-s", type=positive_float, default=None,
                    help="stop starting new trials after this many seconds (both phases)")
    ap.add_argument("--grace-period", type=positive_int, default=None,
                    help=f"ASHA: epochs every trial gets before it can be stopped (default {GRACE_PERIOD})")
    ap.add_argument("--reduction-factor", type=float, default=3.0,
                    help="ASHA: keep 1/this of the trials at each rung (default 3)")
    ap.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                    help="how Optuna suggests configurations: tpe (default) or random (the "
                         "baseline TPE must beat; benchmarks/race.py)")
    ap.add_argument("--objectives", default=None, metavar="LIST",
                    help="what the searcher optimises: f1 (default: val macro-F1) or f1,latency "
                         "(Optuna's multi-objective TPE: the F1/latency Pareto set; ASHA still "
                         "cuts on val macro-F1 alone)")
    ap.add_argument("--warm-start", metavar="NAME|DIR|URI",
                    help="a finished experiment (a name in --storage, a folder, or a URI) whose "
                         "trials the searcher learns from before its first suggestion (same "
                         "space, --max-epochs and --subset)")
    ap.add_argument("--optuna-storage", metavar="URL",
                    help="keep the Optuna study in this database, e.g. sqlite:///artifacts/optuna.db")
    ap.add_argument("--mlflow", nargs="?", const="", default=None, metavar="TRACKING_URI",
                    help="track the trials in MLflow: one run per trial (with no value: "
                         "sqlite:///artifacts/mlflow.db; on a cluster: http://HEAD:5000 of an "
                         "`mlflow server`)")
    ap.add_argument("--space", metavar="FILE", help="YAML/JSON ranges laid over tuning/space.py")
    ap.add_argument("--points", metavar="FILE",
                    help="YAML/JSON list of configurations to try first, in order (instead of "
                         "the known-good points of tuning/space.py; [] for none)")


def _run_flags(ap) -> None:
    """Where it runs, what it keeps, what it tells."""
    ap.add_argument("--name", help="experiment name (default: search-YYYYmmdd-HHMMSS)")
    ap.add_argument("--storage", help="where experiments live: a folder or a URI shared by the "
                    "cluster's nodes (default: ray_results/)")
    ap.add_argument("--address", help="join this Ray cluster (e.g. auto; default: $RAY_ADDRESS "
                    "if set) instead of starting a local one of its own")
    ap.add_argument("--resume", action="store_true",
                    help="continue the interrupted experiment --name (default: the latest one)")
    ap.add_argument("--dashboard-host", default="127.0.0.1",
                    help="address the Ray dashboard listens on (default 127.0.0.1: this machine)")
    ap.add_argument("--dashboard-port", type=positive_int, default=8265)
    ap.add_argument("--no-dashboard", action="store_true", help="start Ray without the dashboard")
    ap.add_argument("--keep-checkpoints", choices=KEEP, default="leaders",
                    help="when the search ends: leaders (default: the best checkpoint of the top "
                         "5 configurations' trials, what evaluate_best and a stage can use) or "
                         "all (every epoch's)")
    ap.add_argument("--verbose", action="store_true",
                    help="Tune's status tables instead of the progress line (kept on --resume)")
    ap.add_argument("--subset", type=positive_int, default=None,
                    help="use only the first N train and validation rows (smoke tests)")


def parse_args(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    args.objectives = args.objectives.split(",") if args.objectives is not None else None
    if args.objectives not in (None, ["f1"], ["f1", "latency"]):
        ap.error(f"argument --objectives: expected f1 or f1,latency, got "
                 f"{','.join(args.objectives)!r}")
    if args.reduction_factor <= 1:
        ap.error(f"argument --reduction-factor: must be > 1, got {args.reduction_factor}")
    # a URL with a secret would be printed, logged by Ray and stored with the experiment
    for flag in ("storage", "mlflow", "optuna_storage", "warm_start"):
        try:
            refuse_secrets(f"--{flag.replace('_', '-')}", getattr(args, flag))
        except UsageError as e:
            ap.error(f"argument {e}")
    # letters, digits, '.', '_' and '-': the name is pasted into folders, URIs, MLflow filters
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", args.name):
        ap.error(f"argument --name: {args.name!r} is not a plain name (letters, digits, '.', "
                 f"'_', '-'; not starting with '.')")
    if args.resume:  # the experiment's own settings hold; a flag given must agree with them
        return args
    args.samples = 50 if args.samples is None else args.samples
    args.objectives = args.objectives or ["f1"]
    args.max_epochs = 6 if args.max_epochs is None else args.max_epochs
    if args.grace_period is None:
        args.grace_period = GRACE_PERIOD
    if args.grace_period > args.max_epochs:
        ap.error(f"argument --grace-period: {args.grace_period} exceeds --max-epochs {args.max_epochs}")
    return args
