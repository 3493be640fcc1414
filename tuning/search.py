"""python -m tuning.search --samples 50: OptunaSearch (TPE) + ASHA over the LSTM's hyperparameters.

The driver loads the processed splits once and ships them to every trial through Ray's object
store (tune.with_parameters), so trials read no files and a cluster needs no shared data folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

from dataprep.atomic import write_text
from dataprep.cli import (
    ArgumentParser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)
from dataprep.paths import Paths, paths
from dataprep.schema import UsageError

PROG = "python -m tuning.search"
OPTIONS_FILE = "search_options.json"


def parse_args(argv=None):
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=positive_int, default=50, help="trials to run (default 50)")
    ap.add_argument("--max-epochs", type=positive_int, default=6,
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
    ap.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting one")
    ap.add_argument("--resume", action="store_true",
                    help="continue the interrupted experiment --name (default: the latest one)")
    ap.add_argument("--time-budget-s", type=positive_float, default=None,
                    help="stop starting new trials after this many seconds")
    ap.add_argument("--grace-period", type=positive_int, default=None,
                    help="ASHA: epochs every trial gets before it can be stopped (default 1)")
    ap.add_argument("--reduction-factor", type=float, default=3.0,
                    help="ASHA: keep 1/this of the trials at each rung (default 3)")
    ap.add_argument("--optuna-storage", metavar="URL",
                    help="keep the Optuna study in this database, e.g. sqlite:///artifacts/optuna.db")
    ap.add_argument("--space", metavar="FILE", help="YAML/JSON ranges laid over tuning/space.py")
    ap.add_argument("--points", metavar="FILE",
                    help="YAML/JSON list of configurations to try first, in order (instead of "
                         "the known-good points of tuning/space.py; [] for none)")
    ap.add_argument("--dashboard-host", default="127.0.0.1",
                    help="address the Ray dashboard listens on (default 127.0.0.1: this machine)")
    ap.add_argument("--dashboard-port", type=positive_int, default=8265)
    ap.add_argument("--no-dashboard", action="store_true", help="start Ray without the dashboard")
    ap.add_argument("--subset", type=positive_int, default=None,
                    help="use only the first N train and validation rows (smoke tests)")
    args = ap.parse_args(argv)
    if args.reduction_factor <= 1:
        ap.error(f"argument --reduction-factor: must be > 1, got {args.reduction_factor}")
    if args.grace_period is None:
        args.grace_period = 1
    if args.grace_period > args.max_epochs:
        ap.error(f"argument --grace-period: {args.grace_period} exceeds --max-epochs {args.max_epochs}")
    if args.name is not None and (not args.name or "/" in args.name or args.name.startswith(".")):
        ap.error(f"argument --name: {args.name!r} is not a plain folder name")
    return args


def default_concurrency(resources: dict, cpus_per_trial: int, gpus_per_trial: float) -> int:
    """Trials that fit at once in the cluster's resources (what `ray.cluster_resources()` says)."""
    fits = int(resources.get("CPU", 1) // cpus_per_trial)
    if gpus_per_trial > 0:
        fits = min(fits, int(resources.get("GPU", 0) // gpus_per_trial))
    return max(1, fits)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cpusets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---- building the Tuner -----------------------------------------------------------------------

def make_trainable(splits, cpus_per_trial: int, gpus_per_trial: float):
    from ray import tune

    from tuning.trainable import train_trial

    resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_trial, splits=splits), resources)


def make_tuner(opts: dict, trainable, storage: str):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tuning import space as space_mod

    space = space_mod.load_space(opts["space"])
    param_space = space_mod.to_tune(space)
    # fixed per search: every trial gets these as plain values (not searched)
    param_space.update(
        epochs=opts["max_epochs"], threads=opts["cpus_per_trial"], search_seed=opts["seed"],
        device="cuda" if opts["gpus_per_trial"] > 0 else "cpu")
    searcher = OptunaSearch(
        points_to_evaluate=(opts.get("points") if opts.get("points") is not None
                            else space_mod.known_good_points(space)),
        sampler=optuna.samplers.TPESampler(seed=opts["seed"]),
        study_name=opts["name"],
        storage=optuna.storages.RDBStorage(opts["optuna_storage"]) if opts["optuna_storage"] else None,
    )
    scheduler = ASHAScheduler(time_attr="epoch", max_t=opts["max_epochs"],
                              grace_period=opts["grace_period"],
                              reduction_factor=opts["reduction_factor"])
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="val_f1", mode="max",
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=opts["concurrency"]),
            scheduler=scheduler,
            num_samples=opts["samples"],
            time_budget_s=opts["time_budget_s"],
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            # a new trial reuses a finished trial's worker: no new process importing torch and
            # fetching the splits again for each of the 50 trials
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=opts["name"],
            storage_path=storage,
            # Every epoch's checkpoint is kept (~15-25 MB each). A cap (num_to_keep=K) makes Tune
            # snapshot the whole experiment state each time a trial has written K checkpoints
            # since the last snapshot, before it deletes one: with K=1 and epochs of a few
            # seconds that was a snapshot, and a "may become a bottleneck" warning, every epoch.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None, checkpoint_score_attribute="val_f1", checkpoint_score_order="max"),
            # a crashed trial restarts from its last checkpoint, up to twice
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )


