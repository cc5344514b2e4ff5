"""Dataset readers on small fixtures in each dataset's native format, and on the real samples."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pptkit.data.classes import STRUCTURED3D25
from pptkit.data.ply import write_ply
from pptkit.data.readers import READERS, get_reader
from pptkit.errors import InputError


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
