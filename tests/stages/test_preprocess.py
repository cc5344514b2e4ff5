"""`pptkit preprocess` and `pptkit info` end to end, bad input, and resuming."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest

import pptkit.stages.preprocess as preprocess_module
from pptkit.data.parts import PartialStore, parts_folder
from pptkit.data.ply import write_ply
from pptkit.data.voxelize import voxelize
from pptkit.errors import InputError
from pptkit.fileio import temporary_name
from pptkit.stages.info import read_info
from pptkit.stages.preprocess import PreprocessOptions, run_preprocess
from tests.conftest import run_cli

GRID = 0.05


def room(n: int, seed: int, classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    coord = rng.uniform(0, [2, 1.5, 1], (n, 3)).astype(np.float32)
    return {"coord": coord, "color": rng.integers(0, 256, (n, 3), dtype=np.uint8),
            "segment": (rng.integers(0, classes + 1, n) - 1).astype(np.int64),
            "instance": rng.integers(0, 6, n).astype(np.int64)}


def pointcept_fixture(root: Path, scenes: int = 3, n: int = 1500) -> dict[str, dict]:
    """Pointcept-format (structured3d) scenes under root/train/<scene>/*.npy."""
    data = {}
    for i in range(scenes):
        arrays = room(n + 100 * i, i, 25)
        folder = root / "train" / f"scene_{i:05d}_room_1"
        folder.mkdir(parents=True)
        for key, value in arrays.items():
            np.save(folder / f"{key}.npy", value)
        data[f"train/scene_{i:05d}_room_1"] = arrays
    return data


def ply_fixture(root: Path, scenes: int = 2, n: int = 800) -> dict[str, dict]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("floor\nwall\nchair\n")
    data = {}
    for i in range(scenes):
        arrays = room(n, 10 + i, 3)
        write_ply(root / f"room{i}.ply", {
            "x": arrays["coord"][:, 0], "y": arrays["coord"][:, 1], "z": arrays["coord"][:, 2],
            "red": arrays["color"][:, 0], "green": arrays["color"][:, 1],
            "blue": arrays["color"][:, 2], "label": arrays["segment"].astype(np.int32)})
        data[f"room{i}.ply"] = arrays
    return data


def h5_contents(path: Path) -> dict:
    """Every dataset and attribute of a file (root 'created' left out), for comparisons."""
    out: dict = {"/": {k: v for k, v in h5py.File(path, "r").attrs.items() if k != "created"}}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            out[name + "@attrs"] = dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            for k in a[key]:
                assert np.array_equal(a[key][k], b[key][k]), (key, k)
        else:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def test_pointcept_end_to_end_with_workers_and_info(tmp_path):
    data = pointcept_fixture(tmp_path / "raw")
    out = tmp_path / "out" / "s3d_train.h5"
    result = run_cli("preprocess", "--dataset", "structured3d", "--input", tmp_path / "raw",
                     "--output", out, "--split", "train", "--grid-size", GRID, "--workers", 2)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and not temporary_name(out).exists()

    info = run_cli("info", out, "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert set(summary) == {"dataset", "class_names", "scenes", "points", "voxels",
                            "class_counts"}
    assert summary["dataset"] == "structured3d" and len(summary["class_names"]) == 25
    assert summary["scenes"] == 3
    assert summary["points"] == sum(len(a["coord"]) for a in data.values())
    assert summary["voxels"] == sum(voxelize(a["coord"], GRID).num_voxels for a in data.values())
    labels = np.concatenate([a["segment"] for a in data.values()])
    expected = np.bincount(labels[labels >= 0], minlength=25)
    assert list(summary["class_counts"].values()) == expected.tolist()
    assert list(summary["class_counts"]) == summary["class_names"]

    # One worker in-process gives the same file as two spawned workers.
    single = tmp_path / "single.h5"
    run_preprocess(PreprocessOptions(dataset="structured3d", input=tmp_path / "raw", output=single,
                                     split="train", grid_size=GRID))
    assert_same(h5_contents(out), h5_contents(single))

    table = run_cli("info", out)
    assert table.returncode == 0 and "structured3d" in table.stdout and "floor" in table.stdout


def test_ply_folder_end_to_end(tmp_path):
    data = ply_fixture(tmp_path / "raw")
    out = tmp_path / "ply.h5"
    result = run_cli("preprocess", "--dataset", "ply", "--input", tmp_path / "raw",
                     "--output", out, "--grid-size", GRID)
    assert result.returncode == 0, result.stderr
    info = read_info(out)
    assert info["class_names"] == ["floor", "wall", "chair"] and info["scenes"] == 2
    with h5py.File(out, "r") as f:
        assert f.attrs["grid_size"] == GRID and f.attrs["source"] == str((tmp_path / "raw").resolve())
        group = f["room1.ply"]
        assert group.attrs["name"] == "room1.ply"
        assert np.array_equal(group["points/segment"][()], data["room1.ply"]["segment"])
        vox = voxelize(data["room1.ply"]["coord"], GRID)
        assert np.array_equal(group["points/inverse"][()], vox.inverse)
        assert np.array_equal(group["grid_coord"][()], vox.grid_coord)


def _bad_cases(tmp: Path) -> dict[str, tuple[list, Path]]:
    """name -> (CLI arguments, the path the error line must name)."""
    cases = {}
    cases["missing folder"] = (["preprocess", "--dataset", "ply", "--input", tmp / "nowhere"],
                               tmp / "nowhere")
    wrong = tmp / "wrong"
    wrong.mkdir()
    (wrong / "room.ply").write_text("this is not a ply file\n")
    cases["wrong format"] = (["preprocess", "--dataset", "ply", "--input", wrong], wrong / "room.ply")
    cut = tmp / "cut"
    ply_fixture(cut, scenes=1)
    (cut / "room0.ply").write_bytes((cut / "room0.ply").read_bytes()[:-100])
    cases["truncated ply"] = (["preprocess", "--dataset", "ply", "--input", cut], cut / "room0.ply")
    nan = tmp / "nan"
    nan.mkdir()
    coord = np.zeros((10, 3), np.float32)
    coord[3, 1] = np.nan
    coord[5, 0] = np.inf
    np.save(nan / "scene.npy", coord)
    cases["nan coordinates"] = (["preprocess", "--dataset", "npy", "--input", nan], nan / "scene.npy")
    labels = tmp / "labels"
    ply_fixture(labels, scenes=2)
    (labels / "classes.txt").write_text("floor\nwall\n")  # the fixture uses label 2
    cases["label out of range, in a worker"] = (
        ["preprocess", "--dataset", "ply", "--input", labels, "--workers", "2"],
        labels / "room0.ply")
    empty = tmp / "empty"
    empty.mkdir()
    write_ply(empty / "void.ply", {k: np.zeros(0, np.float32) for k in "xyz"})
    cases["empty scene"] = (["preprocess", "--dataset", "ply", "--input", empty], empty / "void.ply")
    header = "ply\nformat ascii 1.0\nelement vertex {}\nproperty float x\nproperty float y\n" \
        "property float z\n"
    count = tmp / "count"
    count.mkdir()
    (count / "a.ply").write_text(header.format("abc") + "end_header\n0 0 0\n")
    cases["element count not a number"] = (["preprocess", "--dataset", "ply", "--input", count],
                                           Path(f"{count / 'a.ply'}:line 3"))
    face = tmp / "face"
    face.mkdir()
    (face / "a.ply").write_text(header.format(3) + "element face 2\nproperty list uchar int "
                                "vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"
                                "3 0 x 2\n")
    cases["face row with a non-number"] = (["preprocess", "--dataset", "ply", "--input", face],
                                           Path(f"{face / 'a.ply'}:line 14"))
    ragged = tmp / "ragged"
    ragged.mkdir()
    (ragged / "a.ply").write_text(header.format(3) + "end_header\n0 0 0\n1 0\n0 1 0\n")
    cases["ragged ascii rows"] = (["preprocess", "--dataset", "ply", "--input", ragged],
                                  Path(f"{ragged / 'a.ply'}:line 9"))
    huge = tmp / "huge"
    huge.mkdir()
    coord = np.zeros((10, 3), np.float32)
    coord[4, 2] = 3e38
    np.save(huge / "scene.npy", coord)
    cases["coordinate overflowing the grid"] = (
        ["preprocess", "--dataset", "npy", "--input", huge, "--workers", "2"], huge / "scene.npy")
    modelnet = tmp / "modelnet"
    (modelnet / "chair").mkdir(parents=True)
    (modelnet / "chair" / "chair_0001.txt").write_text("0,0,0,0,0,1\n1,0,0,0,0,1\n1,0,0,0\n")
    cases["modelnet ragged rows"] = (["preprocess", "--dataset", "modelnet40", "--input", modelnet],
                                     Path(f"{modelnet / 'chair' / 'chair_0001.txt'}:line 3"))
    grid = tmp / "grid"
    ply_fixture(grid, scenes=1)
    cases["bad grid size"] = (["preprocess", "--dataset", "ply", "--input", grid,
                               "--grid-size", "0"], Path("--grid-size"))
    return cases


@pytest.mark.slow
def test_bad_input_exit_2_one_line_no_output(tmp_path):
    for name, (args, named) in _bad_cases(tmp_path).items():
        out = tmp_path / f"{name.replace(' ', '_').replace(',', '')}.h5"
        result = run_cli(*args, "--output", out)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(named) in lines[0], (name, result.stderr)
        assert "usecols" not in lines[0], name
        assert not out.exists() and not temporary_name(out).exists(), name
        assert not parts_folder(out).exists(), name


def test_output_that_is_a_folder_is_refused_before_the_work(tmp_path):
    raw = tmp_path / "raw"
    ply_fixture(raw, scenes=1)
    folder = tmp_path / "taken.h5"
    folder.mkdir()
    result = run_cli("preprocess", "--dataset", "ply", "--input", raw, "--output", folder,
                     "--overwrite")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{folder}: is a folder; give the path of the file" in lines[0]
    assert sorted(tmp_path.iterdir()) == sorted([raw, folder])


def test_info_on_bad_stores(tmp_path):
    raw = tmp_path / "raw"
    ply_fixture(raw, scenes=1)
    good = tmp_path / "good.h5"
    run_preprocess(PreprocessOptions(dataset="ply", input=raw, output=good, grid_size=GRID))
    cases = {}
    for name, change in (("version", lambda a: a.__setitem__("format_version", "abc")),
                         ("classes", lambda a: a.__delitem__("class_names"))):
        path = tmp_path / f"{name}.h5"
        path.write_bytes(good.read_bytes())
        with h5py.File(path, "a") as f:
            change(f.attrs)
        cases[path] = {"version": "root attribute 'format_version' is 'abc', not an integer",
                       "classes": "missing root attribute 'class_names'"}[name]
    cases[raw] = "is a folder; expected an .h5 file"
    for path, message in cases.items():
        result = run_cli("info", path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{path}: {message}" in lines[0], result.stderr


def test_existing_output_truncated_store_and_foreign_file(tmp_path):
    raw = tmp_path / "raw"
    ply_fixture(raw, scenes=1)
    out = tmp_path / "done.h5"
    out.write_bytes(b"keep me")
    result = run_cli("preprocess", "--dataset", "ply", "--input", raw, "--output", out)
    assert result.returncode == 2 and str(out) in result.stderr and "--overwrite" in result.stderr
    assert out.read_bytes() == b"keep me"  # checked before any work, nothing touched

    assert run_cli("preprocess", "--dataset", "ply", "--input", raw, "--output", out,
                   "--overwrite").returncode == 0
    cut = tmp_path / "cut.h5"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    for bad in (cut, tmp_path / "raw" / "room0.ply"):
        result = run_cli("info", bad)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(bad) in lines[0]


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    pointcept_fixture(raw, scenes=4, n=600)
    reference = tmp_path / "reference.h5"
    options = dict(dataset="structured3d", input=raw, split="train", grid_size=GRID)
    run_preprocess(PreprocessOptions(output=reference, **options))

    out = tmp_path / "resumed.h5"
    add = PartialStore.add
    written: list[str] = []

    def interrupt_after_two(self, item, record):
        add(self, item, record)
        written.append(item)
        if len(written) == 2:  # a real Ctrl-C: the run stops once this item is safely written
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(PartialStore, "add", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(PreprocessOptions(output=out, **options))
    parts = parts_folder(out)
    assert not out.exists() and len(list(parts.glob("*.h5"))) == 3 and len(written) == 2
    monkeypatch.setattr(PartialStore, "add", add)

    # A different grid size (or split, or dataset) may not continue this state.
    with pytest.raises(InputError, match="grid_size"):
        run_preprocess(PreprocessOptions(output=out, resume=True,
                                         **{**options, "grid_size": 0.1}))
    assert len(list(parts.glob("*.h5"))) == 3

    converted: list[str] = []
    convert = preprocess_module._convert
    monkeypatch.setattr(preprocess_module, "_convert",
                        lambda job, item: converted.append(item) or convert(job, item))
    run_preprocess(PreprocessOptions(output=out, resume=True, **options))
    assert converted == ["train/scene_00002_room_1", "train/scene_00003_room_1"]
    assert out.exists() and not parts.exists() and not temporary_name(out).exists()
    assert_same(h5_contents(out), h5_contents(reference))


def test_stale_temporary_file_is_replaced_without_resume(tmp_path):
    raw = tmp_path / "raw"
    ply_fixture(raw, scenes=1)
    out = tmp_path / "x.h5"
    temporary_name(out).write_bytes(b"stale junk")
    run_preprocess(PreprocessOptions(dataset="ply", input=raw, output=out, grid_size=GRID))
    assert read_info(out)["scenes"] == 1 and not temporary_name(out).exists()


def test_modelnet_objects_end_to_end(tmp_path):
    raw = tmp_path / "modelnet"
    rng = np.random.default_rng(0)
    shapes = {"chair": 2, "airplane": 1}
    for cls, count in shapes.items():
        (raw / cls).mkdir(parents=True)
        for k in range(1, count + 1):
            table = np.concatenate([rng.normal(size=(300, 3)), np.tile([0.0, 0.0, 1.0], (300, 1))], 1)
            np.savetxt(raw / cls / f"{cls}_{k:04d}.txt", table, delimiter=",", fmt="%.6f")
    out = tmp_path / "mn.h5"
    run_preprocess(PreprocessOptions(dataset="modelnet40", input=raw, output=out, seed=1))
    info = read_info(out)
    assert info["scenes"] == 3 and info["voxels"] == 0 and info["points"] == 3 * 8192
    assert info["class_counts"]["chair"] == 2 and info["class_counts"]["airplane"] == 1
    assert sum(info["class_counts"].values()) == 3

    from pptkit.data.dataset import ObjectDataset

    data = ObjectDataset(out)
    sample = data[0]
    assert sample["coord"].shape == (8192, 3) and sample["label"] == info["class_names"].index("airplane")
    np.testing.assert_allclose(sample["normal"][:, 2], 1.0)


def test_real_s3dis_sample(tmp_path):
    from tests.conftest import shared_sample

    root = shared_sample("s3dis-sample")
    out = tmp_path / "s3dis.h5"
    run_preprocess(PreprocessOptions(dataset="s3dis", input=root, output=out, split="Area_1"))
    info = read_info(out)
    assert info["dataset"] == "s3dis" and info["scenes"] == 2
    assert 0 < info["voxels"] < info["points"]
    assert sum(info["class_counts"].values()) == info["points"]  # every S3DIS point is labelled


def s3dis_fixture(root: Path, rooms: int = 3, n: int = 300) -> list[Path]:
    """Area_5 rooms of two annotation files each; returns the rooms' chair files."""
    chairs = []
    for r in range(rooms):
        folder = root / "Area_5" / f"office_{r + 1}" / "Annotations"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(r)
        for name in ("chair_1", "floor_1"):
            table = np.concatenate([rng.uniform(0, 3, (n, 3)), rng.integers(0, 256, (n, 3))], 1)
            np.savetxt(folder / f"{name}.txt", table, fmt="%.4f %.4f %.4f %d %d %d")
        chairs.append(folder / "chair_1.txt")
    return chairs


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def verbose_items(stderr: str) -> list[str]:
    """Items a `-v` run reports as converted."""
    return [line.split(": ", 1)[0] for line in stderr.splitlines() if " points -> " in line]


@pytest.mark.slow
def test_bad_file_on_resume_keeps_finished_items(tmp_path):
    raw = tmp_path / "raw"
    chairs = s3dis_fixture(raw)
    reference = tmp_path / "reference.h5"
    assert run_cli("preprocess", "--dataset", "s3dis", "--input", raw, "--output", reference,
                   "--grid-size", GRID).returncode == 0
    good = chairs[1].read_text()
    lines = good.splitlines()
    lines[3] = "1.0 2.0 3.0 10 20"  # 5 values on line 4 of the second room
    chairs[1].write_text("\n".join(lines) + "\n")

    out = tmp_path / "s3dis.h5"
    args = ["-v", "preprocess", "--dataset", "s3dis", "--input", raw, "--output", out,
            "--grid-size", GRID, "--strict"]
    for resume in ([], ["--resume"]):  # a fresh run, then a resumed one, meet the bad file
        result = run_cli(*args, *resume)
        assert result.returncode == 2, result.stderr
        errors = error_lines(result.stderr)
        assert len(errors) == 1 and f"{chairs[1]}:line 4:" in errors[0], result.stderr
        assert "--resume" in errors[0] and "Traceback" not in result.stderr
        assert verbose_items(result.stderr) == ([] if resume else ["Area_5/office_1"])
        assert not out.exists() and not temporary_name(out).exists()
        assert len(list(parts_folder(out).glob("*.h5"))) == 2  # meta + the finished room

    chairs[1].write_text(good)
    result = run_cli(*args, "--resume")
    assert result.returncode == 0, result.stderr
    assert verbose_items(result.stderr) == ["Area_5/office_2", "Area_5/office_3"]
    assert_same(h5_contents(out), h5_contents(reference))
    assert not parts_folder(out).exists()


def test_nothing_is_written_before_the_input_proves_good(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "room.ply").write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\n")
    out = tmp_path / "new" / "sub" / "x.h5"
    for raw, named in ((tmp_path / "missing", tmp_path / "missing"), (bad, bad / "room.ply")):
        result = run_cli("preprocess", "--dataset", "ply", "--input", raw, "--output", out)
        assert result.returncode == 2 and str(named) in result.stderr, result.stderr
        assert not (tmp_path / "new").exists()
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    result = run_cli("preprocess", "--dataset", "ply", "--input", bad, "--output",
                     blocker / "x.h5")
    assert result.returncode == 2 and f"{blocker}: is a file" in result.stderr, result.stderr


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_warns_about_data_past_the_announced_vertices(tmp_path):
    raw = tmp_path / "[red]ply"  # user text prints literally, not as rich markup
    ply_fixture(raw, scenes=1, n=100)
    path = raw / "room0.ply"
    path.write_bytes(path.read_bytes().replace(b"element vertex 100", b"element vertex 90"))
    out = tmp_path / "ply.h5"
    result = run_cli("preprocess", "--dataset", "ply", "--input", raw, "--output", out)
    assert result.returncode == 0, result.stderr
    bytes_per_vertex = 3 * 4 + 3 + 4
    assert warning_lines(result.stderr) == [
        f"warning: {path}: the header announces 90 vertex, but {10 * bytes_per_vertex} bytes "
        "follow them; that data is ignored"], result.stderr
    assert read_info(out)["points"] == 90


@pytest.mark.slow
def test_s3dis_unknown_class_warns_and_is_an_error_under_strict(tmp_path):
    raw = tmp_path / "[b]s3dis"
    chairs = s3dis_fixture(raw, rooms=1)
    stairs = chairs[0].with_name("stairs_1.txt")
    stairs.write_text(chairs[0].read_text())
    out = tmp_path / "s3dis.h5"
    args = ["preprocess", "--dataset", "s3dis", "--input", raw, "--output", out]
    result = run_cli(*args, "--strict")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{stairs}: 'stairs' is not one of the 13" in lines[0], lines
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert warning_lines(result.stderr) == [
        f"warning: {stairs.parent}: 1 annotation file(s) of class stairs, none of the 13 S3DIS "
        "classes, count as clutter"], result.stderr
    assert read_info(out)["class_counts"]["clutter"] == 300


def test_scannet_labelled_scene_without_labels_warns(tmp_path):
    raw = tmp_path / "scannet"
    for folder in ("scans", "scans_test"):
        scene = raw / folder / ("scene0000_00" if folder == "scans" else "scene0707_00")
        scene.mkdir(parents=True)
        arrays = room(50, 0, 20)
        write_ply(scene / f"{scene.name}_vh_clean_2.ply", {
            "x": arrays["coord"][:, 0], "y": arrays["coord"][:, 1], "z": arrays["coord"][:, 2],
            "red": arrays["color"][:, 0], "green": arrays["color"][:, 1],
            "blue": arrays["color"][:, 2]})
    result = run_cli("preprocess", "--dataset", "scannet", "--input", raw, "--output",
                     tmp_path / "scannet.h5")
    assert result.returncode == 0, result.stderr
    assert warning_lines(result.stderr) == [
        f"warning: {raw / 'scans' / 'scene0000_00'}: a scene of a labelled split (train/val) "
        "without scene0000_00_vh_clean_2.0.010000.segs.json or scene0000_00.aggregation.json: "
        "read as unlabelled"], result.stderr


def test_info_prints_class_names_literally(tmp_path):
    raw = tmp_path / "raw"
    ply_fixture(raw, scenes=1)
    (raw / "classes.txt").write_text("[red]floor\n[b]\nchair\n")
    out = tmp_path / "ply.h5"
    run_preprocess(PreprocessOptions(dataset="ply", input=raw, output=out, grid_size=GRID))
    result = run_cli("info", out)
    assert result.returncode == 0 and "[red]floor" in result.stdout and "[b]" in result.stdout
