"""Read the three raw splits from a local folder, the raw cache, or the Hugging Face hub.

Every reader returns {split: DataFrame(text: str, label: int 0-5)} and rejects bad rows with a
message that names the file and the line (txt) or row (parquet/csv).
"""
from __future__ import annotations

import codecs
import hashlib
import io
import json
import math
import numbers
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dataprep.schema import LABEL_IDS, LABELS, SPLITS
from plumbing.errors import DataError
from plumbing.files import sha256_file

HUB_DATASET, HUB_CONFIG = "dair-ai/emotion", "split"
# file stems accepted per split; the original release names validation "val.txt"
STEMS = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}
EXTENSIONS = (".txt", ".parquet", ".csv")

RawSplits = dict  # {split: DataFrame(text, label)}


def _unknown_label(where: str, label) -> DataError:
    return DataError(f"{where}: unknown label {label!r} (expected one of {', '.join(LABELS)} or 0-5)")


def _read_bytes(path: Path) -> bytes:
    """A text file's bytes without a UTF-8 BOM; empty files and NUL bytes are refused."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    if not data.strip():
        raise DataError(f"{path}: empty file")
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{path}:{line}: NUL byte")
    return data


def read_txt(path: Path) -> pd.DataFrame:
    """The original release's format: `text;label` per line, label as name, split on the last ';'."""
    data = _read_bytes(path)
    lines = data.split(b"\n")
    while lines and lines[-1].strip(b"\r") == b"":  # trailing newline / empty lines
        lines.pop()
    texts, labels = [], []
    for n, raw in enumerate(lines, 1):
        try:
            line = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{n}: bytes that are not UTF-8 (column {e.start + 1})") from None
        text, sep, label = line.rpartition(";")
        if not sep:
            raise DataError(f"{path}:{n}: no ';' between text and label")
        text, label = text.strip(), label.strip()
        if not text:
            raise DataError(f"{path}:{n}: empty text")
        if label not in LABEL_IDS:
            raise _unknown_label(f"{path}:{n}", label)
        texts.append(text)
        labels.append(LABEL_IDS[label])
    return pd.DataFrame({"text": texts, "label": pd.array(labels, dtype="int64")})


