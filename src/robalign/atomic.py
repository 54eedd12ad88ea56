"""Atomic writes: a reader, or another process writing the same file, never sees half of one.

Everything is written under a temporary name next to its destination (same folder, so same file system)
and renamed into place; a rename is atomic, so a kill leaves the old content or the new, never a mix.
A temporary name carries the process id, so two processes writing the same destination never write into
one temporary file; the last rename wins. When the writer raises, the temporary file or folder is deleted
and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def temporary_name(path: Path) -> Path:
    """Where this process writes `path` before renaming it: hidden, next to it, unique to the process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def open_file(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = None) -> Iterator[IO]:
    """A file opened for writing (`mode` "w" or "wb") under `temporary_name(path)`, renamed to `path` once
    the `with` block ends without an exception; parent folders are created.

    Example:
        with open_file(path) as fh:
            fh.write(text)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a successful rename there is nothing left to remove


def write_text(path: str | os.PathLike, text: str, *, encoding: str | None = None) -> Path:
    """Writes `text` to `path` atomically; returns `path`."""
    with open_file(path, encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj, **dumps) -> Path:
    """Writes `json.dumps(obj, **dumps)` (no trailing newline) to `path` atomically; returns `path`."""
    return write_text(path, json.dumps(obj, **dumps))


def write_tensors(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    """Saves `tensors` (safetensors) next to `path` under a per-process name, then renames it into place."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fsync_dir(path: Path) -> None:
    """Flushes a folder's entries (a rename into it, a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def directory(path: str | os.PathLike, *, tmp: Path | None = None, replace: bool = True,
              durable: bool = False) -> Iterator[Path]:
    """An empty folder to fill, renamed to `path` once the `with` block ends without an exception.

    Args:
        path: the destination folder; its parent is created.
        tmp: the temporary folder (default `temporary_name(path)`). A caller names its own when something
            else must recognise it (checkpoint.remove_partial deletes `.tmp-*`; --overwrite removes
            `.tmp-final`); a leftover of that name, from a killed writer, is deleted first.
        replace: an existing `path` is renamed aside (`.NAME.<pid>.old`), the new folder renamed into place,
            then the old one deleted: `path` is never a half-deleted folder (a kill between the two renames,
            a moment, leaves no `path`; a failed second rename puts the old folder back). False: the rename
            fails (OSError) on an existing non-empty `path`, so a folder another process finished first is
            kept, never deleted under its readers.
        durable: fsync the parent after the rename, so the rename itself survives a power cut.

    Example:
        with directory(run / "final") as tmp:
            model.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tmp) if tmp is not None else temporary_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        old = None
        if replace and path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)
            raise
        if durable:
            fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_directory(path: Path, doomed: Path) -> None:
    """Deletes the folder `path`, renamed to `doomed` first: a kill mid-delete leaves a half-empty `doomed`
    (a temporary name its owner cleans), never a half-empty `path`."""
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
