"""Crash-safe partial state of a store being written: one shard file per finished item.

HDF5 is not crash-safe: a process killed while it extends a file can leave the whole file
unreadable, finished groups included. So no file that holds finished work is ever open for
writing. Each finished item becomes its own small HDF5 file (the item's group exactly as the
store holds it), written under a temporary name, flushed to disk and renamed: a shard either
is complete or does not exist. When every item is done the shards are merged, in item order,
into the store (again under a temporary name, renamed when complete) and the folder removed.

Layout of ``<output>.parts/``::

    meta.h5           the store's root attributes (written before the first shard)
    <key>.h5          one finished item; key = a hash of its group name (file-name safe)
    *.tmp             a shard or meta file being written (removed when the run continues)

A run killed at any instant therefore keeps every shard renamed before the kill, and
`PartialStore.open(..., resume=True)` continues from them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from pptkit.data.store import (
    ObjectSample,
    StoreMeta,
    VoxelScene,
    complete_groups,
    group_name,
    open_store,
    write_meta,
    write_object,
    write_scene,
)
from pptkit.errors import InputError
from pptkit.fileio import atomic_path, fsync_dir, fsync_file, temporary_name

META_FILE = "meta.h5"


def parts_folder(output: str | Path) -> Path:
    """The folder that holds the finished items of an unfinished `output`."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def shard_name(group: str) -> str:
    """File name of the shard holding `group` (a hash: group names can be long or odd)."""
    return hashlib.sha1(group.encode()).hexdigest()[:20] + ".h5"


class PartialStore:
    """The finished items of an unfinished store, one shard file each (see the module doc).

    Nothing is written before the first `add`: a run whose first item is bad leaves no trace,
    and an earlier folder that is not continued is only replaced then.
    """

    def __init__(self, folder: Path, meta: StoreMeta, done: dict[str, Path], stale: bool):
        self.folder = folder
        self.meta = meta
        self.done = done  # group name -> shard path
        self._stale = stale  # an existing folder to replace on the first add
        self._ready = not stale and (folder / META_FILE).is_file()  # meta written

    @classmethod
    def open(cls, folder: str | Path, meta: StoreMeta, resume: bool) -> PartialStore:
        """The partial store in `folder`: continued when `resume` and it holds a run with the
        same settings (InputError naming the folder when the settings differ), else new."""
        folder = Path(folder)
        if not folder.exists():
            return cls(folder, meta, {}, stale=False)
        if not folder.is_dir():
            raise InputError("is in the way of the partial output folder; move it away", folder)
        if not resume or not (folder / META_FILE).is_file():
            return cls(folder, meta, {}, stale=True)
        f, old = open_store(folder / META_FILE)
        f.close()
        differences = meta.differences(old)
        if differences:
            raise InputError(
                f"cannot resume: the unfinished output was made with different settings "
                f"({', '.join(differences)}); run without --resume to start over", folder)
        for leftover in folder.glob("*.tmp"):  # cut short by a kill
            leftover.unlink()
        return cls(folder, old, _finished_shards(folder), stale=False)

    def add(self, item: str, record: VoxelScene | ObjectSample) -> None:
        """Store one finished item as a shard; when this returns, the item survives any kill."""
        import h5py

        if not self._ready:
            self._create()
        name = group_name(item)
        path = self.folder / shard_name(name)
        tmp = temporary_name(path)
        with h5py.File(tmp, "w") as f:
            if isinstance(record, VoxelScene):
                write_scene(f, item, record)
            else:
                write_object(f, item, record)
        fsync_file(tmp)
        os.replace(tmp, path)
        self.done[name] = path

    def merge(self, items: list[str], output: Path, progress=None) -> None:
        """Write the store `output` from the shards of `items` (in that order), atomically,
        then remove the folder. `progress` wraps the item iteration (e.g. a progress bar)."""
        import h5py

        missing = [item for item in items if group_name(item) not in self.done]
        if missing:
            raise ValueError(f"merge before every item is done ({len(missing)} missing)")
        with atomic_path(output) as tmp:
            with h5py.File(tmp, "w") as out:
                write_meta(out, self.meta)
                for item in (items if progress is None else progress(items)):
                    name = group_name(item)
                    with h5py.File(self.done[name], "r") as shard:
                        shard.copy(shard[name], out, name=name)
            fsync_file(tmp)
        fsync_dir(output.parent)
        self.remove()

    def remove(self) -> None:
        """Remove this run's folder and its shards; an earlier run's folder that this one
        did not continue (and has not yet replaced) is left alone."""
        if self._ready:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.done = {}
        self._ready = False

    def _create(self) -> None:
        if self._stale:
            shutil.rmtree(self.folder)
            self._stale = False
        self.folder.mkdir(parents=True, exist_ok=True)
        import h5py

        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.meta = replace(self.meta, created=created)
        with atomic_path(self.folder / META_FILE) as tmp:
            with h5py.File(tmp, "w") as f:
                write_meta(f, self.meta)
            fsync_file(tmp)
        self._ready = True


def _finished_shards(folder: Path) -> dict[str, Path]:
    """group name -> shard for every readable, complete shard in `folder`; anything else
    (a shard cut short by a disk failure, say) is redone."""
    import h5py

    done = {}
    for path in sorted(folder.glob("*.h5")):
        if path.name == META_FILE:
            continue
        try:
            with h5py.File(path, "r") as f:
                groups = complete_groups(f)
        except (OSError, KeyError, RuntimeError):
            continue
        if len(groups) == 1 and shard_name(groups[0]) == path.name:
            done[groups[0]] = path
    return done
