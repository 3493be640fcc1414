"""tuning/atomic_fs.py: what Tune uploads to a local folder lands whole or not at all."""
from __future__ import annotations

import pickle
import subprocess
import sys

import pyarrow.fs as pafs

from tuning.atomic_fs import atomic_local_fs

KILLED_MID_WRITE = """
import os, signal, sys
from tuning.atomic_fs import atomic_local_fs
out = atomic_local_fs().open_output_stream(sys.argv[1])
out.write(b"new, cut short")
out.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_mid_write_leaves_the_file_as_it_was(tmp_path):
    target = tmp_path / "searcher-state-x.pkl"
    target.write_bytes(b"the whole earlier state")
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(target)], check=False)
    assert proc.returncode == -9  # the kill landed while the stream was open
    assert target.read_bytes() == b"the whole earlier state"
    # the cut copy is a hidden temporary, which no glob of Tune's (searcher-state-*.pkl) matches
    assert [p.name for p in tmp_path.glob("searcher-state-*")] == [target.name]


def test_uploads_land_whole_and_the_filesystem_travels_to_workers(tmp_path):
    (tmp_path / "src/sub").mkdir(parents=True)
    (tmp_path / "src/a.pkl").write_bytes(b"x" * 3_000_000)
    (tmp_path / "src/sub/b.json").write_text("{}")
    fs = pickle.loads(pickle.dumps(atomic_local_fs()))  # (as Tune ships it)
    pafs.copy_files(str(tmp_path / "src"), str(tmp_path / "dst"), destination_filesystem=fs)
    assert (tmp_path / "dst/a.pkl").read_bytes() == b"x" * 3_000_000
    assert (tmp_path / "dst/sub/b.json").read_text() == "{}"
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["a.pkl", "sub"]


def test_a_copy_that_fails_leaves_the_target_as_it_was_and_gz_stays_compressed(tmp_path):
    import gzip

    import pytest

    fs = atomic_local_fs()
    (tmp_path / "target").write_bytes(b"earlier")
    with pytest.raises(OSError):
        fs.copy_file(str(tmp_path / "missing"), str(tmp_path / "target"))
    assert (tmp_path / "target").read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no temporary left
    (tmp_path / "a.gz").write_bytes(gzip.compress(b"hello"))
    fs.copy_file(str(tmp_path / "a.gz"), str(tmp_path / "b.gz"))
    assert (tmp_path / "b.gz").read_bytes() == (tmp_path / "a.gz").read_bytes()
