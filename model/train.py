"""python -m model.train: train one configuration, keep its best checkpoint; last line is JSON."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from model.checkpoint import save_checkpoint
from model.config import TrainConfig, config_from_document
from model.data import Splits
from model.loop import train_epochs
from plumbing.files import atomic_path, write_text

PROG = "python -m model.train"
LOG_FIELDS = ["epoch", "train_loss", "val_loss", "val_acc", "val_f1", "lr", "sentences_per_s",
              "epoch_s"]


def train_one(cfg: TrainConfig, splits: Splits, run_dir: Path, log=print) -> dict:
    """Train one configuration, keep the best checkpoint and a CSV log; return the summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows, best, result = [], None, None
    for ep in train_epochs(cfg, splits):
        m = ep.metrics
        rows.append({k: m[k] for k in LOG_FIELDS if k in m})
        log(f"epoch {ep.epoch:>3}/{cfg.run.epochs}  train_loss {m['train_loss']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  val_f1 {m['val_f1']:.4f}  "
            f"{m['sentences_per_s']:.0f} sent/s" + ("  *" if ep.improved else ""))
        if ep.improved:
            save_checkpoint(ep.training_state(), run_dir / "best.pt")
            best = m
        result = ep
    with atomic_path(run_dir / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    write_text(run_dir / "config.json", json.dumps(cfg.to_flat(), indent=2, sort_keys=True) + "\n")
    if best is None:
        return {"status": result.status, "best_val_f1": None, "best_val_acc": None,
                "best_epoch": None, "epochs_run": result.epoch, "checkpoint": None}
    return {"status": result.status, "best_val_f1": round(best["val_f1"], 6),
            "best_val_acc": round(best["val_acc"], 6), "best_epoch": best["epoch"],
            "epochs_run": result.epoch, "checkpoint": str(run_dir / "best.pt")}


def parse_args(argv=None):
    from model.precision import CHOICES
    from plumbing.cli import ArgumentParser, non_negative_int, positive_int

    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--config", metavar="FILE",
                    help="YAML/JSON config keys (see model/config.py), or a search's "
                         "best_config.json, or a trial's params.json: retrains that configuration "
                         "with its seed")
    ap.add_argument("--epochs", type=positive_int)
    ap.add_argument("--seed", type=non_negative_int)
    ap.add_argument("--threads", type=positive_int)
    ap.add_argument("--precision", choices=CHOICES,
                    help="what it computes in (model/precision.py; default: the config's, fp32)")
    ap.add_argument("--subset", type=positive_int, metavar="N",
                    help="use only the first N train and validation rows (as the search's --subset)")
    return ap.parse_args(argv)


def run_precision(asked: str | None, cfg: TrainConfig) -> str:
    """--precision resolved for the config's device; without it, the config's own (a bf16
    search's best_config.json), refused as --precision would be where the device lacks it."""
    from model.precision import resolve
    from plumbing.errors import UsageError

    if asked is None and cfg.run.precision == "fp32":
        return "fp32"
    try:
        precision = resolve(asked or cfg.run.precision, cfg.run.device, cfg.run.threads)
    except UsageError as e:
        raise UsageError(str(e) if asked else f"the config's precision is {cfg.run.precision}: {e}"
                         ) from None
    print(f"precision {precision.note}", file=sys.stderr)
    return precision.precision


def main(argv=None) -> int:
    from model.data import load_processed
    from plumbing.cli import read_yaml_or_json
    from plumbing.paths import paths

    args = parse_args(argv)
    flat = {}
    if args.config:
        flat = config_from_document(read_yaml_or_json(args.config, "--config"),
                                    f"--config {args.config}")
    for key in ("epochs", "seed", "threads"):
        if getattr(args, key) is not None:
            flat[key] = getattr(args, key)
    cfg = TrainConfig.from_flat(flat)
    cfg = cfg.replace(precision=run_precision(args.precision, cfg))
    p = paths()
    splits = load_processed(p)
    if args.subset:
        splits = splits.head(args.subset, args.subset)
    # the run folder is named by the config, so the same config + seed lands in the same place
    run_dir = p.train_runs / f"{cfg.id()}-seed{cfg.run.seed}"
    summary = train_one(cfg, splits, run_dir, log=lambda s: print(s, file=sys.stderr))
    summary["checkpoint"] = summary["checkpoint"] and str(Path(summary["checkpoint"]).relative_to(p.root))
    print(json.dumps(summary, sort_keys=True))
    return 0 if summary["status"] != "diverged" else 1


if __name__ == "__main__":
    from plumbing.cli import run_main

    sys.exit(run_main(main, PROG))
