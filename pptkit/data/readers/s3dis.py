"""S3DIS (Stanford 3D Indoor Spaces, "Aligned Version") rooms from their per-object files.

Layout: ``root/Area_N/<room>/Annotations/<class>_<k>.txt``, one point per line ``x y z r g b``.
The class is the file name's prefix; prefixes outside the 13 S3DIS classes (``stairs``)
count as clutter, as in the benchmark, with a warning naming them (an error with
``strict=True``). Each annotation file is one instance, numbered by its position in the
room's sorted file list.

A few lines of the released files are corrupt (a stray ``\\x10`` byte inside a number, a
line with 5 values). They are skipped with one warning per file naming its first bad line
and the count; with ``strict=True`` the first one raises InputError instead.

S3DIS has no normals: they are estimated with Open3D from the `normal_neighbours` nearest
neighbours and turned to face the room's bounding-box centre, which orients walls, floor
and ceiling consistently inwards.

Item ids are ``Area_N/<room>``. Splits: ``val`` = Area_5 (the standard fold, the default),
``train`` = every other area, ``Area_N`` or comma lists such as ``Area_1,Area_2``; split
None lists every room.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pptkit.data.classes import S3DIS13
from pptkit.data.readers.base import require_dir
from pptkit.data.types import PointScene, validate_scene
from pptkit.errors import InputError
from pptkit.progress import console

VAL_AREA = "Area_5"
_AREA = re.compile(r"Area_\d+")
_CLUTTER = S3DIS13.index("clutter")


def parse_points(path: Path, strict: bool = False) -> np.ndarray:
    """The (N, 6) ``x y z r g b`` rows of one annotation file, skipping corrupt lines.

    NumPy's C parser reads clean files (nearly all of them) in one pass; only when it fails
    is the file parsed line by line to find and drop the bad lines.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc}", path) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            table = np.loadtxt(io.BytesIO(data), dtype=np.float64, ndmin=2, comments=None)
        if table.shape[1] == 6:
            return table
        if table.size == 0:
            return np.zeros((0, 6))
    except ValueError:
        pass
    return _parse_lines(data, path, strict)


def _parse_lines(data: bytes, path: Path, strict: bool) -> np.ndarray:
    rows: list[list[float]] = []
    bad: list[int] = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        words = line.split()
        if not words:
            continue
        if len(words) == 6:
            try:
                rows.append([float(w) for w in words])
                continue
            except ValueError:
                pass
        if strict:
            raise InputError(f"expected 6 numbers 'x y z r g b', got {line[:80]!r}", path,
                             where=f"line {lineno}")
        bad.append(lineno)
    if bad:
        console.print(f"warning: {path}:{bad[0]}: skipped {len(bad)} malformed line(s)",
                      markup=False, highlight=False, soft_wrap=True)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def class_prefix(annotation: Path) -> str:
    """The class part of an annotation file name ``<class>_<k>.txt``."""
    return annotation.stem.rsplit("_", 1)[0]


def class_of(annotation: Path) -> int:
    """Class index from an annotation file name ``<class>_<k>.txt``; unknown -> clutter."""
    prefix = class_prefix(annotation)
    return S3DIS13.index(prefix) if prefix in S3DIS13 else _CLUTTER


def check_classes(files: list[Path], folder: Path, strict: bool) -> None:
    """Warn about annotation files whose class is none of the 13 (they count as clutter);
    with `strict` the first one is an InputError."""
    unknown = [f for f in files if class_prefix(f) not in S3DIS13]
    if not unknown:
        return
    if strict:
        raise InputError(f"'{class_prefix(unknown[0])}' is not one of the 13 S3DIS classes "
                         "(without --strict it counts as clutter)", unknown[0])
    names = sorted({class_prefix(f) for f in unknown})
    console.print(f"warning: {folder}: {len(unknown)} annotation file(s) of class "
                  f"{', '.join(names)}, none of the 13 S3DIS classes, count as clutter",
                  markup=False, highlight=False, soft_wrap=True)


def estimate_normals(coord: np.ndarray, neighbours: int) -> np.ndarray:
    """Unit normals from local PCA over `neighbours` nearest points, facing the bbox centre."""
    import open3d as o3d  # imported here: heavy, and only S3DIS needs it

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord.astype(np.float64)))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(neighbours))
    centre = (coord.min(axis=0) + coord.max(axis=0)) / 2.0
    cloud.orient_normals_towards_camera_location(centre.astype(np.float64))
    return np.asarray(cloud.normals, dtype=np.float32)


def _area_dirs(root: Path) -> dict[str, Path]:
    return {p.name: p for p in root.iterdir() if p.is_dir() and _AREA.fullmatch(p.name)}


@dataclass(frozen=True)
class S3DISReader:
    """Reads S3DIS rooms; normals are estimated unless `estimate_normals` is False."""

    name: str = "s3dis"
    class_names: tuple[str, ...] = S3DIS13
    kind: str = "scene"
    default_split: str | None = "val"
    estimate_normals: bool = True
    normal_neighbours: int = 30

    def classes(self, root: Path) -> tuple[str, ...]:
        return self.class_names

    def _areas(self, areas: dict[str, Path], split: str | None, root: Path) -> list[str]:
        if split is None:
            return sorted(areas)
        if split == "val":
            wanted = [VAL_AREA]
        elif split == "train":
            wanted = sorted(a for a in areas if a != VAL_AREA)
            if not wanted:
                raise InputError(f"split 'train' needs areas other than {VAL_AREA}", root)
        else:
            wanted = [a.strip() for a in split.split(",") if a.strip()]
            unknown = [a for a in wanted if not _AREA.fullmatch(a)]
            if unknown or not wanted:
                raise InputError(f"unknown split '{split}' (use train, val, Area_N or a comma "
                                 "list such as Area_1,Area_2)", root)
        missing = [a for a in wanted if a not in areas]
        if missing:
            raise InputError(f"no {', '.join(missing)} folder (found: {', '.join(sorted(areas))})",
                             root)
        return wanted

    def items(self, root: Path, split: str | None) -> list[str]:
        root = require_dir(root)
        areas = _area_dirs(root)
        if not areas:
            raise InputError("not an S3DIS folder: no Area_N folders inside", root)
        rooms = []
        for area in self._areas(areas, split, root):
            rooms += [f"{area}/{p.name}" for p in areas[area].iterdir()
                      if (p / "Annotations").is_dir()]
        if not rooms:
            raise InputError(f"no rooms with an Annotations folder for split '{split}'", root)
        return sorted(rooms)

    def read(self, root: Path, item: str, strict: bool = False) -> PointScene:
        folder = Path(root) / item / "Annotations"
        if not folder.is_dir():
            raise InputError("room annotations folder not found", folder)
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise InputError("no <class>_<k>.txt annotation files", folder)
        check_classes(files, folder, strict)
        parts = [parse_points(f, strict) for f in files]
        table = np.concatenate(parts)
        counts = [len(p) for p in parts]
        segment = np.repeat([class_of(f) for f in files], counts)
        instance = np.repeat(np.arange(len(files)), counts)
        coord = table[:, :3].astype(np.float32)
        scene = PointScene(name=item, coord=coord, color=table[:, 3:6], segment=segment,
                           instance=instance, normal=None)
        scene = validate_scene(scene, len(self.class_names), str(folder))
        if self.estimate_normals:
            scene.normal = estimate_normals(scene.coord, self.normal_neighbours)
        return scene
