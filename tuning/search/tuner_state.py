"""tuner.pkl kept whole: Tune writes it in place (no temporary file) when a Tuner is made, and a
resumed run uploads it again, in place, at every save of the experiment state (it is among the
top-level files Tune copies to its staging folder). A kill -9 in such a window leaves it cut, and
the experiment could not be resumed; so a copy of the last whole one is kept in harness/ as
tuner.pkl.kept, and put back before a resume where Tune's is cut."""
from __future__ import annotations

import pickletools
import sys

import pyarrow.fs as pafs

from tuning.options import HARNESS_DIR
from tuning.storage import read_bytes

TUNER_STATE, KEPT_STATE = "tuner.pkl", "tuner.pkl.kept"


def keep_tuner_state(fs: pafs.FileSystem, experiment: str) -> None:
    """Copy tuner.pkl, where whole, to harness/ (where Tune writes only our bundle), to a
    temporary name and then moved."""
    state, kept = _tuner_states(experiment)
    if whole_pickle(fs, state):
        fs.create_dir(f"{experiment}/{HARNESS_DIR}")
        fs.copy_file(state, kept + ".tmp")
        fs.move(kept + ".tmp", kept)


def put_back_tuner_state(fs: pafs.FileSystem, experiment: str, text: str) -> None:
    state, kept = _tuner_states(experiment)
    if not whole_pickle(fs, state) and whole_pickle(fs, kept):
        print(f"{text}: {TUNER_STATE} was cut short (a kill while Tune rewrote it): using the "
              f"copy kept in {HARNESS_DIR}/", file=sys.stderr)
        fs.copy_file(kept, state)


def _tuner_states(experiment: str) -> tuple[str, str]:
    """Tune's tuner.pkl and the whole copy kept of it in harness/."""
    return f"{experiment}/{TUNER_STATE}", f"{experiment}/{HARNESS_DIR}/{KEPT_STATE}"


def whole_pickle(fs: pafs.FileSystem, path: str) -> bool:
    """Whether the file is a whole pickle: every opcode read through to its STOP, nothing
    after it (a check of its structure, not of its last byte, which a cut can end on too).
    Nothing in it is built: unpickling tuner.pkl would connect to a stored study's database."""
    try:
        data = read_bytes(fs, path)
        end = max(pos for _, _, pos in pickletools.genops(data))  # (raises on a cut)
        return bool(data) and data[end:end + 1] == b"." and end + 1 == len(data)
    except Exception:  # noqa: BLE001 - missing, cut, or unreadable: not whole
        return False
