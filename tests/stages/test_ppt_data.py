"""Point Prompt Training's data path as the reference: per-dataset crops, Mix3D, main-dataset epochs."""

from __future__ import annotations

import numpy as np

from pptkit.config import load_recipe
from pptkit.data.dataset import SceneDataset
from pptkit.data.transforms import SphereCrop, mix_scenes
from pptkit.engine.batch import collate
from pptkit.engine.sampler import epoch_schedule
from pptkit.stages.joint_train import EpochBatches, dataset_key, dataset_transforms
from pptkit.stages.ppt_recipe import PPTRecipe

import torch


def test_reference_crops_per_dataset_and_overrides_by_recipe():
    recipe = load_recipe(None, PPTRecipe)
    crops = {name: [t for t in chain.transforms if isinstance(t, SphereCrop)]
             for name, chain in zip(["structured3d", "scannet", "s3dis", "other"],
                                    dataset_transforms(recipe, ["structured3d", "scannet", "s3dis", "other"]))}
    assert [(c.sample_rate, c.point_max) for c in crops["structured3d"]] == [(0.8, 100000), (None, 204800)]
    assert [(c.sample_rate, c.point_max) for c in crops["scannet"]] == [(None, 102400)]
    assert [(c.sample_rate, c.point_max) for c in crops["s3dis"]] == [(0.6, 100000), (None, 204800)]
    assert [(c.sample_rate, c.point_max) for c in crops["other"]] == [(None, 100000)]
    tuned = load_recipe(None, PPTRecipe, ["data.transforms.scannet.crop_rate=0.5", "data.point_max=5000"])
    (scannet,) = dataset_transforms(tuned, ["scannet"])
    assert [(c.sample_rate, c.point_max) for c in scannet.transforms if isinstance(c, SphereCrop)] == \
        [(0.5, 100000), (None, 5000)]


def test_sphere_crop_by_rate_keeps_that_fraction_nearest_a_random_centre():
    coord = np.random.default_rng(0).random((1000, 3)).astype(np.float32)
    out = SphereCrop(sample_rate=0.6)({"coord": coord, "segment": np.arange(1000)}, np.random.default_rng(1))
    assert len(out["coord"]) == 600
    assert np.array_equal(out["coord"], coord[out["segment"]])


def test_mixed_scenes_keep_every_point_and_its_label(style_data):
    ds = SceneDataset(style_data["scannet"]["train"])
    chain = dataset_transforms(load_recipe(None, PPTRecipe, ["data.grid_size=0.1"]), ["scannet"])[0]
    a = chain(ds[0], np.random.default_rng(0))
    b = chain(ds[1], np.random.default_rng(1))
    mixed = mix_scenes([a, b])
    assert len(mixed["coord"]) == len(a["coord"]) + len(b["coord"])
    assert np.array_equal(mixed["segment"], np.concatenate([a["segment"], b["segment"]]))
    assert np.array_equal(mixed["grid_coord"][len(a["coord"]):], b["grid_coord"])
    batch = collate([mixed], 0, torch.device("cpu"))
    assert len(batch.target) == len(mixed["coord"])  # rows in one voxel merge, none is dropped
    assert torch.equal(batch.target, torch.from_numpy(mixed["segment"].astype(np.int64)))


def test_epoch_batches_mix_pairs_with_the_recipes_probability(style_data):
    ds = SceneDataset(style_data["scannet"]["train"])
    chain = dataset_transforms(load_recipe(None, PPTRecipe, ["data.grid_size=0.1"]), ["scannet"])
    schedule = epoch_schedule([len(ds)], [1], 2, seed=0, epoch=0)
    never = EpochBatches([ds], schedule, chain, [dataset_key("scannet")], seed=0, epoch=0, mix_prob=0.0)
    always = EpochBatches([ds], schedule, chain, [dataset_key("scannet")], seed=0, epoch=0, mix_prob=1.0)
    for step in range(len(schedule)):
        _, separate = never[step]
        _, mixed = always[step]
        assert len(separate) == 2 and len(mixed) == 1
        assert len(mixed[0]["coord"]) == sum(len(s["coord"]) for s in separate)
        assert np.array_equal(mixed[0]["segment"], np.concatenate([s["segment"] for s in separate]))


def test_epoch_by_must_be_a_trained_dataset(style_data, tmp_path):
    from tests.conftest import run_cli

    result = run_cli("joint-train", "--out", tmp_path / "run", "--device", "cpu", "--set", "data.epoch_by=nope",
                     "--data", f"scannet={style_data['scannet']['train']}")
    assert result.returncode == 2 and "data.epoch_by names 'nope'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_format_1_store_trains_on_its_voxels_and_says_so(style_data, tmp_path):
    import shutil

    import h5py

    from tests.conftest import run_cli
    from tests.stages.conftest import TINY

    old = tmp_path / "scannet_v1.h5"
    shutil.copy(style_data["scannet"]["train"], old)
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = 1
        for group in f.values():
            for key in ("coord", "color", "normal", "instance"):
                del group["points"][key]
    result = run_cli("joint-train", "--out", tmp_path / "run", "--device", "cpu", "--data", f"scannet={old}",
                     *[arg for item in TINY + ["train.epochs=1"] for arg in ("--set", item)])
    assert result.returncode == 0, result.stderr
    assert (f"warning: {old}: store format 1 holds no original points; 'scannet' trains on its voxels "
            "(preprocess it again for format 2)") in result.stderr
