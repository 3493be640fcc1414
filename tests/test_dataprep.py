"""dataprep: every source kind, every rejection, the tolerated variants, idempotence and safety."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from dataprep import build
from dataprep.schema import LABELS
from dataprep.vocab import Vocab
from plumbing.errors import DataError
from plumbing.files import sha256_file
from plumbing.paths import paths
from tests.conftest import real_data_dir, run_cli

ROWS = {
    "train": [("i feel so sad and alone", "sadness"), ("i am happy today", "joy"),
              ("i love you dearly", "love"), ("i am so angry", "anger"),
              ("i feel scared; really", "fear"), ("wow i did not expect that", "surprise"),
              ("i feel happy happy", "joy")],
    "val": [("sad again", "sadness"), ("so happy", "joy"), ("lovely day my love", "love"),
            ("angry words", "anger"), ("scared now", "fear"), ("what a surprise", "surprise")],
    "test": [("i feel sad", "sadness"), ("joyful zebra", "joy"), ("love", "love"),
             ("anger", "anger"), ("fear", "fear"), ("surprise", "surprise")],
}


def write_txt(folder, rows=ROWS, newline="\n", bom=False, trailing=""):
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        text = newline.join(f"{t};{label}" for t, label in items) + newline + trailing
        (folder / f"{split}.txt").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return folder


def write_table(folder, kind, label_as="name", rows=ROWS, val_name="validation"):
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        name = val_name if split == "val" else split
        df = pd.DataFrame({"text": [t for t, _ in items],
                           "label": [lab if label_as == "name" else LABELS.index(lab)
                                     for _, lab in items]})
        if kind == "csv":
            df.to_csv(folder / f"{name}.csv", index=False)
        else:
            df.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def outputs_digest(root):
    p = paths(root)
    return {str(f): sha256_file(f) for f in build.outputs_of(p) + [p.manifest]}


def prep(root, source, **kw):
    return build.run(paths(root), source, log=lambda *_: None, **kw)


# ---- tokeniser and vocab ----------------------------------------------------------------------

def test_tokenizer_lowercases_and_keeps_contractions():
    from dataprep.vocab import tokenize

    assert tokenize("I'm SO happy, don't stop!") == ["i'm", "so", "happy", ",", "don't", "stop", "!"]


def test_vocab_is_fit_on_train_only_and_deterministic(root):
    prep(root, write_txt(root / "src"), min_freq=1)
    vocab = Vocab.load(paths(root).vocab)
    assert vocab.itos[:2] == ["<pad>", "<unk>"]
    assert "happy" in vocab.stoi and "zebra" not in vocab.stoi  # "zebra" is only in test
    # frequency first ("i" is most frequent in train), ties alphabetical
    assert vocab.itos[2] == "i"
    counts = {}
    for text, _ in ROWS["train"]:
        for tok in text.lower().replace(";", " ; ").split():
            counts[tok] = counts.get(tok, 0) + 1
    order = vocab.itos[2:]
    keys = [(-counts[t], t) for t in order]
    assert keys == sorted(keys)
    # unknown words map to <unk>=1
    assert vocab.encode("zebra happy") == [1, vocab.stoi["happy"]]
    first = paths(root).vocab.read_bytes()
    prep(root, root / "src", min_freq=1, force=True)
    assert paths(root).vocab.read_bytes() == first


def test_min_freq_and_max_vocab(root):
    vocab = Vocab.fit(["a a a b b c", "a b d"], min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b"]
    assert Vocab.fit(["a a a b b c"], min_freq=1, max_vocab=3).itos == ["<pad>", "<unk>", "a"]


# ---- source kinds -----------------------------------------------------------------------------

def read_processed(root, split):
    return pq.read_table(paths(root).processed_split(split)).to_pandas()


@pytest.mark.parametrize("kind,label_as,val_name", [
    ("txt", "name", "val"), ("parquet", "name", "validation"), ("parquet", "id", "val"),
    ("csv", "name", "val"), ("csv", "id", "validation")])
def test_each_source_kind_builds_the_same_outputs(root, kind, label_as, val_name):
    src = write_txt(root / "src") if kind == "txt" else write_table(root / "src", kind, label_as,
                                                                     val_name=val_name)
    assert prep(root, src, min_freq=1) == "built"
    train = read_processed(root, "train")
    assert list(train.columns) == ["text", "label", "input_ids", "length"]
    assert train["label"].tolist() == [LABELS.index(lab) for _, lab in ROWS["train"]]
    assert train["text"][4] == "i feel scared; really"  # split on the last ';'
    assert (train["length"] == train["input_ids"].map(len)).all()
    assert len(read_processed(root, "val")) == 6 and len(read_processed(root, "test")) == 6
    manifest = json.loads(paths(root).manifest.read_text())
    assert manifest["counts"]["train"]["rows"] == 7
    reference = root / "ref"
    # the same rows from any kind of source give byte-identical parquet and vocab
    prep(reference, write_txt(reference / "src"), min_freq=1)
    for split in ("train", "val", "test"):
        assert sha256_file(paths(root).processed_split(split)) == \
            sha256_file(paths(reference).processed_split(split))


def test_raw_cache_serves_later_runs_without_a_source(root):
    src = write_txt(root / "src")
    prep(root, src)
    assert all(paths(root).raw_split(s).is_file() for s in ("train", "validation", "test"))
    before = outputs_digest(root)
    (src / "train.txt").unlink()
    assert prep(root, None) == "up to date"  # read from data/raw, same rows: nothing to do
    assert prep(root, None, force=True) == "built"
    after = outputs_digest(root)
    manifest = str(paths(root).manifest)
    assert {k: v for k, v in after.items() if k != manifest} == \
        {k: v for k, v in before.items() if k != manifest}
    assert json.loads(paths(root).manifest.read_text())["source"] == "raw cache"


def test_hub_without_network_says_how_to_use_local_files(root):
    proc = run_cli("dataprep", root=root)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "--source DIR" in last and "EMOTION_DATA_DIR" in last
    assert not paths(root).data_processed.joinpath("train.parquet").exists()


# ---- rejections -------------------------------------------------------------------------------

def _bad(root, split, content: bytes, ext="txt"):
    src = write_txt(root / "src")
    (src / f"{split}.txt").unlink()
    (src / f"{split}.{ext}").write_bytes(content)
    return src


@pytest.mark.parametrize("content,message", [
    (b"i feel fine;joy\ni feel odd;happyish\n", "train.txt:2: unknown label 'happyish'"),
    (b"i feel fine;joy\nno delimiter here\n", "train.txt:2: no ';'"),
    (b"i feel fine;joy\n  ;sadness\n", "train.txt:2: empty text"),
    (b"", "train.txt: empty file"),
    (b"\n\n", "train.txt: empty file"),
    (b"i feel fine;joy\ncaf\xe9 time;joy\n", "train.txt:2: bytes that are not UTF-8"),
    (b"i feel fine;joy\nnul\x00byte;joy\n", "train.txt:2: NUL byte"),
    (b"i feel fine;joy\n\ni feel fine;joy\n", "train.txt:2: no ';'"),
])
def test_bad_txt_is_rejected_naming_file_and_line(root, content, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        prep(root, _bad(root, "train", content))


def test_missing_split_is_rejected(root):
    src = write_txt(root / "src")
    (src / "test.txt").unlink()
    with pytest.raises(DataError, match="missing split 'test'"):
        prep(root, src)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("frame,message", [
    (pd.DataFrame({"sentence": ["a"], "label": ["joy"]}), "no column 'text'"),
    (pd.DataFrame({"text": ["a"], "emotion": ["joy"]}), "no column 'label'"),
    (pd.DataFrame({"text": ["a", "b"], "label": [1, 7]}), "row 2: label id 7 outside 0-5"),
    (pd.DataFrame({"text": ["a", "b"], "label": [1, -1]}), "row 2: label id -1 outside 0-5"),
    (pd.DataFrame({"text": ["a", "b"], "label": ["joy", "glee"]}), "row 2: unknown label 'glee'"),
    (pd.DataFrame({"text": ["a", " "], "label": ["joy", "joy"]}), "row 2: empty text"),
    (pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}),
     "empty file"),
])
def test_bad_tables_are_rejected_naming_file_and_row(root, kind, frame, message):
    src = write_table(root / "src", kind)
    path = src / f"test.{kind}"
    frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path, index=False)
    with pytest.raises(DataError, match=f"test.{kind}.*{message}"):
        prep(root, src)


def test_ambiguous_split_files_are_rejected(root):
    src = write_txt(root / "src")
    write_table(src, "csv")
    with pytest.raises(DataError, match="ambiguous"):
        prep(root, src)


def write_hub_snapshot(folder, shards=None):
    """The layout of a Hugging Face hub download of dair-ai/emotion: split/*-0000N-of-0000M.parquet
    (label ids), beside unsplit/ (train only). `shards` cuts train into that many files."""
    split_dir = folder / "split"
    split_dir.mkdir(parents=True)
    for split, items in ROWS.items():
        name = "validation" if split == "val" else split
        df = pd.DataFrame({"text": [t for t, _ in items], "label": [LABELS.index(lab) for _, lab in items]})
        n = (shards or 1) if split == "train" else 1
        for i in range(n):
            part = df.iloc[len(df) * i // n: len(df) * (i + 1) // n]
            part.to_parquet(split_dir / f"{name}-{i:05d}-of-{n:05d}.parquet", index=False)
    (folder / "unsplit").mkdir()
    pd.DataFrame({"text": ["x"], "label": [0]}).to_parquet(
        folder / "unsplit" / "train-00000-of-00001.parquet", index=False)
    return folder


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("point_at", ["snapshot", "split folder"])
def test_a_hub_snapshot_builds_the_same_outputs_as_the_release_files(root, shards, point_at):
    snapshot = write_hub_snapshot(root / "hub", shards)
    assert prep(root, snapshot if point_at == "snapshot" else snapshot / "split", min_freq=1) == "built"
    reference = root / "ref"
    prep(reference, write_txt(reference / "src"), min_freq=1)
    for split in ("train", "val", "test"):
        assert sha256_file(paths(root).processed_split(split)) == \
            sha256_file(paths(reference).processed_split(split))
    manifest = json.loads(paths(root).manifest.read_text())
    assert len(manifest["inputs"]) == shards + 2


def test_ambiguous_or_incomplete_hub_shards_are_refused(root):
    snapshot = write_hub_snapshot(root / "hub", shards=2)
    split_dir = snapshot / "split"
    (split_dir / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(DataError, match=r"split 'train' is incomplete: shard 1 of 2 is missing"):
        prep(root, snapshot)
    pd.DataFrame({"text": ["a"], "label": [0]}).to_parquet(split_dir / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"split 'train' is ambiguous: shards of 2 different sets"):
        prep(root, snapshot)
    (split_dir / "train-00000-of-00002.parquet").unlink()
    write_txt(split_dir)  # a train.txt beside the shards: which one?
    with pytest.raises(DataError, match=r"split 'train' is ambiguous: train.txt, 1 shard"):
        prep(root, snapshot)


# ---- tolerated variants -----------------------------------------------------------------------

@pytest.mark.parametrize("variant", [
    {"newline": "\r\n"}, {"bom": True}, {"trailing": "\n"}, {"newline": "\r\n", "bom": True,
                                                              "trailing": "\r\n"}])
def test_crlf_bom_and_trailing_empty_line_are_tolerated(root, variant):
    prep(root, write_txt(root / "src", **variant))
    train = read_processed(root, "train")
    assert train["text"].tolist() == [t for t, _ in ROWS["train"]]


# ---- idempotence and safety -------------------------------------------------------------------

def test_second_run_changes_nothing_and_force_rebuilds_identically(root):
    src = write_txt(root / "src")
    assert prep(root, src) == "built"
    before = outputs_digest(root)
    mtimes = {f: paths(root).root.joinpath(f).stat().st_mtime_ns for f in before}
    assert prep(root, src) == "up to date"
    assert {f: paths(root).root.joinpath(f).stat().st_mtime_ns for f in before} == mtimes
    assert prep(root, src, force=True) == "built"
    assert outputs_digest(root) == before
    assert prep(root, src, min_freq=1) == "built"  # new parameters: rebuilt
    assert outputs_digest(root) != before


def test_a_failing_run_leaves_the_previous_outputs_untouched(root):
    prep(root, write_txt(root / "good"))
    before = outputs_digest(root)
    bad = write_txt(root / "bad")
    (bad / "val.txt").write_bytes(b"fine;joy\nbroken;nolabel\n")
    with pytest.raises(DataError):
        prep(root, bad, force=True)
    assert outputs_digest(root) == before
    leftovers = [f for f in paths(root).root.rglob("*.tmp")]
    assert leftovers == []


def test_a_corrupted_output_is_detected_and_rebuilt(root):
    src = write_txt(root / "src")
    prep(root, src)
    before = outputs_digest(root)
    paths(root).processed_split("val").write_bytes(b"garbage")
    assert prep(root, src) == "built"
    assert outputs_digest(root) == before


def test_two_runs_at_once_wait_for_each_other_and_end_consistent(root):
    """Two runs started while a third party holds the lock both wait (they overlap for sure);
    once it is released, one builds and the other finds nothing to do."""
    import fcntl
    import time

    src = write_txt(root / "src")
    cmd = [sys.executable, "-m", "dataprep", "--source", str(src)]
    env = {"EMOTION_ROOT": str(root), "PATH": "/usr/bin:/bin"}
    lock = paths(root).data_processed / ".dataprep.lock"
    lock.parent.mkdir(parents=True)
    logs = [root / f"run{i}.log" for i in range(2)]
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [subprocess.Popen(cmd, env=env, stderr=log.open("w"), text=True) for log in logs]
        deadline = time.time() + 120
        while not all("waiting for it to finish" in log.read_text() for log in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                [log.read_text() for log in logs]
            time.sleep(0.1)
        assert not paths(root).manifest.exists()  # neither went past the lock
        fcntl.flock(held, fcntl.LOCK_UN)
    results = [(p.wait(timeout=120), log.read_text()) for p, log in zip(procs, logs)]
    assert [rc for rc, _ in results] == [0, 0], results
    outputs = "".join(err for _, err in results)
    assert outputs.count("built data/processed") == 1 and outputs.count("nothing to do") == 1
    manifest = json.loads(paths(root).manifest.read_text())
    assert all(sha256_file(root / k) == v for k, v in manifest["outputs"].items())


# ---- CLI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--min-freq", "0"], "--min-freq"), (["--max-vocab", "2"], "--max-vocab"),
    (["--source", "/no/such/folder"], "--source"), (["--bogus"], "--bogus")])
def test_usage_errors_exit_2_with_one_line(root, args, needle):
    proc = run_cli("dataprep", *args, root=root)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_data_error_exits_1_with_one_line(root):
    src = _bad(root, "test", b"fine;joy\nbroken;nolabel\n")
    proc = run_cli("dataprep", "--source", str(src), root=root)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].endswith("test.txt:2: unknown label 'nolabel' "
                                                         "(expected one of sadness, joy, love, "
                                                         "anger, fear, surprise or 0-5)")


# ---- the real data ----------------------------------------------------------------------------

def test_real_data_counts_match_source_md(prepared_root):
    manifest = json.loads(paths(prepared_root).manifest.read_text())
    counts = manifest["counts"]
    assert {s: c["rows"] for s, c in counts.items()} == {"train": 16000, "validation": 2000,
                                                          "test": 2000}
    assert counts["train"]["labels"] == {"sadness": 4666, "joy": 5362, "love": 1304, "anger": 2159,
                                         "fear": 1937, "surprise": 572}
    assert counts["validation"]["labels"] == {"sadness": 550, "joy": 704, "love": 178,
                                              "anger": 275, "fear": 212, "surprise": 81}
    assert counts["test"]["labels"] == {"sadness": 581, "joy": 695, "love": 159, "anger": 275,
                                        "fear": 224, "surprise": 66}
    assert manifest["inputs"]["train.txt"] == \
        "3ab03d945a6cb783d818ccd06dafd52d2ed8b4f62f0f85a09d7d11870865b190"


def test_real_data_second_run_reports_nothing_to_do(prepared_root):
    before = outputs_digest(prepared_root)
    proc = run_cli("dataprep", root=prepared_root, env={"EMOTION_DATA_DIR": str(real_data_dir())})
    assert proc.returncode == 0
    assert "nothing to do" in proc.stderr
    assert "warning: 11 texts are in both train and test" in proc.stderr
    assert outputs_digest(prepared_root) == before
