"""python -m tuning.search --samples 50: OptunaSearch (TPE) + ASHA over the LSTM's hyperparameters.

With --intensify-top K, then an intensification stage (tuning/search/stage.py): the top K
configurations run again with --intensify-seeds further seeds each, and the best mean
validation macro-F1 wins.

The driver loads the processed splits once and ships them to every trial through Ray's object
store (tune.with_parameters), so trials read no files and a cluster needs no shared data folder.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path

from plumbing.errors import UsageError
from plumbing.files import file_lock
from plumbing.paths import Paths, paths
from tuning.options import SearchOptions
from tuning.search.experiment import Experiment
from tuning.search.flags import parse_args


def options_from_flags(args, name: str, p: Paths) -> SearchOptions:
    """A new search's options: the flags, the space and points themselves (a resume needs no
    file), the tracking store, and ids."""
    from tuning import points as points_mod
    from tuning import space as space_mod
    from tuning.tracking import tracking_uri

    space = space_mod.load_space(args.space)
    precision = trial_precision(args.precision or "fp32", args.gpus_per_trial,
                                args.cpus_per_trial)
    options = SearchOptions(
        name=name, samples=args.samples, max_epochs=args.max_epochs,
        concurrency=args.concurrency, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, precision=precision.precision,
        precision_note=precision.note, seed=args.seed, time_budget_s=args.time_budget_s,
        grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        sampler=args.sampler, objectives=tuple(args.objectives), space=space,
        points=args.points and points_mod.load_points(args.points, space),
        optuna_storage=args.optuna_storage, subset=args.subset,
        intensify_top=args.intensify_top, intensify_seeds=args.intensify_seeds,
        keep_checkpoints=args.keep_checkpoints, verbose=args.verbose,
        search_id=uuid.uuid4().hex)
    return options.replace(mlflow=tracking_uri(args.mlflow, p))


def trial_precision(asked: str, gpus_per_trial: float, cpus_per_trial: int):
    """--precision resolved for the trials' device, as this machine has it (a cluster's nodes
    are taken to be alike)."""
    from model.precision import resolve

    return resolve(asked, "cuda" if gpus_per_trial > 0 else "cpu", cpus_per_trial)


def check_resume_flags(args, options: SearchOptions) -> None:
    """--resume takes the experiment's own settings: a --max-epochs, --objectives, --precision
    or --space given with it must be the experiment's (a resumed or extended trial must
    compare)."""
    if args.precision is not None and \
            trial_precision(args.precision, options.gpus_per_trial,
                            options.cpus_per_trial).precision != options.precision:
        raise UsageError(f"--resume: --precision {args.precision} differs from the "
                         f"experiment's {options.precision}")
    if args.max_epochs is not None and args.max_epochs != options.max_epochs:
        raise UsageError(f"--resume: --max-epochs {args.max_epochs} differs from the "
                         f"experiment's {options.max_epochs}")
    if args.objectives is not None and tuple(args.objectives) != options.objectives:
        raise UsageError(f"--resume: --objectives {','.join(args.objectives)} differs from the "
                         f"experiment's {','.join(options.objectives)}")
    if args.space:
        from tuning import space as space_mod

        differ = space_mod.differing_keys(space_mod.load_space(args.space),
                                          space_mod.stored_space(options.space))
        if differ:
            raise UsageError(f"--resume: --space {args.space} differs from the experiment's "
                             f"space in {', '.join(differ)}")


def experiment_lock(lock_file: Path, name: str):
    """Two searches writing one experiment would corrupt it: the second is refused."""
    def refuse():
        raise UsageError(f"another search is running experiment {name!r} "
                         f"(lock {lock_file}); wait for it or pick another --name")

    return file_lock(lock_file, on_busy=refuse)


def resume_command(name: str, storage_flag: str | None) -> str:
    extra = f" --storage {shlex.quote(storage_flag)}" if storage_flag else ""
    return f"python -m tuning.search --name {name} --resume{extra}"


def open_experiment_of(args, storage, name: str, p: Paths) -> Experiment:
    """--resume [--samples N]: the experiment as it was (extended to N); else a new one."""
    report_dir = p.search_reports / name
    if not args.resume:
        return Experiment.create(storage, options_from_flags(args, name, p), report_dir,
                                 args.warm_start)
    experiment = Experiment.open(storage, name, report_dir)
    check_resume_flags(args, experiment.options)
    return experiment.extend(args.samples) if args.samples is not None else experiment


def fit(tuner, verbose: bool) -> None:
    # SIGTERM stops like Ctrl-C: Tune saves the experiment state, then we say how to resume
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    if not verbose:
        # Tune's new output engine prints a configuration box and a TensorBoard hint for a
        # folder with no trial curves even when silent; the old engine at verbose 0 does not
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    tuner.fit()
    import ray

    ray.shutdown()  # no worker log lines after the summary


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
    with experiment_lock(p.search_reports / name / ".lock", name):
        experiment = open_experiment_of(args, storage, name, p)
        from model.data import load_processed

        splits = load_processed(p)  # once, in the driver; the test split is never read here
        o = experiment.options
        if o.subset:
            splits = splits.head(o.subset, o.subset)
        import ray

        from tuning.search.cluster import default_concurrency, start_ray
        from tuning.search.trainable import make_trainable

        start_ray(args)
        experiment = experiment.start(default_concurrency(
            ray.cluster_resources(), o.cpus_per_trial, o.gpus_per_trial))
        o = experiment.options
        stage = (f", then the top {o.intensify_top} again with {o.intensify_seeds} more seed(s) "
                 f"each" if o.stage_trials else "")
        print(f"{o.samples} trials{stage}, {o.concurrency} at once, {o.cpus_per_trial} CPU(s) "
              f"each, precision {o.precision_note}", file=sys.stderr)
        if experiment.resumed:
            print(f"resuming {name}: finished and errored trials are kept, unfinished ones "
                  f"continue from their last checkpoint", file=sys.stderr)
        fit(experiment.tuner(make_trainable(splits, o.cpus_per_trial, o.gpus_per_trial,
                                            o.verbose)), o.verbose)
        outcome = experiment.finish()
    return summarize(experiment, outcome, args.storage)


def summarize(experiment: Experiment, outcome, storage_flag: str | None) -> int:
    """The end of a run on the terminal; 130 when the search was interrupted."""
    from tuning.search.stage import expected_trials

    table, best, o = outcome.table, outcome.best, experiment.options
    if outcome.checkpoints is not None:
        print(f"checkpoints: {outcome.checkpoints[0]} kept, {outcome.checkpoints[1]} deleted "
              f"(--keep-checkpoints {o.keep_checkpoints})", file=sys.stderr)
    print(f"trials: {len(table)} started, " + ", ".join(
        f"{n} {s}" for s, n in table["status"].value_counts().sort_index().items()), file=sys.stderr)
    print(f"results: {experiment.uri}  report: {experiment.report_dir / 'trials.csv'}",
          file=sys.stderr)
    print(f"TensorBoard: tensorboard --logdir {shlex.quote(experiment.uri)}", file=sys.stderr)
    unfinished = int((table["status"] == "unfinished").sum())
    if unfinished or len(table) < expected_trials(table, o) and not o.time_budget_s:
        print(f"search interrupted; resume with: {resume_command(experiment.name, storage_flag)}",
              file=sys.stderr)
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
              f"next: python -m tuning.evaluate_best --experiment {shlex.quote(experiment.uri)}",
              file=sys.stderr)
    return 0