# ---- running ----------------------------------------------------------------------------------

def start_ray(args) -> None:
    """Join the cluster at --address, or start a local one; say where its dashboard is."""
    import ray

    if args.address:
        ctx = ray.init(address=args.address, log_to_driver=True)
    else:
        kwargs = {"include_dashboard": not args.no_dashboard}
        if not args.no_dashboard:
            kwargs.update(dashboard_host=args.dashboard_host, dashboard_port=args.dashboard_port)
        # Ray counts the machine's CPUs (and cgroup quotas) but not this process's affinity mask
        if usable_cpus() < (os.cpu_count() or 1):
            kwargs["num_cpus"] = usable_cpus()
        ctx = ray.init(**kwargs)
    url = getattr(ctx, "dashboard_url", None)
    if url:
        print(f"Ray dashboard: http://{url} ({dashboard_login_hint()})", file=sys.stderr)


def dashboard_login_hint() -> str:
    """How to get past the dashboard's login, as Ray 2.60 configures it."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        token_auth = is_token_auth_enabled()
    except ImportError:  # another Ray release: go by the documented switch
        token_auth = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if not token_auth:
        return "no token needed"
    return (f"token auth is on: paste the token from `ray get-auth-token` "
            f"({Path.home() / '.ray' / 'auth_token'} on the head node) when the browser asks; "
            f"API calls need 'Authorization: Bearer <token>'; the ray CLI needs RAY_AUTH_MODE=token")


@contextlib.contextmanager
def experiment_lock(lock_file: Path, name: str):
    """Two searches writing one experiment would corrupt it: the second is refused."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another search is running experiment {name!r} "
                             f"(lock {lock_file}); wait for it or pick another --name") from None
        yield


def latest_experiment(storage: Path) -> Path | None:
    found = [p.parent for p in storage.glob("*/experiment_state-*.json")]
    return max(found, key=lambda d: max(f.stat().st_mtime for f in d.glob("experiment_state-*.json")),
               default=None)


def write_reports(exp_dir: Path, out_dir: Path) -> object:
    from tuning.results import best_trial, load_experiment, trials_frame
    from tuning.trainable import model_config

    analysis = load_experiment(exp_dir)
    table = trials_frame(analysis)
    write_text(out_dir / "trials.csv", table.to_csv(index=False))
    finished = table[table["epochs_run"] > 0]
    if len(finished):
        trial, _ = best_trial(analysis)
        row = table[table["trial_id"] == trial.trial_id].iloc[0]
        # "config" is what the winner trained with, its seed included: `python -m model.train
        # --config best_config.json` retrains it to the same numbers
        best = {"trial_id": trial.trial_id, "val_f1": float(row["best_val_f1"]),
                "epoch": int(row["best_epoch"]), "seed": int(row["seed"]),
                "config": model_config(trial.config)}
        write_text(out_dir / "best_config.json", json.dumps(best, indent=2, sort_keys=True) + "\n")
    return table


def resume_command(name: str, storage_flag: str | None) -> str:
    extra = f" --storage {storage_flag}" if storage_flag else ""
    return f"python -m tuning.search --name {name} --resume{extra}"


