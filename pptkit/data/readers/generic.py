"""Generic scene folders: one PLY file ("ply") or one NumPy file ("npy") per scene.

Files lie in ``root/`` or, for a split, in ``root/<split>/``; item ids are file paths relative
to `root` (``scene1.ply``, ``train/scene1.ply``). With split None only the files directly in
`root` are listed.

Class names are read from ``root/classes.txt`` (one name per line, in label order). They
cannot be guessed from the files, so a scene that carries labels needs that file; scenes
without labels read as unlabelled (-1) and need none.

PLY: a ``vertex`` element with ``x y z``, optional ``red green blue`` (0-255), ``nx ny nz``,
``label`` (class index, -1 = unlabelled) and ``instance``; ascii or binary.

NumPy: ``.npz`` with named arrays ``coord`` (required), ``color``, ``normal``, ``segment``,
``instance``; or ``.npy`` holding one (N, C) array whose columns are read by their count:

==== ===========================================
C    columns
==== ===========================================
3    x y z
4    x y z label
6    x y z r g b
7    x y z r g b label
8    x y z r g b label instance
9    x y z r g b nx ny nz
10   x y z r g b nx ny nz label
11   x y z r g b nx ny nz label instance
==== ===========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pptkit.data.ply import read_ply
from pptkit.data.readers.base import (
    as_color,
    as_columns,
    as_labels,
    load_npy,
    read_class_file,
    require_dir,
)
from pptkit.data.types import PointScene, validate_scene
from pptkit.errors import InputError

CLASSES_FILE = "classes.txt"

_WIDTHS = {"coord": 3, "color": 3, "normal": 3, "segment": 1, "instance": 1}
NPY_COLUMNS: dict[int, tuple[str, ...]] = {
    3: ("coord",),
    4: ("coord", "segment"),
    6: ("coord", "color"),
    7: ("coord", "color", "segment"),
    8: ("coord", "color", "segment", "instance"),
    9: ("coord", "color", "normal"),
    10: ("coord", "color", "normal", "segment"),
    11: ("coord", "color", "normal", "segment", "instance"),
}


def _list_files(root: Path, split: str | None, suffixes: tuple[str, ...]) -> list[str]:
    root = require_dir(root)
    folder = root if split is None else root / split
    if not folder.is_dir():
        raise InputError(f"no split folder '{split}'", root)
    prefix = "" if split is None else f"{split}/"
    ids = sorted(prefix + p.name for p in folder.iterdir()
                 if p.is_file() and p.suffix.lower() in suffixes)
    if not ids:
        raise InputError(f"no {' or '.join(suffixes)} files found", folder)
    return ids


def _classes(root: Path) -> tuple[str, ...]:
    path = Path(root) / CLASSES_FILE
    return read_class_file(path) if path.is_file() else ()


def _make_scene(root: Path, item: str, path: Path, arrays: dict[str, np.ndarray]) -> PointScene:
    """Fill defaults for absent fields and validate against root/classes.txt."""
    coord = as_columns(arrays["coord"], 3, path, "coord")
    n = len(coord)
    color = arrays.get("color")
    color = np.zeros((n, 3), np.uint8) if color is None else as_color(
        as_columns(color, 3, path, "color"))
    normal = arrays.get("normal")
    if normal is not None:
        normal = as_columns(normal, 3, path, "normal")
    segment = arrays.get("segment")
    segment = np.full(n, -1, np.int64) if segment is None else as_labels(segment, path, "label")
    instance = arrays.get("instance")
    instance = np.full(n, -1, np.int64) if instance is None else as_labels(instance, path,
                                                                             "instance")
    classes = _classes(root)
    if not classes and (segment != -1).any():
        raise InputError(f"points carry class labels but {Path(root) / CLASSES_FILE} is missing: "
                         "write the class names there, one per line in label order", path)
    scene = PointScene(name=Path(item).with_suffix("").as_posix(), coord=coord, color=color,
                       segment=segment, instance=instance, normal=normal)
    return validate_scene(scene, len(classes), str(path))


@dataclass(frozen=True)
class PlyFolderReader:
    """A folder of .ply point clouds (see the module docstring for the properties read)."""

    name: str = "ply"
    class_names: tuple[str, ...] = ()
    kind: str = "scene"
    default_split: str | None = None

    def classes(self, root: Path) -> tuple[str, ...]:
        return _classes(root)

    def items(self, root: Path, split: str | None) -> list[str]:
        return _list_files(root, split, (".ply",))

    def read(self, root: Path, item: str, strict: bool = False) -> PointScene:
        path = Path(root) / item
        vertex = read_ply(path).vertex
        missing = [k for k in ("x", "y", "z") if k not in vertex]
        if missing:
            raise InputError(f"vertex element lacks {', '.join(missing)}", path)
        arrays = {"coord": np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1)}
        for key, names in (("color", ("red", "green", "blue")), ("normal", ("nx", "ny", "nz"))):
            if all(k in vertex for k in names):
                arrays[key] = np.stack([vertex[k] for k in names], axis=1)
        for key, name in (("segment", "label"), ("instance", "instance")):
            if name in vertex:
                arrays[key] = vertex[name]
        return _make_scene(root, item, path, arrays)


@dataclass(frozen=True)
class NpyFolderReader:
    """A folder of .npy / .npz point clouds (see the module docstring for the layouts)."""

    name: str = "npy"
    class_names: tuple[str, ...] = ()
    kind: str = "scene"
    default_split: str | None = None

    def classes(self, root: Path) -> tuple[str, ...]:
        return _classes(root)

    def items(self, root: Path, split: str | None) -> list[str]:
        return _list_files(root, split, (".npy", ".npz"))

    def read(self, root: Path, item: str, strict: bool = False) -> PointScene:
        path = Path(root) / item
        if path.suffix.lower() == ".npz":
            arrays = self._read_npz(path)
        else:
            arrays = self._split_columns(load_npy(path), path)
        return _make_scene(root, item, path, arrays)

    @staticmethod
    def _read_npz(path: Path) -> dict[str, np.ndarray]:
        if not path.is_file():
            raise InputError("file not found", path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in _WIDTHS if k in npz.files}
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"cannot read NumPy archive: {exc}", path) from None
        if "coord" not in arrays:
            raise InputError(f"no 'coord' array (found: {', '.join(sorted(arrays)) or 'none'})",
                             path)
        return arrays

    @staticmethod
    def _split_columns(table: np.ndarray, path: Path) -> dict[str, np.ndarray]:
        if table.ndim != 2 or table.shape[1] not in NPY_COLUMNS:
            raise InputError(f"expected an (N, C) array with C in {sorted(NPY_COLUMNS)}, got "
                             f"{table.shape}; use an .npz with named arrays for other layouts",
                             path)
        arrays, start = {}, 0
        for key in NPY_COLUMNS[table.shape[1]]:
            width = _WIDTHS[key]
            arrays[key] = table[:, start:start + width] if width > 1 else table[:, start]
            start += width
        return arrays
