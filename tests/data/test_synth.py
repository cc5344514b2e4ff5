"""Synthetic scenes: native layouts, determinism, labels, and reading back through the readers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pptkit.data.classes import MODELNET40, S3DIS13, SCANNET20, SCANNET20_NYU40_IDS, STRUCTURED3D25
from pptkit.data.ply import read_ply
from pptkit.data.readers import READERS
from pptkit.data.synth.styles import S3DIS_CLASS, SCANNET_RAW, SCANNET_TSV_ROWS, STRUCTURED3D_CLASS
from pptkit.errors import InputError
from pptkit.stages.synth import MARKER, run_synth
from tests.conftest import run_cli

ROOMS = 3  # scenes per room style in the shared fixture
READER = {"scannet": "scannet", "s3dis": "s3dis", "structured3d": "structured3d", "objects": "modelnet40"}
FURNITURE = {
    "scannet": set(SCANNET20) - {"wall", "floor", "door", "window"},
    "s3dis": {"table", "chair", "sofa", "bookcase", "board"},
    "structured3d": set(STRUCTURED3D25) - {"wall", "floor", "ceiling", "door", "window", "otherprop"},
}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    return {style: run_synth(style, root / style, 1 if style == "objects" else ROOMS, 0, False)
            for style in READER}


def _files(root: Path) -> dict[str, bytes]:
    """The dataset's files (the marker, which names the seed, left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MARKER}


@pytest.mark.parametrize("style", ["scannet", "s3dis", "structured3d", "objects"])
def test_same_seed_same_bytes_other_seed_differs(style, made, tmp_path):
    count = 1 if style == "objects" else ROOMS
    again = run_synth(style, tmp_path / "again", count, 0, False)
    assert _files(again) == _files(made[style])
    other = run_synth(style, tmp_path / "other", count, 1, False)
    a, b = _files(other), _files(made[style])
    assert any(a.get(k) != v for k, v in b.items())


def test_scene_does_not_depend_on_how_many_are_made(made, tmp_path):
    one = run_synth("scannet", tmp_path / "one", 1, 0, False)
    name = "scans/scene0000_00/scene0000_00_vh_clean_2.ply"
    assert (one / name).read_bytes() == (made["scannet"] / name).read_bytes()


def test_scannet_layout(made):
    root = made["scannet"]
    header = (root / "scannetv2-labels.combined.tsv").read_text().splitlines()[0].split("\t")
    assert {"id", "raw_category", "category", "count", "nyu40id", "nyu40class"} <= set(header)
    nyu = {row.split("\t")[1]: int(row.split("\t")[4]) for row in SCANNET_TSV_ROWS}
    assert set(SCANNET_RAW.values()) <= set(nyu)
    train = (root / "scannetv2_train.txt").read_text().split()
    val = (root / "scannetv2_val.txt").read_text().split()
    assert len(val) >= 1 and sorted(train + val) == [f"scene{i:04d}_00" for i in range(ROOMS)]
    benchmark = set()
    for scene in train + val:
        folder = root / "scans" / scene
        ply = read_ply(folder / f"{scene}_vh_clean_2.ply")
        assert list(ply.vertex) == ["x", "y", "z", "red", "green", "blue", "alpha"]
        assert ply.vertex["x"].dtype == np.float32 and ply.vertex["red"].dtype == np.uint8
        n = len(ply.vertex["x"])
        assert ply.faces is not None and ply.faces.max() < n and len(ply.faces) > n
        segs = json.loads((folder / f"{scene}_vh_clean_2.0.010000.segs.json").read_text())
        assert segs["sceneId"] == scene and len(segs["segIndices"]) == n
        agg = json.loads((folder / f"{scene}.aggregation.json").read_text())
        assert "sceneId" in agg
        present = set(segs["segIndices"])
        for k, group in enumerate(agg["segGroups"]):
            assert group["id"] == group["objectId"] == k
            assert set(group["segments"]) <= present and group["label"] in nyu
            if nyu[group["label"]] in SCANNET20_NYU40_IDS:
                benchmark.add(SCANNET20[SCANNET20_NYU40_IDS.index(nyu[group["label"]])])
    assert {"wall", "floor"} <= benchmark and len(benchmark & FURNITURE["scannet"]) >= 3


