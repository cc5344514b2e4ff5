"""Atomic output: write under a temporary name in the same folder, rename when complete."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pptkit.errors import InputError


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Check, before any work and without writing anything, that the file `path` may be
    written: not a folder, not an existing file unless `overwrite`, and no file in the way of
    its folder (which is created by whoever first writes there, once the inputs proved good)."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder; give the path of the file to write", path)
    if path.exists() and not overwrite:
        raise InputError("output already exists (pass --overwrite to replace it)", path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError("is a file, so it cannot hold the output's folder", ancestor)
    return path


def fsync_file(path: str | Path) -> None:
    """Flush a closed file's data to disk, so that a rename after it publishes whole data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (renames into it) to disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(path: str | Path) -> Path:
    """The in-progress name used for `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to `path`, on failure (or Ctrl-C) remove it."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file (a table, a JSON report) so readers never see half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
