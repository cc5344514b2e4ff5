"""Dataset readers on small fixtures in each dataset's native format, and on the real samples."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from pptkit.data.classes import STRUCTURED3D25
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