def test_s3dis_layout(made):
    root = made["s3dis"]
    rooms = sorted(p for p in root.glob("Area_*/*") if p.is_dir())
    assert len(rooms) == ROOMS and any(p.parent.name == "Area_5" for p in rooms)
    classes = set()
    for room in rooms:
        lines = 0
        for ann in (room / "Annotations").iterdir():
            match = re.fullmatch(r"([a-z]+)_(\d+)\.txt", ann.name)
            assert match and match.group(1) in S3DIS13, ann.name
            classes.add(match.group(1))
            rows = ann.read_text().splitlines()
            lines += len(rows)
            assert re.fullmatch(r"-?\d+\.\d{3} -?\d+\.\d{3} -?\d+\.\d{3} \d+ \d+ \d+", rows[0])
        assert len((room / f"{room.name}.txt").read_text().splitlines()) == lines
    assert {"ceiling", "floor", "wall", "clutter"} <= classes and len(classes & FURNITURE["s3dis"]) >= 3


def test_structured3d_layout(made):
    root = made["structured3d"]
    scenes = sorted(root.glob("*/*"))
    assert {p.parent.name for p in scenes} == {"train", "val"} and len(scenes) == ROOMS
    classes = set()
    for scene in scenes:
        arrays = {k: np.load(scene / f"{k}.npy") for k in ("coord", "color", "normal", "segment", "instance")}
        n = len(arrays["coord"])
        assert arrays["coord"].dtype == np.float32 and arrays["coord"].shape == (n, 3)
        assert arrays["color"].dtype == np.uint8 and arrays["normal"].dtype == np.float32
        assert arrays["segment"].dtype == np.int16 and arrays["instance"].dtype == np.int32
        assert arrays["segment"].shape == arrays["instance"].shape == (n,)
        assert arrays["segment"].min() >= -1 and arrays["segment"].max() < len(STRUCTURED3D25)
        np.testing.assert_allclose(np.linalg.norm(arrays["normal"], axis=1), 1.0, atol=1e-4)
        classes |= {STRUCTURED3D25[i] for i in np.unique(arrays["segment"]) if i >= 0}
    assert {"wall", "floor", "ceiling"} <= classes and len(classes & FURNITURE["structured3d"]) >= 3


def test_objects_layout(made):
    root = made["objects"]
    assert (root / "modelnet40_shape_names.txt").read_text().split() == list(MODELNET40)
    train = (root / "modelnet40_train.txt").read_text().split()
    test = (root / "modelnet40_test.txt").read_text().split()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(classes) >= 10 and set(classes) <= set(MODELNET40)
    assert sorted(train + test) == sorted(f"{c}_0001" for c in classes)
    table = np.loadtxt(root / "chair" / "chair_0001.txt", delimiter=",")
    assert table.shape == (2048, 6)
    assert np.linalg.norm(table[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-5)
    assert np.ptp(table[:, 1]) > np.ptp(table[:, 2])  # y-up, as ModelNet stores chairs


def test_label_maps_use_each_style_class_list():
    assert set(STRUCTURED3D_CLASS.values()) <= set(STRUCTURED3D25)
    assert set(S3DIS_CLASS.values()) <= set(S3DIS13)


@pytest.mark.parametrize("style", ["scannet", "s3dis", "structured3d", "objects"])
def test_readers_read_it_back(style, made):
    reader = READERS[READER[style]]
    root = made[style]
    items = reader.items(root, None)
    assert items
    item = reader.read(root, items[0])
    if style == "objects":
        assert item.coord.shape == (2048, 3) and MODELNET40[item.label] == item.name.rsplit("_", 1)[0]
        return
    names = reader.classes(root)
    present = {names[i] for i in np.unique(item.segment) if i >= 0}
    assert {"wall", "floor"} <= present and len(present) >= 5
    labelled = item.segment >= 0
    assert len(np.unique(item.instance[labelled & (item.instance >= 0)])) >= 5


def test_bad_style_and_existing_output(tmp_path):
    with pytest.raises(InputError, match="unknown style"):
        run_synth("kitti", tmp_path / "x", 1, 0, False)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run_synth("structured3d", out, 1, 0, False)
    with pytest.raises(InputError, match="not a folder written by 'pptkit synth'"):
        run_synth("structured3d", out, 1, 0, True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / MARKER).write_text("{}")  # as if synth had written it
    run_synth("structured3d", out, 1, 0, True)
    assert not (out / "keep.txt").exists() and (out / "val").is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    run_synth("structured3d", empty, 1, 0, False)
    assert not (tmp_path / "empty.tmp").exists()


def test_cli_bad_style_exits_2(tmp_path):
    result = run_cli("synth", "--style", "kitti", "--out", tmp_path / "x")
    assert result.returncode == 2 and "unknown style" in result.stderr
