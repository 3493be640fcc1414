"""python -m tuning.search --samples 50: OptunaSearch (TPE) + ASHA over the LSTM's hyperparameters.

With --intensify-top K, then an intensification stage (tuning/intensify.py): the top K
configurations run again with --intensify-seeds further seeds each, and the best mean
validation macro-F1 wins.

The driver loads the processed splits once and ships them to every trial through Ray's object
store (tune.with_parameters), so trials read no files and a cluster needs no shared data folder.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path

from plumbing.cli import (
    ArgumentParser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    refuse_secrets,
    run_main,
)
from plumbing.errors import DataError, UsageError
from plumbing.files import file_lock, write_text
from plumbing.paths import Paths, paths

PROG = "python -m tuning.search"
KEEP = ("leaders", "all")  # --keep-checkpoints (tuning/retention.py)
# Intensification is off by default: over three default searches it never raised the worst
# winner's test figures and cost 4-5 minutes on two cores (docs/measured.md). `--intensify-top
# 5` turns it on with the 2 further seeds each that were measured.
INTENSIFY_TOP, INTENSIFY_SEEDS = 0, 2
SAMPLERS = ("tpe", "random")
GRACE_PERIOD = 1  # ASHA: epochs every trial gets before it can be stopped (benchmarks/race.py)


def parse_args(argv=None):
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
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
    ap.add_argument("--name", help="experiment name (default: search-YYYYmmdd-HHMMSS)")
    ap.add_argument("--storage", help="where experiments live: a folder or a URI shared by the "
                    "cluster's nodes (default: ray_results/)")
    ap.add_argument("--address", help="join this Ray cluster (e.g. auto; default: $RAY_ADDRESS "
                    "if set) instead of starting a local one of its own")
    ap.add_argument("--resume", action="store_true",
                    help="continue the interrupted experiment --name (default: the latest one)")
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


def warm_start(flag: str, storage, space: dict, opts: dict) -> list[dict]:
    """--warm-start NAME (in this search's storage), DIR or URI -> its trials (searcher.py)."""
    from tuning.searcher import warm_trials
    from tuning.storage import open_experiment

    source, name = (open_experiment(flag, "--warm-start") if "/" in flag else (storage, flag))
    if not source.is_experiment(name):
        raise UsageError(f"--warm-start {flag}: no experiment {name!r} in {source.text}")
    return warm_trials(source, name, space, opts)


TUNER_STATE, KEPT_STATE = "tuner.pkl", "tuner.pkl.kept"


def keep_tuner_state(storage, name: str, restore: bool = False) -> None:
    """Tune rewrites tuner.pkl in place (no temporary file) each time a Tuner is made or
    restored: a kill -9 in that window leaves it cut short, and the experiment could not be
    resumed (EOFError). So a copy of the last whole one is kept beside it (written to a
    temporary name, then moved), and put back before a restore if tuner.pkl is not whole."""
    import pyarrow.fs as pafs

    fs, state, kept = storage.fs, storage.path(name, TUNER_STATE), storage.path(name, KEPT_STATE)

    def whole(path: str) -> bool:  # (a pickle ends with its STOP opcode)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File or not info.size:
            return False
        with fs.open_input_file(path) as f:
            f.seek(info.size - 1)
            return f.read(1) == b"."

    if whole(state):
        fs.copy_file(state, kept + ".tmp")
        fs.move(kept + ".tmp", kept)
    elif restore and whole(kept):
        print(f"{storage.uri(name, TUNER_STATE)} was cut short (a kill while Tune rewrote it): "
              f"using the copy kept beside it", file=sys.stderr)
        fs.copy_file(kept, state)


def check_resume_flags(args, opts: dict) -> None:
    """--resume takes the experiment's own settings: a --max-epochs or --space given with it
    must be the experiment's (a resumed or extended trial must compare with the others)."""
    if args.max_epochs is not None and args.max_epochs != opts["max_epochs"]:
        raise UsageError(f"--resume: --max-epochs {args.max_epochs} differs from the "
                         f"experiment's {opts['max_epochs']}")
    if args.objectives is not None and args.objectives != (opts.get("objectives") or ["f1"]):
        raise UsageError(f"--resume: --objectives {','.join(args.objectives)} differs from the "
                         f"experiment's {','.join(opts.get('objectives') or ['f1'])}")
    if args.space:
        from tuning import space as space_mod

        differ = space_mod.differing_keys(space_mod.load_space(args.space),
                                          space_mod.stored_space(opts.get("space")))
        if differ:
            raise UsageError(f"--resume: --space {args.space} differs from the experiment's "
                             f"space in {', '.join(differ)}")


def extended(opts: dict, samples: int) -> dict:
    """The options of an experiment extended to `samples` search trials (--resume --samples)."""
    if samples < opts["samples"]:
        raise UsageError(f"--samples {samples}: the experiment already has {opts['samples']} "
                         f"search trials; extend it with more, or resume it without --samples")
    if opts.get("time_budget_s"):
        raise UsageError(f"--samples {samples}: this search ran under --time-budget-s, which "
                         f"Tune restores spent; warm-start a new one from it (--warm-start)")
    if not opts.get("extendable"):
        raise UsageError(f"--samples {samples}: this experiment was started before searches "
                         f"could be extended; warm-start a new one from it (--warm-start)")
    return {**opts, "samples": samples}


def experiment_lock(lock_file: Path, name: str):
    """Two searches writing one experiment would corrupt it: the second is refused."""
    def refuse():
        raise UsageError(f"another search is running experiment {name!r} "
                         f"(lock {lock_file}); wait for it or pick another --name")

    return file_lock(lock_file, on_busy=refuse)


def resume_command(name: str, storage_flag: str | None) -> str:
    extra = f" --storage {shlex.quote(storage_flag)}" if storage_flag else ""
    return f"python -m tuning.search --name {name} --resume{extra}"


def main(argv=None) -> int:
    args = parse_args(argv)
    p: Paths = paths()
    from tuning.storage import open_storage

    storage = open_storage(args.storage, p.ray_results)  # a folder, or a URI (s3://, gs://, ...)
    if args.resume and args.name is None:
        args.name = storage.latest_experiment()
        if args.name is None:
            raise UsageError(f"--resume: no experiment in {storage.text}; name one with --name")
    name = args.name or time.strftime("search-%Y%m%d-%H%M%S")
    report_dir = p.search_reports / name

    points = None
    if not args.resume:  # a bad --space or --points fails before anything is written
        from tuning import space as space_mod

        space = space_mod.load_space(args.space)
        # the points themselves are stored with the options: a resume needs no file
        points = args.points and space_mod.load_points(args.points, space)

    with experiment_lock(report_dir / ".lock", name):
        from ray import tune

        from tuning.results import OPTIONS_FILE, search_options

        exists = storage.is_experiment(name)
        if args.resume and not exists:
            raise UsageError(f"--resume: no experiment {name!r} in {storage.text}")
        if not args.resume and exists:
            raise UsageError(f"experiment {name!r} already exists in {storage.text}: continue it "
                             f"with --resume, or pick another --name")
        if args.resume:  # the settings are the experiment's own, as first started
            opts = search_options(report_dir, storage, name)
            if opts is None:
                raise DataError(f"--resume: {report_dir / OPTIONS_FILE} is missing, and "
                                f"{storage.uri(name, OPTIONS_FILE)} too")
            check_resume_flags(args, opts)
            if args.samples is not None and args.samples != opts["samples"]:
                opts = extended(opts, args.samples)
                storage.write_json(opts, name, OPTIONS_FILE)
                write_text(report_dir / OPTIONS_FILE,
                           json.dumps(opts, indent=2, sort_keys=True) + "\n")
        else:
            opts = {k: getattr(args, k) for k in (
                "samples", "max_epochs", "concurrency", "cpus_per_trial", "gpus_per_trial", "seed",
                "time_budget_s", "grace_period", "reduction_factor", "optuna_storage", "space",
                "subset", "intensify_top", "intensify_seeds", "sampler", "verbose", "keep_checkpoints",
                "objectives")}
            from tuning.tracking import tracking_uri

            opts["space"] = space  # the ranges themselves, not the path of the file they came from
            # the earlier trials themselves: a resume needs neither the source nor its storage
            opts["warm_start"] = args.warm_start and warm_start(args.warm_start, storage, space, opts)
            opts["mlflow"] = tracking_uri(args.mlflow, p)
            opts["name"] = name
            opts["extendable"] = True  # its searcher can take more samples (trainable.Extendable)
            opts["search_id"] = uuid.uuid4().hex  # tells its MLflow runs from a namesake's
            opts["points"] = points

        if storage.is_local:  # fail here, not after Ray has started
            Path(storage.path(name)).mkdir(parents=True, exist_ok=True)
        from model.data import load_processed

        splits = load_processed(p)  # once, in the driver; the test split is never read here
        if opts["subset"]:
            splits = splits.head(opts["subset"], opts["subset"])
        from tuning.cluster import default_concurrency, start_ray
        from tuning.trainable import make_trainable, make_tuner

        start_ray(args)
        if not args.resume:
            if opts["concurrency"] is None:  # what the cluster holds, known once Ray is up
                import ray

                opts["concurrency"] = default_concurrency(
                    ray.cluster_resources(), opts["cpus_per_trial"], opts["gpus_per_trial"])
            # beside the experiment, so that a resume from anywhere finds them, and in the report
            storage.write_json(opts, name, OPTIONS_FILE)
            write_text(report_dir / OPTIONS_FILE, json.dumps(opts, indent=2, sort_keys=True) + "\n")
        from tuning.intensify import expected_trials, stage_trials

        stage = (f", then the top {opts['intensify_top']} again with {opts['intensify_seeds']} more "
                 f"seed(s) each" if stage_trials(opts) else "")
        print(f"{opts['samples']} trials{stage}, {opts['concurrency']} at once, "
              f"{opts['cpus_per_trial']} CPU(s) each", file=sys.stderr)
        trainable = make_trainable(splits, opts["cpus_per_trial"], opts["gpus_per_trial"])
        if args.resume:
            from tuning.trainable import Extendable

            Extendable.samples = opts["samples"]  # more, if extended
            print(f"resuming {name}: finished and errored trials are kept, unfinished ones "
                  f"continue from their last checkpoint", file=sys.stderr)
            # Errored trials stay errored: each already failed 1 + max_failures times, and the
            # searcher, the stage and the concurrency limit all took it as ended (a rerun would
            # run beside the limit, start after the stage chose its leaders, and never be told
            # to the searcher, which ConcurrencyLimiter only forwards for its live trials)
            keep_tuner_state(storage, name, restore=True)
            tuner = tune.Tuner.restore(storage.path(name), trainable=trainable,
                                       resume_unfinished=True, resume_errored=False,
                                       storage_filesystem=storage.ray_kwargs()["storage_filesystem"])
        else:
            tuner = make_tuner(opts, trainable, storage)
        keep_tuner_state(storage, name)
        # SIGTERM stops like Ctrl-C: Tune saves the experiment state, then we say how to resume
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        if not opts.get("verbose"):
            # Tune's new output engine prints a configuration box and a TensorBoard hint for a
            # folder with no trial curves even when silent; the old engine at verbose 0 does not
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        tuner.fit()
        import ray

        ray.shutdown()  # no worker log lines after the summary below
        from tuning.intensify import SEARCH
        from tuning.results import load_experiment, write_reports

        analysis = load_experiment(storage, name)
        table, best = write_reports(analysis, report_dir)
        if opts.get("keep_checkpoints", "all") != "all":  # (an experiment from before: all)
            from tuning.retention import prune

            kept, deleted = prune(storage, name, analysis, table)
            print(f"checkpoints: {kept} kept, {deleted} deleted (--keep-checkpoints "
                  f"{opts['keep_checkpoints']})", file=sys.stderr)
        # Tune tells neither the searcher nor the callbacks of the trials its time budget stopped
        budget_stopped = table.loc[table["status"] == "budget_stopped", "trial_id"].tolist()
        if opts["optuna_storage"]:
            from tuning.searcher import settle_study

            settle_study(opts["optuna_storage"], name, table[table["phase"] == SEARCH],
                         opts.get("search_id"))
        if opts.get("mlflow"):
            from tuning.tracking import drop_orphan_runs, end_runs

            drop_orphan_runs(opts["mlflow"], name, table["trial_id"], opts.get("search_id"))
            end_runs(opts["mlflow"], name, budget_stopped, "budget_stopped", opts.get("search_id"))

    unfinished = int((table["status"] == "unfinished").sum())
    started = len(table)
    print(f"trials: {started} started, " + ", ".join(
        f"{n} {s}" for s, n in table["status"].value_counts().sort_index().items()), file=sys.stderr)
    experiment = storage.uri(name)
    print(f"results: {experiment}  report: {report_dir / 'trials.csv'}", file=sys.stderr)
    print(f"TensorBoard: tensorboard --logdir {shlex.quote(experiment)}", file=sys.stderr)
    if unfinished or started < expected_trials(table, opts) and not opts["time_budget_s"]:
        print(f"search interrupted; resume with: {resume_command(name, args.storage)}", file=sys.stderr)
        return 130
    if best is not None:
        choice = best["selection"]
        if choice["candidates"]:
            others = choice["candidates"][1:]
            next_best = f"{others[0]['mean_val_f1']:.4f}" if others else "none"
            print(f"winner: mean val_f1 {choice['mean_val_f1']:.4f} ± {choice['std_val_f1']:.4f} "
                  f"over {len(choice['seeds'])} seeds, best of {len(choice['candidates'])} "
                  f"configurations run again (next best mean {next_best})", file=sys.stderr)
        print(f"best trial {best['trial_id']}: val_f1 {best['val_f1']:.4f} (epoch {best['epoch']}); "
              f"next: python -m tuning.evaluate_best --experiment {shlex.quote(experiment)}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
