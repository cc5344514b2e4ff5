"""In-memory records that readers produce and the store consumes, with their validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pptkit.data.classes import IGNORE_INDEX
from pptkit.errors import InputError


@dataclass
class PointScene:
    """One scene as read from disk, one row per original point.

    `segment` holds class indices into the dataset's class list, or IGNORE_INDEX (-1);
    `instance` holds instance ids, or -1 where a point belongs to no instance.
    """

    name: str
    coord: np.ndarray  # (N, 3) float32, metres
    color: np.ndarray  # (N, 3) uint8
    segment: np.ndarray  # (N,) int16
    instance: np.ndarray  # (N,) int32
    normal: np.ndarray | None = None  # (N, 3) float32, unit length
    source: str = ""  # the file or folder it was read from, for error messages

    def __len__(self) -> int:
        return int(self.coord.shape[0])


@dataclass
class PointObject:
    """One object shape (ModelNet40, ScanObjectNN): a point set and its class index."""

    name: str
    coord: np.ndarray  # (N, 3) float32
    label: int
    normal: np.ndarray | None = None  # (N, 3) float32


def validate_scene(scene: PointScene, num_classes: int, source: str) -> PointScene:
    """Check shapes, finiteness and label range; cast arrays to their compact dtypes.

    Raises InputError naming `source` (the file or folder the scene came from).
    """
    n = len(scene.coord)
    if n == 0:
        raise InputError(f"scene '{scene.name}' has no points", source)
    if scene.coord.ndim != 2 or scene.coord.shape[1] != 3:
        raise InputError(f"coordinates must be (N, 3), got {scene.coord.shape}", source)
    for key in ("color", "segment", "instance") + (("normal",) if scene.normal is not None else ()):
        value = getattr(scene, key)
        if len(value) != n:
            raise InputError(f"'{key}' has {len(value)} rows but there are {n} points", source)
    if not np.isfinite(scene.coord).all():
        bad = int((~np.isfinite(scene.coord).all(axis=1)).sum())
        raise InputError(f"{bad} point(s) have NaN or infinite coordinates", source)
    segment = np.asarray(scene.segment)
    out_of_range = (segment != IGNORE_INDEX) & ((segment < 0) | (segment >= num_classes))
    if out_of_range.any():
        raise InputError(
            f"label {int(segment[out_of_range][0])} out of range [0, {num_classes}) "
            f"({int(out_of_range.sum())} point(s); {IGNORE_INDEX} means ignore)",
            source,
        )
    normal = scene.normal
    if normal is not None:
        normal = np.nan_to_num(np.asarray(normal, dtype=np.float32))
    return PointScene(
        name=scene.name,
        coord=np.ascontiguousarray(scene.coord, dtype=np.float32),
        color=np.ascontiguousarray(np.clip(scene.color, 0, 255), dtype=np.uint8),
        segment=segment.astype(np.int16),
        instance=np.asarray(scene.instance).astype(np.int32),
        normal=normal,
        source=source,
    )


def validate_object(obj: PointObject, num_classes: int, source: str) -> PointObject:
    """Check an object's points and class; raises InputError naming `source`."""
    if len(obj.coord) == 0:
        raise InputError(f"object '{obj.name}' has no points", source)
    if not np.isfinite(obj.coord).all():
        raise InputError("NaN or infinite coordinates", source)
    if not 0 <= obj.label < num_classes:
        raise InputError(f"class {obj.label} out of range [0, {num_classes})", source)
    return PointObject(
        name=obj.name,
        coord=np.ascontiguousarray(obj.coord, dtype=np.float32),
        label=int(obj.label),
        normal=None if obj.normal is None else np.asarray(obj.normal, dtype=np.float32),
    )
