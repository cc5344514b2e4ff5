"""Dataset readers on small fixtures in each dataset's native format, and on the real samples."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pptkit.data.classes import MODELNET40, SCANNET20, SCANOBJECTNN15, STRUCTURED3D25
from pptkit.data.ply import write_ply
from pptkit.data.readers import READERS, get_reader
from pptkit.errors import InputError
from tests.conftest import shared_sample


def _cloud(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 3), dtype=np.float32) * 4, rng.integers(0, 256, (n, 3), dtype=np.uint8)


# ---------------------------------------------------------------- registry


def test_registry_names_and_pickling():
    for name, reader in READERS.items():
        assert reader.name == name and reader.kind in ("scene", "object")
        assert pickle.loads(pickle.dumps(reader)) == reader
    with pytest.raises(InputError, match="structured3d"):
        get_reader("nope")


# ---------------------------------------------------------------- Pointcept / Structured3D


def _pointcept_scene(folder: Path, n: int = 50, seed: int = 0, segment_2d: bool = False) -> None:
    folder.mkdir(parents=True)
    coord, color = _cloud(n, seed)
    segment = np.arange(n) % 25 - 1
    np.save(folder / "coord.npy", coord)
    np.save(folder / "color.npy", color)
    np.save(folder / "normal.npy", np.tile(np.float32([0, 0, 1]), (n, 1)))
    np.save(folder / "segment.npy", segment[:, None] if segment_2d else segment)
    np.save(folder / "instance.npy", np.arange(n) // 10)


def test_pointcept_split_layout(tmp_path):
    reader = get_reader("structured3d")
    _pointcept_scene(tmp_path / "train" / "scene_00001_room_2", segment_2d=True)
    _pointcept_scene(tmp_path / "train" / "scene_00000_room_1")
    _pointcept_scene(tmp_path / "val" / "scene_03000_room_1")
    assert reader.items(tmp_path, "train") == ["train/scene_00000_room_1",
                                               "train/scene_00001_room_2"]
    assert len(reader.items(tmp_path, None)) == 3
    scene = reader.read(tmp_path, "train/scene_00001_room_2")
    assert reader.class_names == STRUCTURED3D25
    assert scene.coord.dtype == np.float32 and scene.segment.dtype == np.int16
    assert scene.segment.shape == (50,) and scene.segment.min() == -1
    assert scene.instance.max() == 4 and scene.normal.shape == (50, 3)
    with pytest.raises(InputError, match="no split folder 'test'"):
        reader.items(tmp_path, "test")


def test_pointcept_flat_layout_and_errors(tmp_path):
    reader = get_reader("structured3d")
    _pointcept_scene(tmp_path / "scene_a")
    assert reader.items(tmp_path, None) == ["scene_a"]
    np.save(tmp_path / "scene_a" / "segment.npy", np.full(50, 25))
    with pytest.raises(InputError, match=r"scene_a: label 25 out of range"):
        reader.read(tmp_path, "scene_a")
    np.save(tmp_path / "scene_a" / "segment.npy", np.array([object()] * 50))
    with pytest.raises(InputError, match=r"segment.npy: cannot read"):
        reader.read(tmp_path, "scene_a")
    with pytest.raises(InputError, match="no scene folders"):
        reader.items(tmp_path / "scene_a", None)
    with pytest.raises(InputError, match="missing_root: dataset folder not found"):
        reader.items(tmp_path / "missing_root", None)


# ---------------------------------------------------------------- generic PLY / NumPy


@pytest.mark.parametrize("binary", [True, False])
def test_ply_folder(tmp_path, binary):
    coord, color = _cloud(30)
    label = (np.arange(30) % 3 - 1).astype(np.int32)
    write_ply(tmp_path / "room.ply", {
        "x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2],
        "red": color[:, 0], "green": color[:, 1], "blue": color[:, 2],
        "nx": np.zeros(30, np.float32), "ny": np.zeros(30, np.float32),
        "nz": np.ones(30, np.float32), "label": label, "instance": np.arange(30, dtype=np.int32),
    }, binary=binary)
    reader = get_reader("ply")
    assert reader.items(tmp_path, None) == ["room.ply"]
    with pytest.raises(InputError, match="classes.txt is missing"):
        reader.read(tmp_path, "room.ply")
    (tmp_path / "classes.txt").write_text("floor\nwall\n")
    assert reader.classes(tmp_path) == ("floor", "wall")
    scene = reader.read(tmp_path, "room.ply")
    np.testing.assert_allclose(scene.coord, coord, rtol=1e-6)
    np.testing.assert_array_equal(scene.color, color)
    np.testing.assert_array_equal(scene.segment, label)
    assert scene.normal[:, 2].min() == 1 and scene.instance[-1] == 29


def test_ply_unlabelled_truncated_and_nan(tmp_path):
    coord, _ = _cloud(20)
    write_ply(tmp_path / "plain.ply", {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2]})
    scene = get_reader("ply").read(tmp_path, "plain.ply")
    assert (scene.segment == -1).all() and scene.normal is None and (scene.color == 0).all()
    data = (tmp_path / "plain.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[:-7])
    with pytest.raises(InputError, match=r"cut.ply: truncated PLY"):
        get_reader("ply").read(tmp_path, "cut.ply")
    coord[3, 1] = np.nan
    write_ply(tmp_path / "nan.ply", {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2]})
    with pytest.raises(InputError, match=r"nan.ply: 1 point\(s\) have NaN"):
        get_reader("ply").read(tmp_path, "nan.ply")


def test_npy_folder_layouts(tmp_path):
    coord, color = _cloud(40)
    label = np.arange(40) % 2
    (tmp_path / "train").mkdir()
    (tmp_path / "classes.txt").write_text("a\nb\n")
    np.save(tmp_path / "train" / "xyz.npy", coord)
    np.save(tmp_path / "train" / "xyzrgbl.npy",
            np.concatenate([coord, color, label[:, None]], axis=1).astype(np.float64))
    np.savez(tmp_path / "train" / "named.npz", coord=coord, color=color, segment=label,
             instance=np.arange(40))
    reader = get_reader("npy")
    items = reader.items(tmp_path, "train")
    assert items == ["train/named.npz", "train/xyz.npy", "train/xyzrgbl.npy"]
    scenes = {item: reader.read(tmp_path, item) for item in items}
    assert scenes["train/xyz.npy"].name == "train/xyz"
    assert (scenes["train/xyz.npy"].segment == -1).all()
    for item in ("train/named.npz", "train/xyzrgbl.npy"):
        np.testing.assert_array_equal(scenes[item].segment, label)
        np.testing.assert_array_equal(scenes[item].color, color)
    np.save(tmp_path / "train" / "bad.npy", np.zeros((5, 5)))
    with pytest.raises(InputError, match=r"bad.npy: expected an \(N, C\) array"):
        reader.read(tmp_path, "train/bad.npy")
    np.save(tmp_path / "train" / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(InputError, match=r"empty.npy: scene 'train/empty' has no points"):
        reader.read(tmp_path, "train/empty.npy")
    np.save(tmp_path / "train" / "range.npy", np.concatenate([coord, label[:, None] + 2], 1))
    with pytest.raises(InputError, match=r"range.npy: label 2 out of range \[0, 2\)"):
        reader.read(tmp_path, "train/range.npy")


# ---------------------------------------------------------------- every reader: missing input


@pytest.mark.parametrize("name", sorted(READERS))
def test_missing_folder_names_it(tmp_path, name):
    with pytest.raises(InputError, match="no_such_folder"):
        READERS[name].items(tmp_path / "no_such_folder", READERS[name].default_split)


# ---------------------------------------------------------------- S3DIS


def _plane(n: int, axis: int, value: float, rng) -> np.ndarray:
    """n points on the square [0, 4]^2 of the plane coordinate[axis] = value."""
    points = rng.random((n, 3)) * 4
    points[:, axis] = value
    return points


def _write_annotation(path: Path, points: np.ndarray, rng) -> None:
    color = rng.integers(0, 256, (len(points), 3))
    path.write_text("".join(f"{x:.4f} {y:.4f} {z:.4f} {r} {g} {b}\n"
                            for (x, y, z), (r, g, b) in zip(points, color)))


def _s3dis_room(root: Path, area: str, room: str, seed: int = 0) -> Path:
    """A 4 x 4 x 3 m box room: floor, ceiling, one wall, one 'stairs' object (-> clutter)."""
    rng = np.random.default_rng(seed)
    folder = root / area / room / "Annotations"
    folder.mkdir(parents=True)
    _write_annotation(folder / "ceiling_1.txt", _plane(400, 2, 3.0, rng), rng)
    _write_annotation(folder / "floor_1.txt", _plane(300, 2, 0.0, rng), rng)
    _write_annotation(folder / "wall_1.txt", _plane(200, 0, 0.0, rng) * [1, 1, 0.75], rng)
    _write_annotation(folder / "stairs_1.txt", _plane(100, 1, 2.0, rng) * [0.2, 1, 0.2] + [1, 0, 1],
                      rng)
    return folder


def test_s3dis_room_labels_instances_normals(tmp_path):
    _s3dis_room(tmp_path, "Area_1", "office_1")
    reader = get_reader("s3dis")
    scene = reader.read(tmp_path, "Area_1/office_1")
    names = reader.class_names
    counts = {names[k]: int(c) for k, c in enumerate(np.bincount(scene.segment)) if c}
    assert counts == {"ceiling": 400, "floor": 300, "wall": 200, "clutter": 100}
    # instances follow the sorted file list: ceiling, floor, stairs, wall
    assert np.bincount(scene.instance).tolist() == [400, 300, 100, 200]
    assert scene.color.dtype == np.uint8 and scene.normal.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(scene.normal, axis=1), 1, atol=1e-5)
    by_class = {name: scene.normal[scene.segment == names.index(name)] for name in counts}
    # all on the side facing into the room; points near an edge see two planes and tilt
    for name, axis, sign in (("floor", 2, 1), ("ceiling", 2, -1), ("wall", 0, 1)):
        assert (sign * by_class[name][:, axis] > 0).all(), name
        assert np.median(sign * by_class[name][:, axis]) > 0.95, name


def test_s3dis_splits(tmp_path):
    for area, room in (("Area_1", "office_1"), ("Area_2", "hallway_1"), ("Area_5", "lobby_1")):
        folder = tmp_path / area / room / "Annotations"
        folder.mkdir(parents=True)
    reader = get_reader("s3dis")
    assert reader.default_split == "val"
    assert reader.items(tmp_path, "val") == ["Area_5/lobby_1"]
    assert reader.items(tmp_path, "train") == ["Area_1/office_1", "Area_2/hallway_1"]
    assert reader.items(tmp_path, "Area_2, Area_5") == ["Area_2/hallway_1", "Area_5/lobby_1"]
    assert len(reader.items(tmp_path, None)) == 3
    with pytest.raises(InputError, match="no Area_3 folder"):
        reader.items(tmp_path, "Area_3")
    with pytest.raises(InputError, match="unknown split 'test'"):
        reader.items(tmp_path, "test")
    with pytest.raises(InputError, match="no <class>_<k>.txt annotation files"):
        reader.read(tmp_path, "Area_1/office_1")
    with pytest.raises(InputError, match="not an S3DIS folder"):
        reader.items(tmp_path / "Area_1", None)


def test_s3dis_corrupt_lines_skipped_or_strict(tmp_path, capsys):
    folder = tmp_path / "Area_1" / "room_1" / "Annotations"
    folder.mkdir(parents=True)
    lines = [f"{i}.5 1.0 2.0 10 20 30" for i in range(8)]
    lines[2] = "2.5 1.\x100 2.0 10 20 30"  # as in the released Area_5/hallway_6
    lines[5] = "5.5 1.0 2.0 10 20"
    (folder / "table_1.txt").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    reader = replace_s3dis(estimate_normals=False)
    scene = reader.read(tmp_path, "Area_1/room_1")
    assert len(scene) == 6 and (scene.segment == reader.class_names.index("table")).all()
    assert scene.coord[:, 0].tolist() == [0.5, 1.5, 3.5, 4.5, 6.5, 7.5]
    err = capsys.readouterr().err
    assert "table_1.txt:3: skipped 2 malformed line(s)" in err and err.count("warning") == 1
    with pytest.raises(InputError, match=r"table_1.txt:line 3: expected 6 numbers"):
        reader.read(tmp_path, "Area_1/room_1", strict=True)


def replace_s3dis(**changes):
    from dataclasses import replace

    return replace(get_reader("s3dis"), **changes)


def test_s3dis_real_rooms():
    root = shared_sample("s3dis-sample")
    reader = replace_s3dis(estimate_normals=False)
    assert reader.items(root, "val") == ["Area_5/copyRoom_1"]
    expected = {
        "Area_1/conferenceRoom_1": {"beam": 60000, "wall": 60000},
        "Area_1/hallway_1": {"ceiling": 50000, "chair": 19370},
        "Area_5/copyRoom_1": {"beam": 37730, "wall": 33174},
    }
    for item, counts in expected.items():
        scene = reader.read(root, item)
        found = {reader.class_names[k]: int(c) for k, c in enumerate(np.bincount(scene.segment))
                 if c}
        assert found == counts, item
        assert scene.color.max() > 100 and np.ptp(scene.coord, axis=0).max() > 2
    hallway = get_reader("s3dis").read(root, "Area_1/hallway_1")
    np.testing.assert_allclose(np.linalg.norm(hallway.normal, axis=1), 1, atol=1e-4)
    ceiling = hallway.normal[hallway.segment == reader.class_names.index("ceiling")]
    assert (ceiling[:, 2] < -0.9).mean() > 0.95  # one consistent side: down, into the room


def test_s3dis_parse_speed(tmp_path):
    """The fast path: 200k clean lines parse well under a second even on a busy machine."""
    from pptkit.data.readers.s3dis import parse_points

    rng = np.random.default_rng(0)
    table = np.concatenate([rng.random((200_000, 3)) * 10,
                            rng.integers(0, 256, (200_000, 3))], axis=1)
    path = tmp_path / "big.txt"
    np.savetxt(path, table, fmt="%.3f %.3f %.3f %d %d %d")
    start = time.perf_counter()
    points = parse_points(path)
    assert time.perf_counter() - start < 2.0
    np.testing.assert_allclose(points, np.round(table, 3), atol=1e-9)


# ---------------------------------------------------------------- ScanNet v2

_TSV_HEADER = "id\traw_category\tcategory\tcount\tnyu40id\tnyu40class\n"


def _scannet_scene(scans: Path, scene: str, coord: np.ndarray, color: np.ndarray,
                   faces: np.ndarray | None, seg_indices: np.ndarray,
                   groups: list[tuple[int, str, list[int]]]) -> Path:
    """Write the three native files of one scene; groups are (objectId, raw label, segments)."""
    folder = scans / scene
    folder.mkdir(parents=True)
    write_ply(folder / f"{scene}_vh_clean_2.ply", {
        "x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2],
        "red": color[:, 0], "green": color[:, 1], "blue": color[:, 2],
        "alpha": np.full(len(coord), 255, np.uint8),
    }, faces=faces)
    (folder / f"{scene}_vh_clean_2.0.010000.segs.json").write_text(json.dumps(
        {"sceneId": scene, "segIndices": seg_indices.tolist()}))
    (folder / f"{scene}.aggregation.json").write_text(json.dumps({"sceneId": scene, "segGroups": [
        {"id": i, "objectId": obj, "segments": segs, "label": label}
        for i, (obj, label, segs) in enumerate(groups)]}))
    return folder


def _grid_mesh(side: int) -> tuple[np.ndarray, np.ndarray]:
    """A flat side x side vertex grid at z = 0, triangles wound counter-clockwise seen from +z."""
    ij = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2)
    coord = np.concatenate([ij * 0.1, np.zeros((len(ij), 1))], axis=1).astype(np.float32)
    faces = []
    for i in range(side - 1):
        for j in range(side - 1):
            a, b, c, d = i * side + j, (i + 1) * side + j, (i + 1) * side + j + 1, i * side + j + 1
            faces += [(a, b, c), (a, c, d)]
    return coord, np.asarray(faces)


def test_scannet_labels_instances_normals_splits(tmp_path):
    (tmp_path / "scannetv2-labels.combined.tsv").write_text(
        _TSV_HEADER + "1\twall\twall\t10\t1\twall\n2\tchair\tchair\t5\t5\tchair\n"
        "3\tbanana\tbanana\t1\t40\totherprop\n"
        "4\tshower curtain\tshower curtain\t2\t28\tshower curtain\n")
    (tmp_path / "scannetv2_val.txt").write_text("scene0002_00\nscene0003_00\n")
    coord, faces = _grid_mesh(4)
    _, color = _cloud(16)
    segs = np.repeat([7, 3, 9, 11], 4)  # rows of the grid
    groups = [(0, "wall", [7]), (1, "chair", [3]), (2, "banana", [9]), (5, "shower curtain", [99])]
    for scene in ("scene0001_00", "scene0002_00"):
        _scannet_scene(tmp_path / "scans", scene, coord, color, faces, segs, groups)
    reader = get_reader("scannet")
    assert reader.items(tmp_path, None) == ["scene0001_00", "scene0002_00"]
    assert reader.items(tmp_path, "val") == ["scene0002_00"]  # scene0003_00 absent: warning
    scene = reader.read(tmp_path, "scene0001_00")
    chair, wall = SCANNET20.index("chair"), SCANNET20.index("wall")
    assert scene.segment.tolist() == [wall] * 4 + [chair] * 4 + [-1] * 8
    assert scene.instance.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [-1] * 4
    np.testing.assert_array_equal(scene.color, color)
    np.testing.assert_allclose(scene.normal, np.tile([0, 0, 1], (16, 1)), atol=1e-6)
    with pytest.raises(InputError, match="scannetv2_train.txt not found"):
        reader.items(tmp_path, "train")
    with pytest.raises(InputError, match="scene folder scene0009_00 not found"):
        reader.read(tmp_path, "scene0009_00")
    segs_file = tmp_path / "scans" / "scene0002_00" / "scene0002_00_vh_clean_2.0.010000.segs.json"
    segs_file.write_text(json.dumps({"segIndices": [0] * 15}))
    with pytest.raises(InputError, match=r"segs.json: 'segIndices' has 15 entries but the mesh"):
        reader.read(tmp_path, "scene0002_00")


def test_scannet_vertex_normals_are_area_weighted():
    from pptkit.data.readers.scannet import vertex_normals

    # vertex 0 is shared by a big triangle facing +z (area 2) and a small one facing +x (0.5)
    coord = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    normal = vertex_normals(coord, np.array([[0, 1, 2], [0, 3, 4]]))
    np.testing.assert_allclose(normal[0], np.array([0.5, 0, 2]) / np.hypot(0.5, 2), rtol=1e-6)
    np.testing.assert_allclose(normal[1], [0, 0, 1])


def test_scannet_real_label_table():
    from pptkit.data.readers.scannet import raw_category_to_class

    table = shared_sample("scannet-meta") / "scannetv2-labels.combined.tsv"
    mapping = raw_category_to_class(table)
    assert SCANNET20[mapping["chair"]] == "chair"
    assert SCANNET20[mapping["kitchen cabinets"]] == "cabinet"
    assert mapping["object"] == -1  # nyu40 'otherprop' is not a benchmark class
    assert {SCANNET20[k] for k in mapping.values() if k >= 0} == set(SCANNET20)


def test_scannet_real_scene_through_ply(tmp_path):
    """scene0000_00's real points written as a genuine _vh_clean_2.ply and read back."""
    from scipy.spatial import Delaunay

    meta = shared_sample("scannet-meta")
    raw = np.fromfile(shared_sample("scannet-demo") / "scene0000_00_xyzrgb_float32.bin",
                      dtype="<f4").reshape(-1, 6)
    shutil.copy(meta / "scannetv2-labels.combined.tsv", tmp_path)
    shutil.copy(meta / "scannetv2_train.txt", tmp_path)
    coord, color = raw[:, :3], raw[:, 3:].astype(np.uint8)
    faces = Delaunay(coord[:, :2]).simplices  # a real mesh's stand-in: any valid triangles
    seg_indices = (coord[:, 2] > 0.3).astype(np.int64)  # segment 0: near the floor
    _scannet_scene(tmp_path / "scans", "scene0000_00", coord, color, faces, seg_indices,
                   [(0, "floor", [0]), (1, "chair", [1])])
    reader = get_reader("scannet")
    assert reader.items(tmp_path / "scans", "train") == ["scene0000_00"]
    scene = reader.read(tmp_path / "scans", "scene0000_00")
    assert len(scene) == 40684
    np.testing.assert_array_equal(scene.coord, coord)
    np.testing.assert_array_equal(scene.color, color)
    floor = scene.segment == SCANNET20.index("floor")
    assert floor.sum() == (seg_indices == 0).sum() > 0
    assert (scene.segment[~floor] == SCANNET20.index("chair")).all()
    used = np.unique(faces)
    np.testing.assert_allclose(np.linalg.norm(scene.normal[used], axis=1), 1, atol=1e-5)