def main(argv=None) -> int:
    args = parse_args(argv)
    p: Paths = paths()
    # a URI (s3://, gs://, ...) is handed to Ray as is; a folder is made absolute
    is_uri = bool(args.storage) and "://" in args.storage
    local_storage = None if is_uri else Path(args.storage or p.ray_results).resolve()
    storage_str = args.storage if is_uri else str(local_storage)

    if args.resume and args.name is None:
        latest = latest_experiment(local_storage) if local_storage else None
        if latest is None:
            raise UsageError(f"--resume: no experiment in {storage_str}; name one with --name")
        args.name = latest.name
    name = args.name or time.strftime("search-%Y%m%d-%H%M%S")
    report_dir = p.search_reports / name
    exp_path = f"{storage_str.rstrip('/')}/{name}"

    points = None
    if not args.resume:  # a bad --space or --points fails before anything is written
        from tuning import space as space_mod

        space = space_mod.load_space(args.space)
        # the points themselves are stored with the options: a resume needs no file
        points = args.points and space_mod.load_points(args.points, space)

    with experiment_lock(report_dir / ".lock", name):
        from ray import tune

        exists = tune.Tuner.can_restore(exp_path)
        if args.resume and not exists:
            raise UsageError(f"--resume: no experiment {name!r} in {storage_str}")
        if not args.resume and exists:
            raise UsageError(f"experiment {name!r} already exists in {storage_str}: continue it "
                             f"with --resume, or pick another --name")
        if args.resume:  # the settings are the experiment's own, as first started
            opts = json.loads((report_dir / OPTIONS_FILE).read_text())
        else:
            opts = {k: getattr(args, k) for k in (
                "samples", "max_epochs", "concurrency", "cpus_per_trial", "gpus_per_trial", "seed",
                "time_budget_s", "grace_period", "reduction_factor", "optuna_storage", "space",
                "subset")}
            opts["name"] = name
            opts["points"] = points

        if local_storage is not None:  # fail here, not after Ray has started
            (local_storage / name).mkdir(parents=True, exist_ok=True)
        from model.data import load_processed

        splits = load_processed(p)  # once, in the driver; the test split is never read here
        if opts["subset"]:
            splits = splits.head(opts["subset"], opts["subset"])
        start_ray(args)
        if not args.resume:
            if opts["concurrency"] is None:  # what the cluster holds, known once Ray is up
                import ray

                opts["concurrency"] = default_concurrency(
                    ray.cluster_resources(), opts["cpus_per_trial"], opts["gpus_per_trial"])
            write_text(report_dir / OPTIONS_FILE, json.dumps(opts, indent=2, sort_keys=True) + "\n")
        print(f"{opts['samples']} trials, {opts['concurrency']} at once, {opts['cpus_per_trial']} "
              f"CPU(s) each", file=sys.stderr)
        trainable = make_trainable(splits, opts["cpus_per_trial"], opts["gpus_per_trial"])
        if args.resume:
            print(f"resuming {name}: finished trials are kept, unfinished and errored ones "
                  f"continue from their last checkpoint", file=sys.stderr)
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = make_tuner(opts, trainable, storage_str)
        # SIGTERM stops like Ctrl-C: Tune saves the experiment state, then we say how to resume
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        tuner.fit()
        import ray

        ray.shutdown()  # no worker log lines after the summary below
        if local_storage is None:
            print(f"experiment stored at {exp_path}", file=sys.stderr)
            return 0
        table = write_reports(local_storage / name, report_dir)

    unfinished = int((table["status"] == "unfinished").sum())
    started = len(table)
    print(f"trials: {started} started, " + ", ".join(
        f"{n} {s}" for s, n in table["status"].value_counts().sort_index().items()), file=sys.stderr)
    print(f"results: {local_storage / name}  report: {report_dir / 'trials.csv'}", file=sys.stderr)
    print(f"TensorBoard: tensorboard --logdir {local_storage / name}", file=sys.stderr)
    if unfinished or started < opts["samples"] and not opts["time_budget_s"]:
        print(f"search interrupted; resume with: {resume_command(name, args.storage)}", file=sys.stderr)
        return 130
    best = table.loc[table["best_val_f1"].idxmax()] if table["best_val_f1"].notna().any() else None
    if best is not None:
        print(f"best trial {best['trial_id']}: val_f1 {best['best_val_f1']:.4f} "
              f"(epoch {best['best_epoch']}); next: python -m tuning.evaluate_best "
              f"--experiment {local_storage / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
