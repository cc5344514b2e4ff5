"""Scenes already converted by Pointcept's preprocessing (Structured3D and similar).

Each scene is a folder of NumPy arrays, ``coord.npy`` (N, 3), ``color.npy`` (N, 3; 0-255),
optional ``normal.npy`` (N, 3), ``segment.npy`` (N,) or (N, 1) class indices with -1 for
unlabelled points, and optional ``instance.npy`` (N,). Folders are laid out either as
``root/<split>/<scene>/`` (Pointcept's layout) or as ``root/<scene>/``.

Item ids are the scene folders relative to `root`, e.g. ``train/scene_00000_room_1``; with
split None every scene folder found (in `root` and in its split folders) is listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pptkit.data.classes import STRUCTURED3D25
from pptkit.data.readers.base import (
    as_color,
    as_columns,
    as_labels,
    load_npy,
    require_dir,
)
from pptkit.data.types import PointScene, validate_scene
from pptkit.errors import InputError


def _is_scene(folder: Path) -> bool:
    return (folder / "coord.npy").is_file()


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


@dataclass(frozen=True)
class PointceptReader:
    """Reads Pointcept-style scene folders; `class_names` gives the meaning of segment.npy."""

    name: str = "structured3d"
    class_names: tuple[str, ...] = STRUCTURED3D25
    kind: str = "scene"
    default_split: str | None = None

    def classes(self, root: Path) -> tuple[str, ...]:
        return self.class_names

    def items(self, root: Path, split: str | None) -> list[str]:
        root = require_dir(root)
        if split is not None:
            folder = root / split
            if not folder.is_dir():
                found = [p.name for p in _subfolders(root) if not _is_scene(p)]
                raise InputError(f"no split folder '{split}' (found: {', '.join(found) or 'none'})",
                                 root)
            ids = [f"{split}/{p.name}" for p in _subfolders(folder) if _is_scene(p)]
        else:
            ids = []
            for sub in _subfolders(root):
                if _is_scene(sub):
                    ids.append(sub.name)
                else:
                    ids += [f"{sub.name}/{p.name}" for p in _subfolders(sub) if _is_scene(p)]
        if not ids:
            where = root / split if split is not None else root
            raise InputError("no scene folders with coord.npy found (expected "
                             "<root>/<split>/<scene>/coord.npy or <root>/<scene>/coord.npy)", where)
        return sorted(ids)

    def read(self, root: Path, item: str, strict: bool = False) -> PointScene:
        folder = Path(root) / item
        if not folder.is_dir():
            raise InputError("scene folder not found", folder)
        coord = as_columns(load_npy(folder / "coord.npy"), 3, folder / "coord.npy", "coord")
        n = len(coord)
        color = as_color(as_columns(load_npy(folder / "color.npy"), 3, folder / "color.npy",
                                    "color"))
        segment = as_labels(load_npy(folder / "segment.npy"), folder / "segment.npy", "segment")
        normal = None
        if (folder / "normal.npy").is_file():
            normal = as_columns(load_npy(folder / "normal.npy"), 3, folder / "normal.npy", "normal")
        instance = np.full(n, -1, dtype=np.int64)
        if (folder / "instance.npy").is_file():
            instance = as_labels(load_npy(folder / "instance.npy"), folder / "instance.npy",
                                 "instance")
        scene = PointScene(name=item, coord=coord, color=color, segment=segment,
                           instance=instance, normal=normal)
        return validate_scene(scene, len(self.class_names), str(folder))
