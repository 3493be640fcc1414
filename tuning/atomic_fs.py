"""A local filesystem for Ray Tune whose every written file appears whole or not at all.

Tune writes an experiment's state into a staging folder and uploads it to the storage path with
pyarrow's copy_files, which writes each file in place: a kill -9 during an upload leaves a file
cut (a searcher-state-*.pkl cut so is read at `--resume` as `EOFError: Ran out of input`, and
Tune then silently restarts the experiment from nothing). An object store's upload is atomic;
a local folder's is made so here: each output stream writes a temporary file beside its target
and renames it into place on close (os.replace: atomic on POSIX). Everything else is pyarrow's
LocalFileSystem. Tune gets it as `storage_filesystem` for a local storage path (storage.py).
"""
from __future__ import annotations

import contextlib
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs


class _RenamedOnClose:
    """A file object writing `.NAME.tmp-<id>` beside `path` (hidden: no glob of Tune's or ours
    matches it), renamed to `path` when closed."""

    def __init__(self, path: str):
        folder, name = os.path.split(path)
        self.path, self.tmp = path, os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()

    @property
    def closed(self) -> bool:
        return self.file.closed

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except BaseException:
            self.abort()  # (a write that failed: the target stays as it was)
            raise

    def flush(self) -> None:
        self.file.flush()

    def tell(self) -> int:
        return self.file.tell()

    def close(self) -> None:
        if self.file.closed:
            return
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Close without renaming: the temporary goes, the target stays as it was."""
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp)


class AtomicLocalHandler(pafs.FileSystemHandler):
    """pyarrow's LocalFileSystem, with output streams renamed into place on close."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other) -> bool:
        return not self == other

    def __reduce__(self):  # (Tune ships the filesystem to its trial workers)
        return AtomicLocalHandler, ()

    def get_type_name(self) -> str:
        return "atomic-local"

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the root folder's contents")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        target = _RenamedOnClose(dest)
        try:
            with self.local.open_input_stream(src, compression=None) as source:
                while chunk := source.read(1 << 20):
                    target.write(chunk)
        except BaseException:
            target.abort()
            raise
        target.close()

    def open_input_stream(self, path: str):
        return self.local.open_input_stream(path, compression=None)  # (bytes as stored)

    def open_input_file(self, path: str):
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata):
        return pa.PythonFile(_RenamedOnClose(path), mode="w")

    def open_append_stream(self, path: str, metadata):
        return self.local.open_append_stream(path, compression=None)


def atomic_local_fs() -> pafs.FileSystem:
    return pafs.PyFileSystem(AtomicLocalHandler())
