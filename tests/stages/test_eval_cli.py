"""`pptkit eval` on bad input: every dataset and output is checked before anything is written."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import pptkit.stages.evaluate as evaluate_module

from pptkit.data.store import ObjectSample, StoreMeta, write_meta, write_object
from pptkit.errors import InputError
from pptkit.stages.evaluate import EvalOptions, run_eval
from pptkit.stages.joint_train import JointTrainOptions, run_joint_train
from pptkit.stages.preprocess import PreprocessOptions, run_preprocess
from pptkit.stages.synth import run_synth
from tests.conftest import run_cli
from tests.stages.conftest import TINY

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "ppt-tiny.toml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A one-epoch run on two synthetic styles (2 rooms each) and its stores."""
    root = tmp_path_factory.mktemp("eval")
    files = {}
    for style in ("scannet", "s3dis"):
        raw = run_synth(style=style, out=root / "raw" / style, scenes=2, seed=0, overwrite=False)
        files[style] = run_preprocess(PreprocessOptions(dataset=style, input=raw, split=None,
                                                        output=root / f"{style}.h5", grid_size=0.1))
    run = root / "run"
    run_joint_train(JointTrainOptions(
        recipe=RECIPE, data=[f"{k}={v}" for k, v in files.items()], out=run, device="cpu",
        overrides=[*TINY, "train.epochs=1", "model.head=decoupled",
                   "data.ratios={scannet=1,s3dis=1}"]))
    return run, files


def object_store(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        write_meta(f, StoreMeta(dataset="s3dis", class_names=("a",), grid_size=0.0, kind="object",
                                split="", source="/x", num_points=4))
        write_object(f, "a_1", ObjectSample("a_1", np.zeros((4, 3), np.float32),
                                            np.zeros((4, 3), np.float32), 0))
    return path


def test_a_bad_second_dataset_writes_nothing(trained, tmp_path):
    run, files = trained
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    ply = tmp_path / "ply"
    result = run_cli("eval", "--checkpoint", run, "--data", f"scannet={files['scannet']}",
                     "--data", f"s3dis={junk}", "--export-ply", ply, "--device", "cpu")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(junk) in lines[0], result.stderr
    assert not (run / "eval").exists() and not ply.exists()

    cases = {"class names differ": files["scannet"], "holds objects": object_store(tmp_path / "o.h5")}
    for message, second in cases.items():
        with pytest.raises(InputError, match=message) as err:
            run_eval(EvalOptions(checkpoint=run, device="cpu", export_ply=ply,
                                 data=[f"scannet={files['scannet']}", f"s3dis={second}"]))
        assert str(second) in str(err.value)
        assert not (run / "eval").exists() and not ply.exists()


def test_bad_output_paths_are_refused_before_the_work(trained, tmp_path):
    run, files = trained
    data = [f"scannet={files['scannet']}"]
    (tmp_path / "taken").write_text("a file")
    for out, ply, message in ((tmp_path, None, "is a folder"),
                              (tmp_path / "taken" / "r.json", None, "is a file"),
                              (tmp_path / "r.json", tmp_path / "taken", "is a file")):
        with pytest.raises(InputError, match=message):
            run_eval(EvalOptions(checkpoint=run, data=data, out=out, export_ply=ply,
                                 device="cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_recipe_eval_tta_turns_voting_on(trained, tmp_path, monkeypatch):
    run, files = trained
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    ckpt["config"]["eval"].update(tta=True, tta_rotations=2, tta_scales=[1.0], tta_flip=False)
    torch.save(ckpt, tmp_path / "tta.pt")
    seen = []
    evaluate = evaluate_module.evaluate_dataset
    monkeypatch.setattr(evaluate_module, "evaluate_dataset",
                        lambda *args, **kw: seen.append(len(args[7])) or evaluate(*args, **kw))
    data = [f"scannet={files['scannet']}"]
    run_eval(EvalOptions(checkpoint=tmp_path / "tta.pt", data=data, out=tmp_path / "a.json",
                         device="cpu"))
    run_eval(EvalOptions(checkpoint=run / "last.pt", data=data, out=tmp_path / "b.json",
                         device="cpu"))
    assert seen == [2, 0]  # two rotations x one scale, no flip; then the recipe's default
