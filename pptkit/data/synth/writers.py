"""Write synthetic scenes and shapes in each dataset's own raw layout and file formats.

- scannet: ``scans/<id>/<id>_vh_clean_2.ply`` (binary mesh, RGBA vertices),
  ``<id>_vh_clean_2.0.010000.segs.json`` (per-vertex segment ids), ``<id>.aggregation.json``
  (segment groups with raw categories), plus ``scannetv2-labels.combined.tsv`` and
  ``scannetv2_{train,val}.txt`` at the root.
- s3dis: ``Area_N/<room>/Annotations/<class>_<k>.txt`` and ``Area_N/<room>/<room>.txt``
  (``x y z r g b`` lines).
- structured3d: Pointcept's ``<split>/<scene>/{coord,color,normal,segment,instance}.npy``.
- objects: ModelNet40's ``<class>/<class>_NNNN.txt`` (``x,y,z,nx,ny,nz`` lines) with
  ``modelnet40_shape_names.txt`` and ``modelnet40_{train,test}.txt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pptkit.data.classes import IGNORE_INDEX, MODELNET40, STRUCTURED3D25
from pptkit.data.ply import write_ply
from pptkit.data.synth.scenes import SynthScene
from pptkit.data.synth.styles import SCANNET_TSV_HEADER, SCANNET_TSV_ROWS, class_name


def _lines(fmt: str, table: np.ndarray) -> str:
    """Format rows of `table` with a printf `fmt` per row, in one C-level formatting call."""
    if len(table) == 0:
        return ""
    return ((fmt + "\n") * len(table)) % tuple(table.ravel().tolist())


def write_list(path: Path, names: list[str]) -> None:
    path.write_text("".join(f"{n}\n" for n in names))


def write_scannet_scene(root: Path, scene: SynthScene) -> None:
    """One ScanNet scan: mesh, over-segmentation and instance aggregation."""
    folder = root / "scans" / scene.name
    folder.mkdir(parents=True)
    n = len(scene.coord)
    write_ply(folder / f"{scene.name}_vh_clean_2.ply", {
        "x": scene.coord[:, 0], "y": scene.coord[:, 1], "z": scene.coord[:, 2],
        "red": scene.color[:, 0], "green": scene.color[:, 1], "blue": scene.color[:, 2],
        "alpha": np.full(n, 255, dtype=np.uint8),
    }, faces=scene.faces)
    seg_json = {"params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750",
                           "maxPoints": "5000", "thinThresh": "0.05", "flatThresh": "0.001",
                           "minLength": "0.02", "maxLength": "1"},
                "sceneId": scene.name, "segIndices": scene.patch.tolist()}
    (folder / f"{scene.name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps(seg_json))
    groups = []
    for part in np.unique(scene.part):
        segments = np.unique(scene.patch[scene.part == part]).tolist()
        k = len(groups)
        groups.append({"id": k, "objectId": k, "segments": segments,
                       "label": class_name("scannet", scene.kinds[part])})
    aggregation = {"sceneId": f"scannet.{scene.name}", "appId": "pptkit.synth",
                   "segGroups": groups, "segmentsFile": f"scannet.{scene.name}_vh_clean_2.0.010000.segs.json"}
    (folder / f"{scene.name}.aggregation.json").write_text(json.dumps(aggregation))


def write_scannet_meta(root: Path, train: list[str], val: list[str]) -> None:
    (root / "scannetv2-labels.combined.tsv").write_text(
        SCANNET_TSV_HEADER + "\n" + "".join(row + "\n" for row in SCANNET_TSV_ROWS))
    write_list(root / "scannetv2_train.txt", train)
    write_list(root / "scannetv2_val.txt", val)


def write_s3dis_room(room_dir: Path, scene: SynthScene) -> None:
    """One S3DIS room: an annotation file per instance, and the room file with every point."""
    annotations = room_dir / "Annotations"
    annotations.mkdir(parents=True)
    counts: dict[str, int] = {}
    chunks = []
    for part in np.unique(scene.part):
        cls = class_name("s3dis", scene.kinds[part])
        counts[cls] = counts.get(cls, 0) + 1
        mask = scene.part == part
        table = np.column_stack([scene.coord[mask].astype(np.float64), scene.color[mask]])
        text = _lines("%.3f %.3f %.3f %d %d %d", table)
        (annotations / f"{cls}_{counts[cls]}.txt").write_text(text)
        chunks.append(text)
    (room_dir / f"{room_dir.name}.txt").write_text("".join(chunks))


def write_structured3d_scene(folder: Path, scene: SynthScene) -> None:
    """One scene in Pointcept's layout, labelled in STRUCTURED3D25 order."""
    folder.mkdir(parents=True)
    index = {name: i for i, name in enumerate(STRUCTURED3D25)}
    part_class = np.array([index.get(class_name("structured3d", k), IGNORE_INDEX) for k in scene.kinds])
    layout = np.isin(np.asarray(scene.kinds), ["wall", "floor", "ceiling"])
    # Layout surfaces (wall, floor, ceiling) carry no object instance, as in Structured3D.
    part_instance = np.where(layout, -1, np.arange(len(scene.kinds)))
    np.save(folder / "coord.npy", scene.coord.astype(np.float32))
    np.save(folder / "color.npy", scene.color.astype(np.uint8))
    np.save(folder / "normal.npy", scene.normal.astype(np.float32))
    np.save(folder / "segment.npy", part_class[scene.part].astype(np.int16))
    np.save(folder / "instance.npy", part_instance[scene.part].astype(np.int32))


def write_modelnet_shape(root: Path, cls: str, number: int, coord: np.ndarray, normal: np.ndarray) -> str:
    """One shape file; returns its id (``<class>_NNNN``) for the split lists."""
    name = f"{cls}_{number:04d}"
    folder = root / cls
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.txt").write_text(_lines("%.6f,%.6f,%.6f,%.6f,%.6f,%.6f", np.hstack([coord, normal])))
    return name


def write_modelnet_meta(root: Path, train: list[str], test: list[str]) -> None:
    write_list(root / "modelnet40_shape_names.txt", list(MODELNET40))
    write_list(root / "modelnet40_train.txt", train)
    write_list(root / "modelnet40_test.txt", test)
