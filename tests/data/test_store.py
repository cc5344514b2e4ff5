"""HDF5 store round trips, format checks, and the lazy loaders."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from pptkit.data.dataset import ObjectDataset, SceneDataset
from pptkit.data.store import (
    FORMAT_VERSION,
    StoreMeta,
    group_name,
    open_store,
    sample_object,
    voxelize_scene,
    write_meta,
    write_object,
    write_scene,
)
from pptkit.data.types import PointObject, PointScene
from pptkit.errors import InputError


def make_scene(name: str, n: int, seed: int, normals: bool = True) -> PointScene:
    rng = np.random.default_rng(seed)
    coord = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    normal = rng.normal(size=(n, 3)).astype(np.float32) if normals else None
    if normal is not None:
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return PointScene(name=name, coord=coord, color=rng.integers(0, 256, (n, 3)).astype(np.uint8),
                      segment=rng.integers(-1, 3, n).astype(np.int16),
                      instance=rng.integers(-1, 5, n).astype(np.int32), normal=normal)


def scene_meta() -> StoreMeta:
    return StoreMeta(dataset="toy", class_names=("a", "b", "c"), grid_size=0.1, kind="scene",
                     split="train", source="/data/toy")


def write_scene_file(path, scenes: dict[str, PointScene]) -> dict:
    records = {}
    with h5py.File(path, "w") as f:
        write_meta(f, scene_meta())
        for item, scene in scenes.items():
            records[item] = voxelize_scene(scene, 0.1)
            write_scene(f, item, records[item])
    return records


def test_scene_round_trip(tmp_path):
    path = tmp_path / "toy.h5"
    scenes = {"Area_1/room_1": make_scene("room_1", 2000, 0),
              "Area_2/room_1": make_scene("room_1", 500, 1, normals=False)}
    records = write_scene_file(path, scenes)

    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["ignore_index"] == -1 and f.attrs["kind"] == "scene"
        assert sorted(f) == ["Area_1__room_1", "Area_2__room_1"]
        group = f["Area_1__room_1"]
        assert group.attrs["name"] == "Area_1/room_1" and group.attrs["complete"]
        assert group.attrs["num_points"] == 2000
        assert group["coord"].compression == "gzip" and group["coord"].chunks is not None
        dtypes = {k: group[k].dtype for k in ("grid_coord", "coord", "color", "normal",
                                               "segment", "instance")}
        assert dtypes == {"grid_coord": np.int32, "coord": np.float32, "color": np.uint8,
                          "normal": np.float32, "segment": np.int16, "instance": np.int32}
        assert group["points/segment"].dtype == np.int16
        assert group["points/inverse"].dtype == np.int32

    data = SceneDataset(path, with_points=True)
    assert len(data) == 2 and data.class_names == ("a", "b", "c")
    assert data.dataset_name == "toy" and data.grid_size == pytest.approx(0.1)
    for i, item in enumerate(["Area_1/room_1", "Area_2/room_1"]):
        sample, record = data[i], records[item]
        assert sample["name"] == item
        for key in ("grid_coord", "coord", "color", "normal", "segment", "instance"):
            assert np.array_equal(sample[key], getattr(record, key)), key
        assert np.array_equal(sample["point_segment"], scenes[item].segment)
        assert np.array_equal(sample["inverse"], record.inverse)
        # Voxel labels are consistent with the per-point labels they summarise.
        m = len(sample["coord"])
        assert sample["inverse"].max() == m - 1
    # Normals: re-normalised means where given, zeros where the dataset had none.
    norms = np.linalg.norm(data[0]["normal"], axis=1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, atol=1e-5)
    assert not data[1]["normal"].any()


def test_voxel_values_are_means_and_majorities():
    scene = PointScene(
        name="s", coord=np.array([[0.01, 0, 0], [0.03, 0, 0], [0.05, 0, 0], [0.5, 0, 0]], np.float32),
        color=np.array([[0, 0, 0], [10, 20, 30], [11, 20, 30], [255, 255, 255]], np.uint8),
        segment=np.array([2, 1, 2, -1], np.int16), instance=np.array([4, 4, 7, -1], np.int32))
    record = voxelize_scene(scene, 0.1)
    np.testing.assert_allclose(record.coord[0], [0.03, 0, 0], atol=1e-7)
    assert record.color[0].tolist() == [7, 13, 20]  # rounded means
    assert record.segment.tolist() == [2, -1] and record.instance.tolist() == [4, -1]
    assert record.inverse.tolist() == [0, 0, 0, 1]


def test_pickling_and_forking_drop_the_handle(tmp_path):
    path = tmp_path / "toy.h5"
    write_scene_file(path, {"a": make_scene("a", 300, 2)})
    data = SceneDataset(path)
    assert "inverse" not in data[0]
    clone = pickle.loads(pickle.dumps(SceneDataset(path)))
    assert clone._file is None and np.array_equal(clone[0]["coord"], data[0]["coord"])
    data._pid = -1  # as after a fork: the handle must be re-opened, not reused
    old = data._file
    assert data[0]["name"] == "a" and data._file is not old


def test_objects_round_trip_and_deterministic_sampling(tmp_path):
    rng = np.random.default_rng(0)
    small = PointObject("chair_0001", rng.normal(size=(100, 3)).astype(np.float32), 2,
                        rng.normal(size=(100, 3)).astype(np.float32))
    big = PointObject("table_0001", rng.normal(size=(5000, 3)).astype(np.float32), 1)
    a, b = sample_object(big, 256, seed=3), sample_object(big, 256, seed=3)
    assert np.array_equal(a.coord, b.coord)
    assert not np.array_equal(a.coord, sample_object(big, 256, seed=4).coord)
    assert len(np.unique(a.coord, axis=0)) == 256  # without replacement when enough points
    up = sample_object(small, 256, seed=3)
    assert up.coord.shape == (256, 3) and up.normal.shape == (256, 3)

    path = tmp_path / "obj.h5"
    meta = StoreMeta(dataset="modelnet40", class_names=("x", "table", "chair"), grid_size=0.02,
                     kind="object", split="train", source="/d", num_points=256)
    with h5py.File(path, "w") as f:
        write_meta(f, meta)
        write_object(f, "chair/chair_0001", up)
        write_object(f, "table/table_0001", a)
    data = ObjectDataset(path)
    assert len(data) == 2
    sample = data[0]
    assert sample["name"] == "chair/chair_0001" and sample["label"] == 2
    assert np.array_equal(sample["coord"], up.coord)
    assert not data[1]["normal"].any()
    with pytest.raises(InputError, match="holds objects"):
        SceneDataset(path)


def test_group_names():
    assert group_name("Area_1/office_1") == "Area_1__office_1"
    assert group_name("train/scene0000_00") == "train__scene0000_00"
    assert group_name("plain.ply") == "plain.ply"


def test_refuses_newer_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "toy.h5"
    write_scene_file(path, {"a": make_scene("a", 300, 2)})
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(InputError, match="newer") as err:
        open_store(path)
    assert str(path) in str(err.value)

    truncated = tmp_path / "cut.h5"
    write_scene_file(truncated, {"a": make_scene("a", 300, 2)})
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(InputError, match="cannot open as HDF5") as err:
        SceneDataset(truncated)
    assert str(truncated) in str(err.value)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(InputError, match="not a pptkit HDF5"):
        open_store(foreign)
    with pytest.raises(InputError, match="not found"):
        open_store(tmp_path / "missing.h5")


def test_format_2_keeps_the_original_points_and_serves_them_as_rows(tmp_path):
    path = tmp_path / "toy.h5"
    scenes = {"a": make_scene("a", 3000, 0), "b": make_scene("b", 800, 1, normals=False)}
    write_scene_file(path, scenes)
    points = SceneDataset(path, rows="points")
    assert points.has_points and points.rows == "points"
    for i, scene in enumerate(scenes.values()):
        sample = points[i]
        assert set(sample) == {"name", "coord", "color", "normal", "segment", "instance"}
        assert np.array_equal(sample["coord"], scene.coord) and sample["coord"].dtype == np.float32
        assert np.array_equal(sample["color"], scene.color) and sample["color"].dtype == np.uint8
        assert np.array_equal(sample["segment"], scene.segment)
        assert np.array_equal(sample["instance"], scene.instance)
        expected_normal = np.zeros((len(scene.coord), 3), np.float32) if scene.normal is None else scene.normal
        assert np.array_equal(sample["normal"], expected_normal)
    voxels = SceneDataset(path)  # the default rows are still the voxels
    assert len(voxels[0]["coord"]) < 3000 and "grid_coord" in voxels[0]


def test_format_1_files_are_read_and_say_they_hold_no_points(tmp_path):
    path = tmp_path / "old.h5"
    write_scene_file(path, {"a": make_scene("a", 1000, 0)})
    with h5py.File(path, "r+") as f:  # what pptkit 0.1 wrote: no original points beyond labels
        f.attrs["format_version"] = 1
        for key in ("coord", "color", "normal", "instance"):
            del f["a/points"][key]
    data = SceneDataset(path, with_points=True, rows="points")
    assert not data.has_points and data.rows == "voxels"
    sample = data[0]
    assert "grid_coord" in sample and len(sample["inverse"]) == 1000
