"""The commands in README.md and docs/*.md still run as written: every `python -m MODULE ...`
line of their bash blocks is parsed by that module's own command line (its flags exist and
take those values; nothing runs past parsing), and every `make TARGET ...` line is a target
the Makefile has (`make -n`: what it would run, without running it). The commands themselves
are run by the other tests (searches, evaluate_best, predict, the cluster targets)."""
from __future__ import annotations

import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# the entry point of each module the docs run with `python -m`
# (each has `parse_args(argv)`: argparse and every check of the flags made before any work)
MAINS = {"dataprep": "dataprep.__main__", "tuning.search": "tuning.search.flags",
         "tuning.evaluate_best": "tuning.evaluate_best", "tuning.predict": "tuning.predict",
         "model.train": "model.train"}


def _commands(doc: Path) -> list[tuple[str, list[str]]]:
    """(where, argv) of each command in the doc's ```bash blocks (continuations joined, comments
    dropped, `a && b` split, leading VAR=value assignments dropped) and of each `python -m ...`
    in its text."""
    found = []
    text = doc.read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
             for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`((?:\.venv/bin/)?python -m [^`]+|make [^`]+)`", text)
    for line in lines:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # (a quoted multi-line python -c snippet)
            continue
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|"):
                while command and re.fullmatch(r"[A-Z_]+=.*", command[0]):
                    command.pop(0)
                if command:
                    found.append((f"{doc.name}: {line.strip()}", command))
                command = []
            else:
                command.append(word)
    return found


COMMANDS = [c for doc in DOCS for c in _commands(doc)]


def test_the_docs_have_commands_to_check():
    modules = {argv[2] for _, argv in COMMANDS if argv[0].endswith("python") and argv[1] == "-m"}
    assert set(MAINS) <= modules  # every entry point is documented with a command
    targets = {argv[1] for _, argv in COMMANDS if argv[0] == "make" and len(argv) > 1}
    assert {"all", "test", "test-fast", "cluster-up", "submit", "job-logs"} <= targets


@pytest.mark.parametrize("where,argv", [c for c in COMMANDS
                                        if c[1][0].endswith("python") and c[1][1] == "-m"],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_each_documented_python_command_parses(where, argv):
    module, args = argv[2], argv[3:]
    assert module in MAINS, f"{where}: no such entry point {module}"
    _parses(where, module, args)


def _parses(where: str, module: str, args: list[str]) -> None:
    try:
        importlib.import_module(MAINS[module]).parse_args(args)
    except SystemExit as e:
        pytest.fail(f"{where}: refused by its own parser (exit {e.code})")


@pytest.mark.parametrize("module,args", [
    ("tuning.evaluate_best", ["--pick", "fastest"]),
    ("tuning.search", ["--objectives", "f1,speed"]),
    ("tuning.search", ["--max-epochs", "2", "--grace-period", "3"]),
    ("dataprep", ["--max-vocab", "2"])])
def test_the_docs_check_refuses_what_the_commands_refuse(module, args):
    """The check above goes as far as each command's own checks of its flags, not only
    argparse's: a documented `--pick fastest` would fail it."""
    with pytest.raises(pytest.fail.Exception):
        _parses("a doc", module, args)


@pytest.mark.parametrize("where,argv", [c for c in COMMANDS if c[1][0] == "make"],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_each_documented_make_command_is_a_target(where, argv):
    # -n: print what it would run; -o: take the venv as installed (not remade here)
    proc = subprocess.run(["make", "-n", "-C", str(REPO), "-o", ".venv/.installed", *argv[1:]],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{where}: {proc.stderr.strip()}"


def _prose(doc: Path) -> str:
    return " ".join(doc.read_text().split())  # (a phrase can be wrapped across lines)


def test_the_readme_fits_in_150_lines():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


def test_no_doc_says_a_stage_runs_by_default_when_none_does():
    from tuning.search.flags import INTENSIFY_TOP

    # (were a stage the default, these phrases would be true: the docs would need another look)
    assert INTENSIFY_TOP == 0, "the default runs a stage now: check the docs' wording"
    claims = re.compile(r"stage \(the default\)|\(a stage follows\)|a stage follows by default",
                        flags=re.IGNORECASE)
    for doc in DOCS:
        assert not claims.findall(_prose(doc)), doc.name


def test_the_guide_says_retention_keeps_the_frontiers_checkpoints():
    """tuning/search/retention.py keeps the F1/latency frontier's best checkpoints, running and
    at the end (what `--pick fastest-within` picks from): the guide's --keep-checkpoints says so."""
    (paragraph,) = [p for p in (REPO / "docs" / "guide.md").read_text().split("\n\n")
                    if p.startswith("**Checkpoints** (`tuning/search/retention.py`, `--keep-checkpoints")]
    assert paragraph.count("frontier") >= 2, paragraph  # while running, and when it ends
