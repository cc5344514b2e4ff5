"""Coloured prediction PLYs read back by pptkit and by Open3D; the default palette."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pptkit.data.classes import S3DIS13
from pptkit.data.ply import read_ply
from pptkit.eval.export import default_palette, export_prediction_ply
from tests.conftest import shared_sample


def _scene(n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    coord = rng.uniform(-2, 2, size=(n, 3)).astype(np.float32)
    pred = rng.integers(0, len(S3DIS13), size=n)
    gt = rng.integers(-1, len(S3DIS13), size=n)
    return coord, pred, gt


def test_ply_round_trip_through_pptkit_reader(tmp_path):
    coord, pred, gt = _scene()
    path = tmp_path / "scene.ply"
    export_prediction_ply(path, coord, pred, S3DIS13, gt=gt)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.ply"]
    assert b"format binary_little_endian" in path.read_bytes()[:200]
    v = read_ply(path).vertex
    assert list(v) == ["x", "y", "z", "red", "green", "blue", "label", "gt"]
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), coord)
    np.testing.assert_array_equal(v["label"], pred)
    np.testing.assert_array_equal(v["gt"], gt)
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, default_palette(len(S3DIS13))[pred])


def test_ply_read_by_open3d_with_points_and_colours(tmp_path):
    o3d = pytest.importorskip("open3d")
    coord, pred, _ = _scene(n=321, seed=1)
    palette = np.array([[10 * c, 255 - 10 * c, 7 * c] for c in range(len(S3DIS13))])
    path = tmp_path / "scene.ply"
    export_prediction_ply(path, torch.from_numpy(coord), torch.from_numpy(pred), S3DIS13,
                          palette=palette)
    cloud = o3d.io.read_point_cloud(str(path))
    assert len(cloud.points) == 321
    np.testing.assert_allclose(np.asarray(cloud.points), coord, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cloud.colors), palette[pred] / 255.0, atol=1e-6)
    assert "gt" not in read_ply(path).vertex


def test_real_s3dis_room_exported_and_read_by_open3d(tmp_path):
    o3d = pytest.importorskip("open3d")
    room = shared_sample("s3dis-sample") / "Area_1" / "hallway_1" / "Annotations"
    parts = sorted(room.glob("*_1.txt"))[:3]
    if not parts:
        pytest.skip(f"no annotation files under {room}")
    coords, labels = [], []
    for part in parts:
        points = np.loadtxt(part, dtype=np.float32, max_rows=2000, ndmin=2)
        coords.append(points[:, :3])
        labels.append(np.full(len(points), S3DIS13.index(part.name.split("_")[0])))
    coord, gt = np.concatenate(coords), np.concatenate(labels)
    path = tmp_path / "hallway_1.ply"
    export_prediction_ply(path, coord, gt, S3DIS13, gt=gt)
    cloud = o3d.io.read_point_cloud(str(path))
    assert len(cloud.points) == len(coord)
    np.testing.assert_allclose(np.asarray(cloud.colors) * 255,
                               default_palette(len(S3DIS13))[gt], atol=1e-3)


def test_default_palette_deterministic_distinct_and_tab20_based():
    from matplotlib import colormaps

    palette = default_palette(200)
    assert palette.dtype == np.uint8 and palette.shape == (200, 3)
    assert len({tuple(c) for c in palette}) == 200
    np.testing.assert_array_equal(default_palette(13), palette[:13])
    tab20 = {tuple(np.round(255 * np.array(c[:3])).astype(int)) for c in colormaps["tab20"].colors}
    assert {tuple(int(x) for x in c) for c in palette[:20]} == tab20


def test_bad_inputs_raise(tmp_path):
    coord, pred, _ = _scene(n=10)
    with pytest.raises(ValueError, match="pred labels"):
        export_prediction_ply(tmp_path / "a.ply", coord, pred + 20, S3DIS13)
    with pytest.raises(ValueError, match="palette"):
        export_prediction_ply(tmp_path / "a.ply", coord, pred, S3DIS13, palette=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="gt has 9 labels"):
        export_prediction_ply(tmp_path / "a.ply", coord, pred, S3DIS13, gt=pred[:9])
    assert not any(tmp_path.iterdir())
