"""ScanNet v2 scenes from the released files, labelled with the 20-class benchmark.

Layout: ``root/scans/<scene>/`` (and ``root/scans_test/<scene>/``) or the scene folders
directly in ``root``. Each scene folder holds

- ``<scene>_vh_clean_2.ply``: the mesh (vertex ``x y z red green blue [alpha]``, faces);
  points are its vertices, normals are the area-weighted face normals summed on vertices;
- ``<scene>_vh_clean_2.0.010000.segs.json``: ``{"segIndices": [...]}``, one segment per vertex;
- ``<scene>.aggregation.json``: ``{"segGroups": [{"objectId", "segments", "label"}, ...]}``.

Test scenes come without the two json files and read as unlabelled; a scene of a labelled
split (in ``scans/`` or listed for train/val) without them reads so too, with a warning. Raw categories map to
NYU40 ids through ``scannetv2-labels.combined.tsv`` (in root or its parent), then to the 20
benchmark classes (SCANNET20_NYU40_IDS order); everything else is -1. Instance ids are the
groups' ``objectId``.

Item ids are scene ids. Splits come from ``scannetv2_<split>.txt`` in root or its parent;
split None lists every scene found.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pptkit.data.classes import SCANNET20, SCANNET20_NYU40_IDS
from pptkit.data.ply import read_ply
from pptkit.data.readers.base import read_id_list, require_dir
from pptkit.data.types import PointScene, validate_scene
from pptkit.errors import InputError
from pptkit.progress import console

LABEL_TABLE = "scannetv2-labels.combined.tsv"
_SCENE = re.compile(r"scene\d{4}_\d{2}")
_NYU40_TO_CLASS = {nyu: i for i, nyu in enumerate(SCANNET20_NYU40_IDS)}


def _beside(root: Path, name: str) -> Path | None:
    """`name` in root, else in root's parent (metadata sits next to scans/), else None."""
    for folder in (root, root.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def _scene_dirs(root: Path) -> dict[str, Path]:
    scenes = {}
    for folder in (root, root / "scans", root / "scans_test"):
        if folder.is_dir():
            scenes.update({p.name: p for p in folder.iterdir()
                           if p.is_dir() and _SCENE.fullmatch(p.name)})
    return scenes


@lru_cache(maxsize=8)
def raw_category_to_class(table: Path) -> dict[str, int]:
    """Raw category -> SCANNET20 index (-1 when its NYU40 class is not one of the 20)."""
    try:
        rows = list(csv.DictReader(table.read_text().splitlines(), delimiter="\t"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read label table: {exc}", table) from None
    mapping = {}
    for lineno, row in enumerate(rows, 2):
        try:
            mapping[row["raw_category"]] = _NYU40_TO_CLASS.get(int(row["nyu40id"]), -1)
        except KeyError as exc:
            raise InputError(f"missing column {exc}", table) from None
        except (TypeError, ValueError):
            raise InputError(f"bad nyu40id {row.get('nyu40id')!r}", table, f"line {lineno}") \
                from None
    return mapping


def expects_labels(root: Path, folder: Path, item: str) -> bool:
    """Whether scene `item` (in `folder`) belongs to a labelled split: it lies in ``scans/``
    (the release's train + val folder, as opposed to ``scans_test/``) or is listed in
    ``scannetv2_train.txt`` or ``scannetv2_val.txt``."""
    if folder.parent.name in ("scans", "scans_test"):
        return folder.parent.name == "scans"
    return item in _labelled_scenes(root)


@lru_cache(maxsize=8)
def _labelled_scenes(root: Path) -> frozenset[str]:
    scenes: set[str] = set()
    for split in ("train", "val"):
        path = _beside(root, f"scannetv2_{split}.txt")
        if path is not None:
            scenes.update(read_id_list(path))
    return frozenset(scenes)


def vertex_normals(coord: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals: the sum of adjacent face normals weighted by face area.

    The cross product of two triangle edges has twice the triangle's area as its length,
    so summing unnormalised cross products weights each face by its area.
    """
    v = coord.astype(np.float64)
    face_normal = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    normal = np.zeros_like(v)
    for corner in range(3):
        for axis in range(3):
            normal[:, axis] += np.bincount(faces[:, corner], weights=face_normal[:, axis],
                                           minlength=len(v))
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    return np.divide(normal, length, out=np.zeros_like(normal), where=length > 0).astype(
        np.float32)


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read JSON: {exc}", path) from None


@dataclass(frozen=True)
class ScanNetReader:
    """Reads ScanNet v2 scenes (see the module docstring for the files used)."""

    name: str = "scannet"
    class_names: tuple[str, ...] = SCANNET20
    kind: str = "scene"
    default_split: str | None = None

    def classes(self, root: Path) -> tuple[str, ...]:
        return self.class_names

    def items(self, root: Path, split: str | None) -> list[str]:
        root = require_dir(root)
        scenes = _scene_dirs(root)
        if not scenes:
            raise InputError("not a ScanNet folder: no sceneXXXX_XX folders in it or in its "
                             "scans/ folder", root)
        if split is None:
            return sorted(scenes)
        list_file = _beside(root, f"scannetv2_{split}.txt")
        if list_file is None:
            raise InputError(f"split list scannetv2_{split}.txt not found in {root} or "
                             f"{root.parent}", root)
        wanted = read_id_list(list_file)
        present = sorted(s for s in wanted if s in scenes)
        if not present:
            raise InputError(f"none of the {len(wanted)} scenes listed is in {root}", list_file)
        if len(present) < len(wanted):
            console.print(f"warning: {list_file}: {len(wanted) - len(present)} of {len(wanted)} "
                          f"listed scenes are absent from {root}", markup=False, highlight=False,
                          soft_wrap=True)
        return present

    def read(self, root: Path, item: str, strict: bool = False) -> PointScene:
        root = Path(root)
        folder = _scene_dirs(root).get(item)
        if folder is None:
            raise InputError(f"scene folder {item} not found", root)
        ply_path = folder / f"{item}_vh_clean_2.ply"
        mesh = read_ply(ply_path)
        missing = [k for k in ("x", "y", "z", "red", "green", "blue") if k not in mesh.vertex]
        if missing:
            raise InputError(f"vertex element lacks {', '.join(missing)}", ply_path)
        v = mesh.vertex
        coord = np.stack([v["x"], v["y"], v["z"]], axis=1)
        color = np.stack([v["red"], v["green"], v["blue"]], axis=1)
        normal = None
        if mesh.faces is not None and len(mesh.faces):
            if mesh.faces.min() < 0 or mesh.faces.max() >= len(coord):
                raise InputError("face refers to a vertex that does not exist", ply_path)
            normal = vertex_normals(coord, mesh.faces)
        segment, instance = self._labels(root, folder, item, len(coord))
        scene = PointScene(name=item, coord=coord, color=color, segment=segment,
                           instance=instance, normal=normal)
        return validate_scene(scene, len(self.class_names), str(ply_path))

    def _labels(self, root: Path, folder: Path, item: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-vertex class and instance from the segs/aggregation json (all -1 without them)."""
        segment = np.full(n, -1, dtype=np.int64)
        instance = np.full(n, -1, dtype=np.int64)
        segs_path = folder / f"{item}_vh_clean_2.0.010000.segs.json"
        agg_path = folder / f"{item}.aggregation.json"
        if not segs_path.is_file() and not agg_path.is_file():
            if expects_labels(root, folder, item):
                console.print(f"warning: {folder}: a scene of a labelled split (train/val) "
                              f"without {segs_path.name} or {agg_path.name}: read as "
                              "unlabelled", markup=False, highlight=False, soft_wrap=True)
            return segment, instance
        for path in (segs_path, agg_path):
            if not path.is_file():
                raise InputError("file not found (labelled scenes need both the segs and the "
                                 "aggregation json)", path)
        table = _beside(root, LABEL_TABLE)
        if table is None:
            raise InputError(f"{LABEL_TABLE} not found in {root} or {root.parent}", root)
        to_class = raw_category_to_class(table)
        try:
            seg_of_vertex = np.asarray(_load_json(segs_path)["segIndices"], dtype=np.int64)
        except (KeyError, TypeError, ValueError):
            raise InputError("needs a 'segIndices' list of integers", segs_path) from None
        if seg_of_vertex.shape != (n,):
            raise InputError(f"'segIndices' has {seg_of_vertex.size} entries but the mesh has "
                             f"{n} vertices", segs_path)
        try:
            groups = _load_json(agg_path)["segGroups"]
            for group in groups:
                mask = np.isin(seg_of_vertex, np.asarray(group["segments"], dtype=np.int64))
                segment[mask] = to_class.get(group["label"], -1)
                instance[mask] = int(group["objectId"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"bad 'segGroups' entry ({exc!r})", agg_path) from None
        return segment, instance
