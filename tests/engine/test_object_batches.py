"""Point-set batches for the point-patch stages: epoch order, per-sample randomness, loaders,
scene crops, store checks, and the object transforms they use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pptkit.data.dataset import ObjectDataset
from pptkit.data.transforms import Compose, NormalizeCoord, RandomScale, RandomShift
from pptkit.engine.object_batches import (
    NO_LABEL,
    PointBatches,
    PointSource,
    epoch_batches,
    ordered_batches,
    point_loader,
    random_crop,
)
from pptkit.errors import InputError
from pptkit.models.point_ops import farthest_point_sample
from tests.objects import object_stores, scene_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("object_batches")
    return {**object_stores(root), "scenes": scene_store(root)}


# --- epoch order --------------------------------------------------------------------------------


def test_epoch_order_is_a_permutation_in_full_batches():
    batches = epoch_batches(23, 5, seed=3, epoch=0)
    assert [len(b) for b in batches] == [5, 5, 5, 5]  # the last 3 dropped
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == 20 and flat.max() < 23
    assert all(np.array_equal(a, b) for a, b in zip(batches, epoch_batches(23, 5, seed=3, epoch=0)))
    assert not np.array_equal(flat, np.concatenate(epoch_batches(23, 5, seed=3, epoch=1)))
    assert not np.array_equal(flat, np.concatenate(epoch_batches(23, 5, seed=4, epoch=0)))


def test_ranks_share_each_global_batch():
    whole = epoch_batches(30, 6, seed=0, epoch=2)  # one process, batch 6
    shares = [epoch_batches(30, 3, seed=0, epoch=2, rank=r, world_size=2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(whole)
    for step, batch in enumerate(whole):
        together = np.concatenate([shares[0][step], shares[1][step]])
        assert sorted(together.tolist()) == sorted(batch.tolist())
        assert not set(shares[0][step].tolist()) & set(shares[1][step].tolist())


def test_too_few_items_for_a_global_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        epoch_batches(5, 3, seed=0, epoch=0, world_size=2)


def test_ordered_batches_cover_every_item_once():
    assert [b.tolist() for b in ordered_batches(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    shares = [ordered_batches(7, 2, rank=r, world_size=2) for r in range(2)]
    assert sorted(np.concatenate([np.concatenate(s) for s in shares]).tolist()) == list(range(7))
    assert [b.tolist() for b in shares[1]] == [[1, 3], [5]]  # rank 1 has no share of the last batch


# --- samples ------------------------------------------------------------------------------------


def test_fps_samples_are_normalised_farthest_points(stores):
    source = PointSource([stores["train"]], 128, "fps")
    raw = ObjectDataset(stores["train"])[3]
    points, label = source.sample(3, np.random.default_rng(0))
    assert points.shape == (128, 3) and points.dtype == np.float32 and label == raw["label"]
    assert np.abs(points.mean(axis=0)).max() < 1e-5
    assert np.linalg.norm(points, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    picked = raw["coord"][farthest_point_sample(torch.from_numpy(raw["coord"])[None], 128)[0].numpy()]
    np.testing.assert_allclose(points, NormalizeCoord()({"coord": picked}, None)["coord"], atol=1e-6)
    again, _ = source.sample(3, np.random.default_rng(99))
    assert np.array_equal(again, points)  # FPS draws nothing


def test_random_subsets_follow_the_generator(stores):
    source = PointSource([stores["train"]], 128, "random")
    a, _ = source.sample(0, np.random.default_rng([0, 0, 0]))
    b, _ = source.sample(0, np.random.default_rng([0, 0, 0]))
    c, _ = source.sample(0, np.random.default_rng([0, 1, 0]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.linalg.norm(a, axis=1).max() == pytest.approx(1.0, abs=1e-6)


def test_labels_and_class_names_of_the_pool(stores):
    source = PointSource([stores["train"], stores["test"]], 64, "fps")
    train, test = ObjectDataset(stores["train"]), ObjectDataset(stores["test"])
    assert len(source) == len(train) + len(test)
    assert source.labels.tolist() == [int(train[i]["label"]) for i in range(len(train))] + \
        [int(test[i]["label"]) for i in range(len(test))]
    assert source.class_names == train.class_names


def test_scene_crops(stores):
    source = PointSource([stores["scenes"]], 256, "random", crop=2048)
    points, label = source.sample(0, np.random.default_rng(0))
    assert points.shape == (256, 3) and label == NO_LABEL and source.class_names is None
    other, _ = source.sample(0, np.random.default_rng(1))
    assert not np.array_equal(points, other)


def test_random_crop_keeps_the_nearest_points_of_a_random_centre():
    coord = np.arange(20, dtype=np.float32).reshape(20, 1) * np.array([[1, 0, 0]], np.float32)
    crop = random_crop(coord, 5, np.random.default_rng(0))
    xs = crop[:, 0]
    assert len(crop) == 5 and xs.max() - xs.min() == 4 and np.all(np.diff(xs) > 0)  # a run, in order
    assert random_crop(coord, 50, np.random.default_rng(0)) is coord


# --- loaders --------------------------------------------------------------------------------------


def test_batches_do_not_depend_on_worker_count_or_order_of_epochs(stores):
    source = PointSource([stores["train"]], 64, "random")
    transform = Compose([RandomScale((2 / 3, 1.5), anisotropic=True), RandomShift(((-0.2, 0.2),) * 3)])

    def epoch(e: int, workers: int):
        batches = PointBatches(source, epoch_batches(len(source), 4, seed=7, epoch=e), transform, 7, e)
        return list(point_loader(batches, workers))

    serial, parallel = epoch(1, 0), epoch(1, 2)
    epoch(0, 0)  # another epoch in between changes nothing
    resumed = epoch(1, 0)
    assert len(serial) == len(source) // 4
    for a, b, c in zip(serial, parallel, resumed):
        assert a.points.shape == (4, 64, 3) and a.points.dtype == torch.float32 and a.labels.dtype == torch.int64
        assert torch.equal(a.points, b.points) and torch.equal(a.points, c.points)
        assert torch.equal(a.index, b.index) and torch.equal(a.labels, b.labels)
    assert torch.equal(serial[0].labels, torch.from_numpy(source.labels[serial[0].index.numpy()]))


# --- store checks -----------------------------------------------------------------------------


def test_scene_store_without_crop_is_refused(stores):
    with pytest.raises(InputError, match="holds scenes; pretraining on scenes needs --crop N"):
        PointSource([stores["scenes"]], 64)


def test_too_few_points(stores):
    with pytest.raises(InputError, match="objects hold 8192 points, fewer than the 10000 points"):
        PointSource([stores["train"]], 10000)
    with pytest.raises(InputError, match="fewer than --crop 100000"):
        PointSource([stores["scenes"]], 64, crop=100000)
    with pytest.raises(InputError, match="crop of 32 points is smaller than the 64 points"):
        PointSource([stores["scenes"]], 64, crop=32)


def test_missing_store(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        PointSource([tmp_path / "none.h5"], 64)


# --- transforms ---------------------------------------------------------------------------------


def test_normalize_coord_centres_into_the_unit_sphere():
    coord = np.array([[0, 0, 0], [2, 0, 0], [0, 4, 0], [2, 4, 0]], dtype=np.float32) + 10
    out = NormalizeCoord()({"coord": coord, "name": "x"}, None)
    np.testing.assert_allclose(out["coord"].mean(axis=0), 0, atol=1e-6)
    assert np.linalg.norm(out["coord"], axis=1).max() == pytest.approx(1.0)
    assert out["name"] == "x" and coord[0, 0] == 10  # input untouched
    single = NormalizeCoord()({"coord": np.ones((1, 3), np.float32)}, None)["coord"]
    assert np.array_equal(single, np.zeros((1, 3), np.float32))


def test_random_shift_is_one_offset_within_the_ranges():
    coord = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    shift = RandomShift(((-0.2, 0.2), (-0.2, 0.2), (0.5, 0.5)))
    out = shift({"coord": coord}, np.random.default_rng(1))["coord"]
    offset = out - coord
    assert np.allclose(offset, offset[0], atol=1e-6)
    assert np.all(np.abs(offset[0, :2]) <= 0.2) and offset[0, 2] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        RandomShift(((0, 1),))
