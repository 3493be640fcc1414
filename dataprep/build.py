"""The one-time dataprep: raw splits -> validated -> vocab (train only) -> parquet + manifest.

Idempotent: the manifest records a hash of the input rows, the parameters and every output's
sha256; a run that finds them all unchanged does nothing. Outputs are written to temporary files
and renamed only once everything is built, under a lock, so a failed or concurrent run never
leaves a half-written or mixed set behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dataprep import sources
from dataprep.schema import LABELS, PROCESSED_NAME, SPLITS
from dataprep.vocab import Vocab
from plumbing.errors import DataError
from plumbing.files import atomic_path, file_lock, sha256_file
from plumbing.paths import Paths

FORMAT = 1  # bump when the processed layout changes, so old outputs are rebuilt


def load_raw(source: Path | None, p: Paths, log=print) -> tuple[dict, dict[str, str], str]:
    """First that applies: the source folder, the raw cache in data/raw, the hub."""
    if source is not None:
        raw, files = sources.read_folder(source)
        return raw, files, f"folder {source}"
    if all(p.raw_split(s).is_file() for s in SPLITS):
        raw = {s: sources.read_table(p.raw_split(s)) for s in SPLITS}
        return raw, {str(p.raw_split(s)): sha256_file(p.raw_split(s)) for s in SPLITS}, "raw cache"
    log(f"no --source, no EMOTION_DATA_DIR and no raw cache: downloading {sources.HUB_DATASET}")
    return sources.read_hub(), {}, f"hub {sources.HUB_DATASET}"


def summarize(raw: dict, log=print) -> dict:
    """Print counts per split and label, duplicates and cross-split texts; return the counts."""
    counts = {}
    for split in SPLITS:
        df = raw[split]
        by_label = Counter(df["label"].tolist())
        counts[split] = {"rows": len(df), "labels": {LABELS[i]: by_label.get(i, 0) for i in range(6)}}
        dup_rows = int(df.duplicated(["text", "label"]).sum())
        dup_texts = int(df["text"].duplicated().sum())
        labels = " ".join(f"{name}={n}" for name, n in counts[split]["labels"].items())
        log(f"  {split:<10} {len(df):>6} rows  {labels}  "
            f"(duplicate rows: {dup_rows}, repeated texts: {dup_texts})")
    texts = {s: set(raw[s]["text"]) for s in SPLITS}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        shared = len(texts[a] & texts[b])
        if shared:
            log(f"  warning: {shared} texts are in both {a} and {b}")
    return counts


def _parquet_bytes(table: pa.Table, tmp: Path) -> None:
    # no statistics/page index timestamps: same rows -> same bytes
    pq.write_table(table, tmp, compression="zstd", write_statistics=False)


def encode_split(df, vocab: Vocab) -> pa.Table:
    ids = [vocab.encode(t) for t in df["text"].tolist()]
    return pa.table({
        "text": pa.array(df["text"].tolist(), pa.string()),
        "label": pa.array(df["label"].tolist(), pa.int64()),
        "input_ids": pa.array(ids, pa.list_(pa.int32())),
        "length": pa.array([len(x) for x in ids], pa.int32()),
    })


def outputs_of(p: Paths) -> list[Path]:
    return [p.processed_split(PROCESSED_NAME[s]) for s in SPLITS] + [p.vocab]


def is_up_to_date(p: Paths, content: str, params: dict) -> bool:
    try:
        manifest = json.loads(p.manifest.read_text())
        if (manifest.get("format"), manifest.get("content_sha256"), manifest.get("parameters")) != (
                FORMAT, content, params):
            return False
        recorded = manifest["outputs"]
        return all(out.is_file() and recorded.get(_rel(out, p)) == sha256_file(out)
                   for out in outputs_of(p))
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def _rel(path: Path, p: Paths) -> str:
    return str(path.relative_to(p.root))


def run(p: Paths, source: Path | None, *, force: bool = False, min_freq: int = 2,
        max_vocab: int | None = None, log=print) -> str:
    """Build everything; return "built" or "up to date". Raises DataError on bad data."""
    params = {"min_freq": min_freq, "max_vocab": max_vocab}
    lock = p.data_processed / ".dataprep.lock"
    with file_lock(lock, on_busy=lambda: log(f"another dataprep run holds {lock}; waiting for it "
                                             f"to finish")):
        raw, input_files, origin = load_raw(source, p, log)
        for split in SPLITS:
            if len(raw[split]) == 0:
                raise DataError(f"{origin}: split '{split}' is empty")
        log(f"read {origin}:")
        counts = summarize(raw, log)
        content = sources.content_sha256(raw)
        if not force and is_up_to_date(p, content, params):
            log("nothing to do: data/processed and artifacts/vocab.json match these inputs and "
                "parameters (--force rebuilds)")
            return "up to date"

        vocab = Vocab.fit(raw["train"]["text"].tolist(), min_freq=min_freq, max_vocab=max_vocab)
        with contextlib.ExitStack() as stack:
            # every output goes to a temp file first; all are renamed together at the end
            manifest_tmp = stack.enter_context(atomic_path(p.manifest))  # entered first: renamed last
            outputs: dict[Path, Path] = {}
            for split in SPLITS:
                target = p.processed_split(PROCESSED_NAME[split])
                outputs[target] = stack.enter_context(atomic_path(target))
                _parquet_bytes(encode_split(raw[split], vocab), outputs[target])
            outputs[p.vocab] = stack.enter_context(atomic_path(p.vocab))
            outputs[p.vocab].write_bytes(vocab.to_json_bytes())
            if origin != "raw cache":  # keep the raw splits so later runs need no source/network
                for split in SPLITS:
                    target = p.raw_split(split)
                    outputs[target] = stack.enter_context(atomic_path(target))
                    _parquet_bytes(sources.to_arrow(raw[split]), outputs[target])
            manifest = {
                "format": FORMAT,
                "source": "folder" if source is not None else origin,
                "inputs": {Path(f).name: sha for f, sha in input_files.items()},
                "content_sha256": content,
                "parameters": params,
                "vocab_size": len(vocab),
                "counts": counts,
                "outputs": {_rel(out, p): sha256_file(tmp) for out, tmp in outputs.items()
                            if out.parent != p.data_raw},
            }
            manifest_tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        # leaving the ExitStack renamed every file (manifest last); on error none was renamed
        log(f"built {', '.join(_rel(o, p) for o in outputs_of(p))} (vocab {len(vocab)} tokens)")
        return "built"


def default_source(flag: str | None) -> tuple[Path | None, str]:
    """--source, else $EMOTION_DATA_DIR; also says which one, for error messages."""
    if flag:
        return Path(flag), "--source"
    env = os.environ.get("EMOTION_DATA_DIR")
    return (Path(env), "EMOTION_DATA_DIR") if env else (None, "")


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr)
