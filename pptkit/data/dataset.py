"""Datasets over a preprocessed HDF5 store, read lazily one scene (or object) at a time.

The h5py handle is opened on first access in each process and re-opened when the process
id changes, so the datasets work in DataLoader workers whether they are forked or spawned
(HDF5 handles must not be shared across a fork). Items are raw store arrays: augmentation
belongs to the stage that builds batches, because it needs a random generator per sample
(pptkit.data.transforms take (sample, rng)) to stay reproducible across workers and resumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from pptkit.data.store import POINT_KEYS, StoreMeta, complete_groups, open_store
from pptkit.errors import InputError

Sample = dict[str, Any]

_SCENE_KEYS = ("grid_coord", "coord", "color", "normal", "segment", "instance")


class _StoreDataset(Dataset):
    """Index of the complete groups of a store file of one `kind`, and a per-process handle."""

    kind = ""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        f, meta = open_store(self.path)
        with f:
            if meta.kind != self.kind:
                raise InputError(f"holds {meta.kind}s, not {self.kind}s", self.path)
            self.groups = complete_groups(f)
        self.meta: StoreMeta = meta
        self._file = None
        self._pid: int | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.meta.class_names

    @property
    def dataset_name(self) -> str:
        return self.meta.dataset

    def __len__(self) -> int:
        return len(self.groups)

    def _group(self, index: int):
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")  # never reuse a handle across a fork
            self._pid = os.getpid()
        return self._file[self.groups[index]]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state


class SceneDataset(_StoreDataset):
    """Scenes of a store: each item is a dict of voxel-level arrays (see pptkit.data.store).

    Keys: name, grid_coord, coord, color, normal, segment, instance; with `with_points` also
    point_segment and inverse (for evaluating on the original points). With
    `rows="points"` the items are the original points instead (coord, color, normal, segment,
    instance per point, no grid_coord): training then voxelizes them itself (GridSample), so
    a random point per voxel is a real augmentation. Format-1 stores hold no original points:
    `has_points` is False and their items stay voxel rows.
    """

    kind = "scene"

    def __init__(self, path: str | Path, with_points: bool = False, rows: Literal["voxels", "points"] = "voxels"):
        super().__init__(path)
        self.with_points = with_points
        self.has_points = self.meta.format_version >= 2
        self.rows = rows if self.has_points else "voxels"

    @property
    def grid_size(self) -> float:
        return self.meta.grid_size

    def __getitem__(self, index: int) -> Sample:
        group = self._group(index)
        try:
            sample: Sample = {"name": str(group.attrs["name"])}
            if self.rows == "points":
                for key in POINT_KEYS:
                    sample[key] = group[f"points/{key}"][()]
                sample["segment"] = group["points/segment"][()]
                return sample
            for key in _SCENE_KEYS:
                sample[key] = group[key][()]
            if self.with_points:
                sample["point_segment"] = group["points/segment"][()]
                sample["inverse"] = group["points/inverse"][()]
        except (OSError, KeyError) as exc:
            raise InputError(f"cannot read scene '{self.groups[index]}': {exc}", self.path) from None
        return sample


class ObjectDataset(_StoreDataset):
    """Objects of a store: each item is {name, coord (P, 3), normal (P, 3), label}."""

    kind = "object"

    def __getitem__(self, index: int) -> Sample:
        group = self._group(index)
        try:
            sample: Sample = {
                "name": str(group.attrs["name"]),
                "coord": group["coord"][()],
                "normal": group["normal"][()],
                "label": np.int64(group.attrs["label"]),
            }
        except (OSError, KeyError) as exc:
            raise InputError(f"cannot read object '{self.groups[index]}': {exc}",
                             self.path) from None
        return sample
