"""Where experiments live: a local folder, or any URI pyarrow opens (s3://, gs://, file://, ...,
with a query string too: s3://bucket/exps?endpoint_override=host:9000&scheme=http).

The URI is parsed once into a filesystem and a path on it; paths inside are joined on that path
(never by pasting strings onto the URI), and Ray Tune is handed the filesystem and the path.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from plumbing.errors import UsageError

STATE_GLOB = "experiment_state-"
CHECKPOINT_FILE = "state.pt"  # a trial's training state in each of its Tune checkpoints


@dataclass(frozen=True)
class Storage:
    fs: pafs.FileSystem
    root: str   # the storage folder, as a path on `fs`
    text: str   # as the user wrote it: for messages and the commands we print

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def ray_kwargs(self) -> dict:
        """storage_path / storage_filesystem for RunConfig, Tuner.restore and can_restore."""
        # (a local folder through tuning/atomic_fs.py: Tune's uploads land whole or not at all)
        from tuning.atomic_fs import atomic_local_fs

        return {"storage_path": self.root,
                "storage_filesystem": atomic_local_fs() if self.is_local else self.fs}

    def uri(self, *parts: str) -> str:
        """How a user names a folder inside this storage (the URI's path extended, query kept)."""
        if self.is_local:
            return self.path(*parts)
        split = urlsplit(self.text)
        return urlunsplit(split._replace(path=posixpath.join(split.path or "/", *parts)))

    def is_experiment(self, name: str) -> bool:
        return bool(self._state_files(name))

    def latest_experiment(self) -> str | None:
        """The name of the experiment whose state was saved last, if any."""
        try:
            folders = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except OSError:
            return None
        newest = {}
        for folder in folders:
            if folder.type == pafs.FileType.Directory:
                states = self._state_files(folder.base_name)
                if states:
                    newest[folder.base_name] = max(s.mtime_ns or 0 for s in states)
        return max(newest, key=newest.get, default=None)

    def _state_files(self, name: str) -> list[pafs.FileInfo]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(name), allow_not_found=True))
        except OSError:
            return []
        return [i for i in infos if i.base_name.startswith(STATE_GLOB) and i.base_name.endswith(".json")]

    def read_json(self, *parts: str):
        return json.loads(read_bytes(self.fs, self.path(*parts)))

    def write_json(self, doc, *parts: str) -> None:
        write_whole(self.fs, self.path(*parts),
                    (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_whole(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Written whole or not at all: a local file is renamed into place (its folders made); an
    object store's upload is atomic."""
    if isinstance(fs, pafs.LocalFileSystem):
        from plumbing.files import write_bytes

        write_bytes(path, data)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def open_storage(text: str | None, default: Path, flag: str = "--storage") -> Storage:
    """A folder (default: `default`) or a URI; an unknown scheme or a bad URI is a UsageError."""
    if text is None or "://" not in text:
        folder = str(Path(text or default).resolve())
        return Storage(pafs.LocalFileSystem(), folder, folder)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OSError) as e:
        raise UsageError(f"{flag} {text}: not a storage URI pyarrow can open ({e})") from None
    return Storage(fs, path.rstrip("/"), text)


def open_experiment(text: str, flag: str = "--experiment") -> tuple[Storage, str]:
    """`--experiment FOLDER|URI` (its last path part is the experiment's name) -> the storage it
    lives in, and the name."""
    storage = open_storage(text, Path(text), flag)
    if storage.is_local and not Path(storage.root).is_dir():
        raise UsageError(f"{flag} {text}: no such folder")
    parent, name = posixpath.split(storage.root)
    if not name:
        raise UsageError(f"{flag} {text}: name an experiment folder (…/NAME)")
    if storage.is_local:
        return Storage(storage.fs, parent, parent), name
    split = urlsplit(text)
    parent_uri = urlunsplit(split._replace(path=posixpath.dirname(split.path.rstrip("/"))))
    return Storage(storage.fs, parent, parent_uri), name


def read_checkpoint(checkpoint) -> dict:
    """The training state a trial saved in a Tune checkpoint (local or in a bucket)."""
    from model.checkpoint import load_checkpoint

    with checkpoint.as_directory() as folder:
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE)
