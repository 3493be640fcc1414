"""A search's options (tuning/options.py): written once, whole, where Tune never writes; read
back equal by everyone; a cut or changed copy told from a whole one by its content."""
from __future__ import annotations

import json

import pytest

from plumbing.errors import DataError
from tests.helpers import stored_options
from tuning.options import HARNESS_DIR, OPTIONS_FILE, SearchOptions, read_options, write_options
from tuning.storage import open_storage


def _options(storage, name="x", **changes) -> SearchOptions:
    return SearchOptions(name=name, samples=7, max_epochs=3, concurrency=2, seed=5,
                         objectives=("f1", "latency"), space={"lr": {"loguniform": [1e-3, 1e-2]}},
                         points=[{"lr": 0.003}], warm_start=[{"trial_id": "w1", "value": 0.5}],
                         subset=300, search_id="abc").replace(**changes)


@pytest.fixture
def storage(tmp_path):
    return open_storage(str(tmp_path / "runs"), tmp_path)


def test_options_read_back_equal_what_was_written(storage, tmp_path):
    given = _options(storage)
    write_options(given, storage, tmp_path / "report")
    assert read_options(storage, "x") == given
    # beside the experiment in harness/ (Tune copies and re-uploads only top-level *.json/*.pkl)
    stored = (tmp_path / "runs/x" / HARNESS_DIR / OPTIONS_FILE).read_text()
    assert stored_options(stored)["samples"] == 7
    assert stored_options(stored)["objectives"] == ["f1", "latency"]
    assert not (tmp_path / "runs/x" / OPTIONS_FILE).exists()
    assert (tmp_path / "report" / OPTIONS_FILE).read_text() == stored


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.99])
def test_a_cut_copy_is_refused_with_one_line_naming_it(storage, tmp_path, keep):
    given = _options(storage)
    write_options(given, storage, tmp_path / "report")
    beside = tmp_path / "runs/x" / HARNESS_DIR / OPTIONS_FILE
    text = beside.read_bytes()
    beside.write_bytes(text[:int(len(text) * keep)])
    with pytest.raises(DataError, match=f"{beside}.*(cut short|missing or unreadable)"):
        read_options(storage, "x")


def test_a_cut_that_still_parses_is_told_by_its_hash(storage, tmp_path):
    """A copy whose content changed but that is still JSON (the old check only read the last
    byte) is refused: its sha256 does not match."""
    write_options(_options(storage), storage, tmp_path / "report")
    beside = tmp_path / "runs/x" / HARNESS_DIR / OPTIONS_FILE
    doc = json.loads(beside.read_text())
    doc["options"]["subset"] = None  # (what --reseed would then train on: the full data)
    beside.write_text(json.dumps(doc))
    (tmp_path / "report" / OPTIONS_FILE).unlink()
    with pytest.raises(DataError, match="cut short or was changed"):
        read_options(storage, "x")


def test_a_resume_reads_its_own_experiments_options_not_a_namesakes(tmp_path):
    """Two experiments named x in two storages share the local report folder
    artifacts/search/x/; the options stored beside each experiment are the truth, and the
    local copy (the last one written) never speaks for either."""
    a = open_storage(str(tmp_path / "A"), tmp_path)
    b = open_storage(str(tmp_path / "B"), tmp_path)
    report = tmp_path / "artifacts/search/x"
    write_options(_options(a, subset=1500), a, report)
    write_options(_options(b, subset=300), b, report)  # (its report last)
    assert read_options(a, "x").subset == 1500
    assert read_options(b, "x").subset == 300
    (tmp_path / "A/x" / HARNESS_DIR / OPTIONS_FILE).unlink()  # A's lost: B's local copy is not A's
    with pytest.raises(DataError, match="missing"):
        read_options(a, "x")


def test_an_experiment_from_before_harness_reads_its_top_level_options(storage, tmp_path):
    (tmp_path / "runs/old").mkdir(parents=True)
    (tmp_path / "runs/old" / OPTIONS_FILE).write_text(json.dumps(
        {"name": "old", "samples": 4, "max_epochs": 2, "concurrency": 1, "seed": 0,
         "space": None, "subset": 100, "warm_start": False, "objectives": None}))
    options = read_options(storage, "old")
    # what the old file meant by the keys it did not have (tuning/options.py LEGACY)
    assert (options.samples, options.subset, options.keep_checkpoints, options.extendable,
            options.objectives, options.warm_start) == (4, 100, "all", False, ("f1",), [])
