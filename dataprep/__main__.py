"""python -m dataprep [--source DIR] [--force] [--min-freq N] [--max-vocab N]"""
from __future__ import annotations

import sys

from dataprep import build
from plumbing.cli import ArgumentParser, positive_int, run_main
from plumbing.errors import UsageError
from plumbing.paths import paths


def parse_args(argv=None):
    ap = ArgumentParser(prog="python -m dataprep", description=(
        "Build data/processed/{train,val,test}.parquet and artifacts/vocab.json from the raw "
        "dair-ai/emotion splits (a local folder, the data/raw cache, or the Hugging Face hub)."))
    ap.add_argument("--source", metavar="DIR", help="folder with train/val/test as .txt "
                    "(text;label), .parquet or .csv (default: $EMOTION_DATA_DIR)")
    ap.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    ap.add_argument("--min-freq", type=positive_int, default=2, metavar="N",
                    help="keep tokens seen at least N times in train (default 2)")
    ap.add_argument("--max-vocab", type=positive_int, default=None, metavar="N",
                    help="at most N tokens, <pad> and <unk> included (default: no limit)")
    args = ap.parse_args(argv)
    if args.max_vocab is not None and args.max_vocab < 3:
        ap.error("argument --max-vocab: must be >= 3 (<pad>, <unk> and at least one token)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    source, origin = build.default_source(args.source)
    if source is not None and not source.is_dir():
        raise UsageError(f"{origin}: {source} is not a folder")
    build.run(paths(), source, force=args.force, min_freq=args.min_freq,
              max_vocab=args.max_vocab, log=build.stderr_log)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "python -m dataprep"))