# ---------------------------------------------------------------- ModelNet40


def _modelnet_shape(root: Path, shape: str, n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = np.concatenate([rng.normal(size=(n, 3)), np.tile([0.0, 0.0, 1.0], (n, 1))], 1)
    folder = root / shape.rsplit("_", 1)[0]
    folder.mkdir(exist_ok=True)
    np.savetxt(folder / f"{shape}.txt", table, fmt="%.6f", delimiter=",")
    return table


def test_modelnet40_fixture(tmp_path):
    for i, shape in enumerate(("airplane_0001", "night_stand_0002", "night_stand_0010")):
        table = _modelnet_shape(tmp_path, shape, seed=i)
    (tmp_path / "modelnet40_shape_names.txt").write_text("\n".join(MODELNET40) + "\n")
    (tmp_path / "modelnet40_test.txt").write_text("night_stand_0010\nairplane_0001\n")
    reader = get_reader("modelnet40")
    assert reader.kind == "object"
    assert reader.items(tmp_path, None) == ["airplane_0001", "night_stand_0002",
                                            "night_stand_0010"]
    assert reader.items(tmp_path, "test") == ["airplane_0001", "night_stand_0010"]
    shape = reader.read(tmp_path, "night_stand_0010")
    assert MODELNET40[shape.label] == "night_stand" and shape.coord.shape == (64, 3)
    np.testing.assert_allclose(shape.coord, table[:, :3], atol=1e-6)
    np.testing.assert_allclose(shape.normal, table[:, 3:])
    with pytest.raises(InputError, match="modelnet40_train.txt"):
        reader.items(tmp_path, "train")
    names = list(MODELNET40)
    names[1], names[2] = names[2], names[1]
    (tmp_path / "modelnet40_shape_names.txt").write_text("\n".join(names))
    with pytest.raises(InputError, match=r"shape_names.txt:line 2: class 'bed' where"):
        reader.items(tmp_path, None)


def test_modelnet40_bad_files(tmp_path):
    reader = get_reader("modelnet40")
    _modelnet_shape(tmp_path, "chair_0001")
    path = tmp_path / "chair" / "chair_0001.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + ["nan,0,0,0,0,1"] + lines[3:]))
    with pytest.raises(InputError, match="chair_0001.txt: NaN"):
        reader.read(tmp_path, "chair_0001")
    path.write_text("\n".join(lines[:3] + ["0.1,0.2"] + lines[3:]))
    with pytest.raises(InputError, match="chair_0001.txt:line 4: 2 values where the lines "
                                         "above have 6") as err:
        reader.read(tmp_path, "chair_0001")
    assert "usecols" not in str(err.value)
    path.write_text("\n".join(["0.1,0.2,0.3,1,0"] * 3))
    with pytest.raises(InputError, match="chair_0001.txt:line 1: expected 'x,y,z,nx,ny,nz'"):
        reader.read(tmp_path, "chair_0001")
    path.write_text("\n".join(lines[:3] + ["0.1,abc,0.3,0,0,1"] + lines[3:]))
    with pytest.raises(InputError, match="chair_0001.txt:line 4: 'abc' is not a number"):
        reader.read(tmp_path, "chair_0001")
    _modelnet_shape(tmp_path, "unicorn_0001")
    with pytest.raises(InputError, match="'unicorn' is not a ModelNet40 class"):
        reader.items(tmp_path, None)


def test_modelnet40_real_shapes():
    root = shared_sample("modelnet40-sample")
    reader = get_reader("modelnet40")
    items = reader.items(root, None)  # also checks modelnet40_shape_names.txt agrees
    assert len(items) == 87 and "door" not in {i.rsplit("_", 1)[0] for i in items}
    for item in items[::9]:
        shape = reader.read(root, item)
        assert MODELNET40[shape.label] == item.rsplit("_", 1)[0]
        assert shape.coord.shape == (10000, 3) and np.abs(shape.coord).max() <= 1.0
        np.testing.assert_allclose(np.linalg.norm(shape.normal, axis=1), 1, atol=1e-2)


# ---------------------------------------------------------------- ScanObjectNN


def _scanobjectnn_h5(path: Path, labels: list[int], points: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(len(labels), points, 3)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["data"] = data
        f["label"] = np.asarray(labels, dtype=np.int64)
        f["mask"] = np.zeros((len(labels), points), dtype=np.int64)
    return data


def test_scanobjectnn_variants_and_splits(tmp_path):
    root = tmp_path / "main_split"
    train = _scanobjectnn_h5(root / "training_objectdataset.h5", [0, 3, 14])
    _scanobjectnn_h5(root / "test_objectdataset.h5", [1, 2])
    pb = _scanobjectnn_h5(root / "training_objectdataset_augmentedrot_scale75.h5", [5, 6], seed=1)
    reader = get_reader("scanobjectnn")
    assert reader.items(root, "train") == ["train/00000", "train/00001", "train/00002"]
    obj = reader.read(root, "train/00002")
    assert SCANOBJECTNN15[obj.label] == "toilet"
    np.testing.assert_array_equal(obj.coord, train[2])
    assert reader.items(root, "train_augmentedrot_scale75") == [
        "train_augmentedrot_scale75/00000", "train_augmentedrot_scale75/00001"]
    np.testing.assert_array_equal(reader.read(root, "train_augmentedrot_scale75/00001").coord,
                                  pb[1])
    with pytest.raises(InputError, match="available: test, train, train_augmentedrot_scale75"):
        reader.items(root, None)
    with pytest.raises(InputError, match="needs test_objectdataset_augmentedrot_scale75.h5"):
        reader.items(root, "test_augmentedrot_scale75")
    single = root / "test_objectdataset.h5"
    assert reader.items(single, None) == ["00000", "00001"]
    assert SCANOBJECTNN15[reader.read(single, "00001").label] == "box"
    with pytest.raises(InputError, match="no object 7"):
        reader.read(root, "test/00007")


def test_scanobjectnn_bad_objects(tmp_path):
    reader = get_reader("scanobjectnn")
    data = _scanobjectnn_h5(tmp_path / "test_objectdataset.h5", [15, 2])
    with pytest.raises(InputError, match=r"test_objectdataset.h5:object 0: class 15 out of range"):
        reader.read(tmp_path, "test/00000")
    data[1, 4, 0] = np.nan
    with h5py.File(tmp_path / "test_objectdataset.h5", "r+") as f:
        f["data"][1] = data[1]
    with pytest.raises(InputError, match="object 1: NaN"):
        reader.read(tmp_path, "test/00001")
    (tmp_path / "training_objectdataset.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="training_objectdataset.h5: cannot open HDF5"):
        reader.items(tmp_path, "train")
