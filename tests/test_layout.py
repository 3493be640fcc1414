"""The code's shape (docs/architecture.md): a module a reader takes in one sitting, a function
on one screen, and the arrows between the packages one way only."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

PACKAGES = ("plumbing", "dataprep", "model", "tuning")
SOURCES = sorted(f for pkg in PACKAGES for f in (REPO / pkg).rglob("*.py"))


def _imports(tree) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_module_fits_a_sitting_and_a_function_a_screen(path):
    text = path.read_text()
    assert text.count("\n") <= 250, f"{path.name}: {text.count(chr(10))} lines"
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > 60]
    assert not long, long


def test_what_reads_an_experiment_never_imports_the_search():
    readers = [*(REPO / "tuning/results").glob("*.py"), REPO / "tuning/evaluate_best.py",
               REPO / "tuning/predict.py",
               *(f for f in (REPO / "tuning").glob("*.py"))]  # (the shared modules too)
    for path in readers:
        bad = {m for m in _imports(ast.parse(path.read_text())) if m.startswith("tuning.search")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_the_model_and_dataprep_know_nothing_of_ray_or_tuning():
    for pkg in ("model", "dataprep", "plumbing"):
        for path in (REPO / pkg).rglob("*.py"):
            bad = {m for m in _imports(ast.parse(path.read_text()))
                   if m.split(".")[0] in ("ray", "tuning")}
            assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