def _label_id(value, where: str) -> int:
    if isinstance(value, str):
        name = value.strip()
        if name in LABEL_IDS:
            return LABEL_IDS[name]
        if name.lstrip("-").isdigit():
            value = int(name)
        else:
            raise _unknown_label(where, value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise _unknown_label(where, value)
    if isinstance(value, numbers.Integral) or float(value).is_integer():
        if 0 <= int(value) < len(LABELS):
            return int(value)
        raise DataError(f"{where}: label id {int(value)} outside 0-5")
    raise _unknown_label(where, value)


def validate_frame(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Check a table's `text` and `label` columns row by row; return the clean two-column frame."""
    missing = [c for c in ("text", "label") if c not in df.columns]
    if missing:
        raise DataError(f"{origin}: no column {' or '.join(map(repr, missing))} "
                        f"(columns: {', '.join(map(str, df.columns)) or 'none'})")
    if len(df) == 0:
        raise DataError(f"{origin}: empty file (no rows)")
    texts, labels = [], []
    for i, (text, label) in enumerate(zip(df["text"].tolist(), df["label"].tolist()), 1):
        where = f"{origin}: row {i}"
        if not isinstance(text, str):
            raise DataError(f"{where}: text is not a string ({text!r})")
        if "\x00" in text:
            raise DataError(f"{where}: NUL byte in text")
        if not text.strip():
            raise DataError(f"{where}: empty text")
        texts.append(text.strip())
        labels.append(_label_id(label, where))
    return pd.DataFrame({"text": texts, "label": pd.array(labels, dtype="int64")})


def read_table(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        try:
            df = pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
        return validate_frame(df, str(path))
    data = _read_bytes(path)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes that are not UTF-8") from None
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: not a readable CSV file ({str(e).splitlines()[0]})") from None
    return validate_frame(df, str(path))


# A Hugging Face hub snapshot of the dataset holds parquet shards: split/train-00000-of-00001.parquet
SHARD_RE = re.compile(r"^(?P<stem>[a-z]+)-(?P<index>\d+)-of-(?P<total>\d+)\.parquet$")


def _shards(folder: Path, split: str) -> list[Path]:
    """The complete set of one split's parquet shards in `folder` ([] if none), in order."""
    sets: dict[int, dict[int, Path]] = {}
    for path in sorted(folder.glob("*.parquet")):
        m = SHARD_RE.match(path.name)
        if m and m["stem"] in STEMS[split]:
            sets.setdefault(int(m["total"]), {})[int(m["index"])] = path
    if not sets:
        return []
    if len(sets) > 1:
        names = ", ".join(p.name for shards in sets.values() for p in shards.values())
        raise DataError(f"{folder}: split '{split}' is ambiguous: shards of {len(sets)} different "
                        f"sets ({names}); keep one set")
    (total, shards), = sets.items()
    missing = [i for i in range(total) if i not in shards]
    if missing or len(shards) != total:
        raise DataError(f"{folder}: split '{split}' is incomplete: shard {missing[0] if missing else '?'}"
                        f" of {total} is missing (have {', '.join(p.name for p in shards.values())})")
    return [shards[i] for i in range(total)]


def _split_files(folder: Path, split: str) -> list[Path]:
    """One split's files in `folder`: a single train/val/test file, or a set of hub shards."""
    hits = [folder / f"{stem}{ext}" for stem in STEMS[split] for ext in EXTENSIONS
            if (folder / f"{stem}{ext}").is_file()]
    shards = _shards(folder, split)
    if len(hits) + bool(shards) > 1:
        names = [h.name for h in hits] + ([f"{len(shards)} shard(s) {shards[0].name}…"] if shards else [])
        raise DataError(f"{folder}: split '{split}' is ambiguous: {', '.join(names)}")
    return hits or shards


def find_split_files(folder: Path) -> dict[str, list[Path]]:
    """Each split's files in `folder`, or in its `split/` subfolder (a hub snapshot's layout)."""
    if not any(_split_files(folder, s) for s in SPLITS) and (folder / HUB_CONFIG).is_dir():
        folder = folder / HUB_CONFIG
    found = {}
    for split in SPLITS:
        files = _split_files(folder, split)
        if not files:
            names = ", ".join(f"{s}{e}" for s in STEMS[split] for e in EXTENSIONS)
            raise DataError(f"{folder}: missing split '{split}' (looked for {names}, and hub shards "
                            f"such as {STEMS[split][-1]}-00000-of-00001.parquet)")
        found[split] = files
    return found


def read_folder(folder: Path) -> tuple[RawSplits, dict[str, str]]:
    """Read a folder of split files; also return each file's sha256 for the manifest."""
    files = find_split_files(folder)
    raw = {}
    for split, paths in files.items():
        frames = [read_txt(p) if p.suffix == ".txt" else read_table(p) for p in paths]
        raw[split] = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return raw, {str(p): sha256_file(p) for paths in files.values() for p in paths}


def read_hub() -> RawSplits:
    """Download dair-ai/emotion (config "split") with `datasets`; any failure is one DataError line."""
    try:
        from datasets import load_dataset

        ds = load_dataset(HUB_DATASET, HUB_CONFIG)
        frames = {split: ds[split].to_pandas() for split in SPLITS}
    except Exception as e:  # noqa: BLE001 - no network, no hub, bad cache: all the same to the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"no data: no --source, no EMOTION_DATA_DIR, no raw cache in data/raw/, and the hub "
            f"({HUB_DATASET}) could not be reached ({type(e).__name__}: {first[:200]}). Point at "
            f"local files: python -m dataprep --source DIR (or EMOTION_DATA_DIR=DIR), with DIR "
            f"holding train.txt, val.txt, test.txt"
        ) from None
    return {split: validate_frame(df, f"hub {HUB_DATASET}/{split}") for split, df in frames.items()}


def content_sha256(raw: RawSplits) -> str:
    """A hash of the rows themselves, so the same data from any source counts as the same input."""
    h = hashlib.sha256()
    for split in SPLITS:
        df = raw[split]
        for text, label in zip(df["text"].tolist(), df["label"].tolist()):
            h.update(json.dumps([split, text, int(label)], ensure_ascii=False).encode())
            h.update(b"\n")
    return h.hexdigest()


def to_arrow(df: pd.DataFrame) -> pa.Table:
    return pa.table({"text": pa.array(df["text"].tolist(), pa.string()),
                     "label": pa.array(df["label"].tolist(), pa.int64())})

