"""Ray Tune's overhead against a plain Optuna loop doing the same work.

    python benchmarks/ray_overhead.py [--samples 50] [--experiment NAME] [-- extra search flags]

1. The default `python -m tuning.search --samples N` (ASHA on), timed end to end: Ray's start,
   the object store, per-epoch checkpoints and reports, the searcher, the scheduler.
2. A plain Optuna ask-and-tell loop over a pool of as many worker processes as the search ran
   trials at once, replaying exactly those trials in the order they started: the same
   hyperparameters (so the same derived seeds and numbers), each for exactly the epochs it ran
   under Ray (ASHA's stops included), through the same `model.train.fit`, timed end to end
   (worker start and data loading included). The plain loop keeps no checkpoints: every
   save counts as Ray's overhead.
`--experiment NAME` replays a finished search instead of running one (its wall is read from its
trials' timestamps). Prints both walls, checks that every trial reached the same val_f1 in both,
and prints a JSON line last with ray_wall_s, plain_wall_s and overhead (ray / plain - 1), and
the worker-seconds spent in epochs under each and in Ray's per-epoch report and checkpoint.
Target: overhead <= 0.05.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import common  # benchmarks/common.py
from common import cpu_model, finish, load_splits, run_search, trials_in_start_order

from plumbing.paths import paths


def _train(config: dict, epochs: int) -> tuple[list[float], float]:
    """val_f1 of each of the first `epochs` epochs of the trial (its schedule still spans all),
    and the seconds those epochs took (training and validation, as `epoch_s` under Ray)."""
    from model.config import from_trial_params
    from model.loop import train_epochs

    curve, seconds = [], 0.0
    for epoch in train_epochs(from_trial_params(config), common.SPLITS):
        curve.append(epoch.metrics["val_f1"])
        seconds += epoch.metrics["epoch_s"]
        if len(curve) == epochs:
            break
    return curve, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--experiment", help="replay this finished search instead of running one")
    ap.add_argument("extra", nargs="*", help="more flags for tuning.search (after --)")
    args = ap.parse_args()
    p = paths()
    name = args.experiment or time.strftime("overhead-%Y%m%d-%H%M%S")
    if not args.experiment:
        ray_wall = run_search(name, args.samples, args.extra)
    exp = p.ray_results / name
    from tuning.options import read_options
    from tuning.storage import open_storage

    options = read_options(open_storage(None, p.ray_results), name)
    workers = options.concurrency
    trials = [{"config": params,
               "start": progress["timestamp"].min() - progress["time_this_iter_s"].iloc[0],
               "end": progress["timestamp"].max(),
               "val_f1": progress["val_f1"].round(9).tolist(),
               "epoch_s": float(progress["epoch_s"].sum()),
               "report_s": float((progress["time_this_iter_s"] - progress["epoch_s"]).sum())}
              for params, progress in trials_in_start_order(exp)]
    if args.experiment:  # first trial's start to last report: a lower bound on the search's wall
        ray_wall = max(t["end"] for t in trials) - trials[0]["start"]

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    study = optuna.create_study(direction="maximize")
    curves, plain_epoch_s = {}, 0.0
    with ProcessPoolExecutor(workers, initializer=load_splits,
                             initargs=(options.subset,)) as pool:
        pending, queue = {}, list(enumerate(trials))
        while queue or pending:
            while queue and len(pending) < workers:
                i, trial = queue.pop(0)
                pending[pool.submit(_train, trial["config"], len(trial["val_f1"]))] = (study.ask(), i)
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                optuna_trial, i = pending.pop(fut)
                curve, seconds = fut.result()
                curves[i] = [round(v, 9) for v in curve]
                plain_epoch_s += seconds
                study.tell(optuna_trial, max(curves[i]))
    plain_wall = time.perf_counter() - start

    same = all(curves[i] == t["val_f1"] for i, t in enumerate(trials))
    epochs = sum(len(t["val_f1"]) for t in trials)
    result = {"ray_wall_s": round(ray_wall, 1), "plain_wall_s": round(plain_wall, 1),
              "overhead": round(ray_wall / plain_wall - 1, 3), "trials": len(trials),
              "epochs_total": epochs, "workers": workers, "experiment": name,
              "ray_wall_from": "timestamps" if args.experiment else "run",
              "same_val_f1_per_epoch": same, "cpu": cpu_model(),
              # where the difference goes, in worker-seconds summed over trials: epochs that ran
              # slower under Ray (its daemons share the cores), and the report + checkpoint after
              # each epoch; the rest of (ray_wall - plain_wall) * workers is start, end and gaps
              "ray_epoch_s": round(sum(t["epoch_s"] for t in trials), 1),
              "plain_epoch_s": round(plain_epoch_s, 1),
              "ray_report_checkpoint_s": round(sum(t["report_s"] for t in trials), 1)}
    return finish(f"Ray Tune {ray_wall:.1f} s vs plain Optuna loop {plain_wall:.1f} s for the same "
                  f"{len(trials)} trials / {epochs} epochs: overhead {result['overhead']:+.1%} "
                  f"(same val_f1 every epoch: {same})", result)


if __name__ == "__main__":
    sys.exit(main())
