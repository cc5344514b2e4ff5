"""Training transforms: each one's meaning, determinism, and elastic distortion against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import convolve

from pptkit.data import transforms as T


def make_scene(num_points: int = 6000, seed: int = 0) -> dict:
    """A small room: floor, two walls and a table top, with colours, normals and labels.

    `segment` is the row number modulo 997 and `instance` the row number, so any reordering or
    dropping of rows can be checked for alignment against `coord`.
    """
    rng = np.random.default_rng(seed)
    plane = rng.integers(0, 4, num_points)
    s, t = rng.random((2, num_points))
    coord = np.zeros((num_points, 3))
    normal = np.zeros((num_points, 3))
    floor, wall_x, wall_y, table = (plane == k for k in range(4))
    coord[floor] = np.stack([4 * s[floor], 3 * t[floor], 0 * s[floor]], 1); normal[floor] = (0, 0, 1)
    coord[wall_x] = np.stack([0 * s[wall_x], 3 * s[wall_x], 2.5 * t[wall_x]], 1); normal[wall_x] = (1, 0, 0)
    coord[wall_y] = np.stack([4 * s[wall_y], 0 * s[wall_y], 2.5 * t[wall_y]], 1); normal[wall_y] = (0, 1, 0)
    coord[table] = np.stack([1 + s[table], 1 + t[table], 0.75 + 0 * s[table]], 1); normal[table] = (0, 0, 1)
    coord += np.array([10.0, -5.0, 1.0])  # away from the origin, as raw scans are
    rows = np.arange(num_points)
    return {
        "coord": coord.astype(np.float32),
        "grid_coord": np.floor(coord / 0.02).astype(np.int32),
        "color": rng.integers(20, 236, (num_points, 3)).astype(np.uint8),
        "normal": normal.astype(np.float32),
        "segment": (rows % 997).astype(np.int16),
        "instance": rows.astype(np.int32),
        "name": "test_room",
    }


def row_ids(data: dict) -> np.ndarray:
    return data["instance"].astype(np.int64)


def assert_aligned(out: dict, original: dict) -> None:
    """Every per-row array of `out` holds, row by row, the original row named by its instance id."""
    ids = row_ids(out)
    for key in ("grid_coord", "color", "normal", "segment"):
        np.testing.assert_array_equal(out[key], original[key][ids], err_msg=key)
    assert out["name"] == original["name"]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_center_shift_puts_bbox_centre_at_origin_and_floor_at_zero():
    scene = make_scene()
    original = scene["coord"].copy()
    out = T.CenterShift(apply_z=True)(scene, rng())
    low, high = out["coord"].min(0), out["coord"].max(0)
    np.testing.assert_allclose((low + high)[:2] / 2, 0, atol=1e-5)
    assert abs(low[2]) < 1e-6
    flat = T.CenterShift(apply_z=False)(scene, rng())
    np.testing.assert_array_equal(flat["coord"][:, 2], scene["coord"][:, 2])
    np.testing.assert_array_equal(scene["coord"], original)  # the input was not modified


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_rotation_preserves_distances_to_its_centre_and_unit_normals(axis):
    scene = make_scene()
    rotate = T.RandomRotate(angle=(-1, 1), axis=axis, always_apply=True)
    out = rotate(scene, rng(3))
    centre = (scene["coord"].min(0) + scene["coord"].max(0)) / 2  # the default pivot
    before = np.linalg.norm(scene["coord"] - centre, axis=1)
    after = np.linalg.norm(out["coord"] - centre, axis=1)
    np.testing.assert_allclose(after, before, atol=2e-5)
    assert not np.allclose(out["coord"], scene["coord"])
    np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=1), 1, atol=1e-6)
    k = "xyz".index(axis)
    np.testing.assert_allclose(out["coord"][:, k], scene["coord"][:, k], atol=2e-5)  # axis fixed


def test_rotation_about_a_given_centre_matches_the_matrix():
    scene = make_scene()
    out = T.RandomRotate(angle=(0.5, 0.5), axis="z", center=(0, 0, 0), always_apply=True)(scene, rng())
    expected = scene["coord"] @ T.rotation_matrix("z", np.pi / 2).T
    np.testing.assert_allclose(out["coord"], expected, atol=1e-4)
    np.testing.assert_allclose(out["coord"][:, 0], -scene["coord"][:, 1], atol=1e-4)  # 90 deg: x' = -y


def test_rotation_probability():
    scene = make_scene(100)
    never = T.RandomRotate(p=0.0)
    assert all(never(scene, rng(s)) is scene for s in range(20))
    sometimes = T.RandomRotate(p=0.5)
    applied = sum(sometimes(scene, rng(s)) is not scene for s in range(200))
    assert 70 < applied < 130


def test_flip_mirrors_x_and_y_and_normals():
    scene = make_scene()
    out = T.RandomFlip(p=1.0)(scene, rng())
    np.testing.assert_array_equal(out["coord"][:, :2], -scene["coord"][:, :2])
    np.testing.assert_array_equal(out["coord"][:, 2], scene["coord"][:, 2])
    np.testing.assert_array_equal(out["normal"][:, :2], -scene["normal"][:, :2])
    assert T.RandomFlip(p=0.0)(scene, rng()) is scene


def test_scale_is_one_factor_inside_the_range():
    scene = make_scene()
    factors = []
    for seed in range(30):
        out = T.RandomScale(scale=(0.9, 1.1))(scene, rng(seed))
        ratio = out["coord"] / scene["coord"]
        assert np.ptp(ratio) < 1e-5  # isotropic: the same factor on every coordinate
        factors.append(ratio[0, 0])
    assert 0.9 <= min(factors) and max(factors) <= 1.1 and np.ptp(factors) > 0.1
    aniso = T.RandomScale(scale=(0.5, 2.0), anisotropic=True)(scene, rng())
    assert np.ptp((aniso["coord"] / scene["coord"])[0]) > 1e-3


def test_dropout_keeps_arrays_aligned_and_remaps_inverse():
    scene = make_scene(5000)
    scene["inverse"] = np.repeat(np.arange(5000), 2)  # two original points per row
    scene["point_segment"] = np.zeros(10000, dtype=np.int16)
    out = T.RandomDropout(dropout_ratio=0.2, dropout_application_ratio=1.0)(scene, rng())
    assert len(out["coord"]) == 4000
    assert len(np.unique(row_ids(out))) == 4000
    np.testing.assert_array_equal(out["coord"], scene["coord"][row_ids(out)])
    assert_aligned(out, scene)
    assert out["point_segment"] is scene["point_segment"]
    kept = out["inverse"] >= 0
    assert kept.sum() == 8000  # two original points per surviving row
    np.testing.assert_array_equal(row_ids(out)[out["inverse"][kept]], scene["inverse"][kept])
    assert T.RandomDropout(dropout_application_ratio=0.0)(scene, rng()) is scene


def test_jitter_is_clipped_and_has_the_requested_spread():
    scene = make_scene(20000)
    out = T.RandomJitter(sigma=0.01, clip=0.02)(scene, rng())
    delta = out["coord"] - scene["coord"]
    assert np.abs(delta).max() <= 0.02 + 1e-6
    assert abs(delta.std() - 0.0098) < 0.0005  # std of N(0, 0.01) clipped at 2 sigma is 0.88 * 0.01
    assert abs(delta.mean()) < 5e-4


def test_standard_normal_f32_moments():
    sample = T.standard_normal_f32(rng(), (100001,))
    assert sample.dtype == np.float32 and sample.shape == (100001,)
    assert abs(sample.mean()) < 0.02 and abs(sample.std() - 1) < 0.02
    assert abs(np.mean(np.abs(sample) < 1) - 0.6827) < 0.01


def test_grid_sample_keeps_one_point_per_voxel_chosen_at_random():
    scene = make_scene(20000)
    grid = 0.1
    out = T.GridSample(grid_size=grid)(scene, rng(0))
    voxel_of = lambda coord: np.floor(coord / np.float32(grid)).astype(np.int64)  # noqa: E731
    occupied = np.unique(voxel_of(scene["coord"]), axis=0)
    kept_voxels = voxel_of(out["coord"])
    assert len(out["coord"]) == len(occupied) == len(np.unique(kept_voxels, axis=0))
    np.testing.assert_array_equal(out["coord"], scene["coord"][row_ids(out)])
    assert_aligned({**out, "grid_coord": scene["grid_coord"][row_ids(out)]}, scene)
    np.testing.assert_array_equal(out["grid_coord"], kept_voxels - kept_voxels.min(0))
    assert out["grid_coord"].dtype == np.int32
    again = T.GridSample(grid_size=grid)(scene, rng(1))
    assert not np.array_equal(row_ids(again), row_ids(out))  # a different pick per call


def test_grid_sample_inverse_follows_the_kept_point_of_each_voxel():
    scene = make_scene(3000)
    scene["inverse"] = np.arange(3000)[::-1].copy()
    out = T.GridSample(grid_size=0.2)(scene, rng())
    voxel_of = lambda coord: np.floor(coord / np.float32(0.2)).astype(np.int64)  # noqa: E731
    np.testing.assert_array_equal(
        voxel_of(out["coord"][out["inverse"]]), voxel_of(scene["coord"][scene["inverse"]])
    )


def test_sphere_crop_keeps_the_nearest_points():
    scene = make_scene(5000)
    out = T.SphereCrop(point_max=1200, mode="center")(scene, rng())
    assert len(out["coord"]) == 1200
    assert_aligned(out, scene)
    centre = (scene["coord"].min(0) + scene["coord"].max(0)) / 2
    distance = np.linalg.norm(scene["coord"] - centre, axis=1)
    inside = np.zeros(5000, dtype=bool)
    inside[row_ids(out)] = True
    assert distance[inside].max() <= distance[~inside].min()
    random_crop = T.SphereCrop(point_max=1200, mode="random")
    assert len(random_crop(scene, rng(1))["coord"]) == 1200
    small = make_scene(500)
    assert random_crop(small, rng()) is small


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_chromatic_ops_keep_range_and_dtype(dtype):
    scene = make_scene(4000)
    scene["color"] = scene["color"].astype(dtype)
    for transform in (
        T.ChromaticAutoContrast(p=1.0),
        T.ChromaticTranslation(p=1.0, ratio=0.5),
        T.ChromaticJitter(p=1.0, std=0.5),
    ):
        out = transform(scene, rng(2))
        assert out["color"].dtype == dtype, type(transform).__name__
        assert out["color"].min() >= 0 and out["color"].max() <= 255
        assert not np.array_equal(out["color"], scene["color"])
        np.testing.assert_array_equal(out["coord"], scene["coord"])


def test_auto_contrast_with_full_blend_stretches_each_channel():
    scene = make_scene(4000)
    scene["color"][:, 2] = 77  # a constant channel stays as it is
    out = T.ChromaticAutoContrast(p=1.0, blend_factor=1.0)(scene, rng())
    assert out["color"][:, :2].min() == 0 and out["color"][:, :2].max() == 255
    assert (out["color"][:, 2] == 77).all()


def test_chromatic_translation_shifts_every_point_alike():
    scene = make_scene(4000)
    scene["color"] = np.full((4000, 3), 128, dtype=np.uint8)
    out = T.ChromaticTranslation(p=1.0, ratio=0.05)(scene, rng())
    shift = out["color"].astype(int) - 128
    assert (shift == shift[0]).all() and (np.abs(shift) <= 13).all()


def test_normalize_color_maps_to_minus_one_one():
    scene = make_scene(10)
    scene["color"][:2] = [[0, 0, 0], [255, 255, 255]]
    out = T.NormalizeColor()(scene, rng())
    assert out["color"].dtype == np.float32
    np.testing.assert_allclose(out["color"][:2], [[-1, -1, -1], [1, 1, 1]], atol=1e-6)


def reference_noise_grid(coord: np.ndarray, granularity: float, seed: int):
    """The reference's grid: same Gaussian draws, blurred by ndimage.convolve box kernels, twice."""
    low = coord.min(0)
    noise_dim = ((coord - low).max(0) // granularity).astype(int) + 3
    noise = np.random.default_rng(seed).standard_normal((*noise_dim, 3), dtype=np.float32)
    for _ in range(2):
        for shape in ((3, 1, 1, 1), (1, 3, 1, 1), (1, 1, 3, 1)):
            noise = convolve(noise, np.ones(shape, dtype=np.float32) / 3, mode="constant", cval=0)
    axes = [np.linspace(a, b, d) for a, b, d in
            zip(low - granularity, low + granularity * (noise_dim - 2), noise_dim)]
    return noise, axes


@pytest.mark.parametrize("granularity", [0.2, 0.8])
def test_elastic_grid_and_interpolation_equal_the_scipy_reference(granularity):
    coord = T.CenterShift()(make_scene(20000), rng())["coord"]
    noise, origin = T.elastic_noise_grid(coord, granularity, rng(7))
    ref_noise, axes = reference_noise_grid(coord, granularity, 7)
    assert noise.shape == ref_noise.shape
    np.testing.assert_allclose(noise, ref_noise, atol=1e-6)
    np.testing.assert_allclose(origin, [a[0] for a in axes], atol=1e-6)
    ours = T.trilinear_interpolate(noise, origin, granularity, coord)
    theirs = RegularGridInterpolator(axes, ref_noise, bounds_error=False, fill_value=0)(coord)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_trilinear_interpolation_on_a_fixed_grid():
    grid = np.random.default_rng(1).standard_normal((5, 4, 6, 2)).astype(np.float32)
    origin = np.array([-1.0, 2.0, 0.5], dtype=np.float32)
    axes = [origin[k] + 0.3 * np.arange(grid.shape[k]) for k in range(3)]
    nodes = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    np.testing.assert_allclose(T.trilinear_interpolate(grid, origin, 0.3, nodes), grid.reshape(-1, 2), atol=1e-5)
    points = origin + rng().random((3000, 3)) * 0.3 * (np.array(grid.shape[:3]) - 1)
    expected = RegularGridInterpolator(axes, grid)(points)
    np.testing.assert_allclose(T.trilinear_interpolate(grid, origin, 0.3, points), expected, atol=1e-5)


def test_elastic_distortion_has_the_reference_magnitude():
    """Displacement spread over seeds matches the reference pipeline (convolve + interpolator)."""
    coord = T.CenterShift()(make_scene(4000), rng())["coord"]
    elastic = T.ElasticDistortion(p=1.0)
    ours, ref = [], []
    for seed in range(12):
        ours.append(elastic({"coord": coord}, rng(seed))["coord"] - coord)
        warped = coord.astype(np.float64)
        for k, (granularity, magnitude) in enumerate(((0.2, 0.4), (0.8, 1.6))):
            noise, axes = reference_noise_grid(warped, granularity, 1000 * seed + k)
            warped = warped + magnitude * RegularGridInterpolator(axes, noise)(warped)
        ref.append(warped - coord)
    rms_ours = np.sqrt(np.mean(np.square(ours)))
    rms_ref = np.sqrt(np.mean(np.square(ref)))
    assert 0.05 < rms_ref < 0.5
    assert abs(rms_ours / rms_ref - 1) < 0.15
    assert T.ElasticDistortion(p=0.0)({"coord": coord}, rng())["coord"] is coord


def test_train_chain_is_deterministic_per_generator_and_keeps_rows_aligned():
    scene = make_scene(20000)
    chain = T.train_transforms(grid_size=0.05, point_max=3000)
    first, second = chain(scene, rng(5)), chain(scene, rng(5))
    assert first.keys() == second.keys()
    for key, value in first.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, second[key], err_msg=key)
    assert len(first["coord"]) <= 3000
    assert first["color"].dtype == np.float32 and np.abs(first["color"]).max() <= 1
    assert first["grid_coord"].dtype == np.int32 and first["grid_coord"].min() == 0
    np.testing.assert_array_equal(first["segment"], scene["segment"][row_ids(first)])
    other = chain(scene, rng(6))
    assert not np.array_equal(other["instance"], first["instance"])


def test_eval_chain_keeps_every_original_point_mapped():
    scene = make_scene(5000)
    scene["inverse"] = np.arange(5000)
    out = T.eval_transforms(grid_size=0.1)(scene, rng())
    assert (out["inverse"] >= 0).all() and out["inverse"].max() < len(out["coord"])
    assert abs(out["coord"][:, 2].min()) < 1e-6 and out["color"].dtype == np.float32


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        T.RandomRotate(axis="w")
    with pytest.raises(ValueError):
        T.SphereCrop(point_max=0)
    with pytest.raises(ValueError):
        T.GridSample(grid_size=0)
    with pytest.raises(ValueError):
        T.RandomJitter(clip=0)
