"""`pptkit joint-train` and `pptkit eval` end to end on the three synthetic styles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pptkit.data.ply import read_ply
from pptkit.stages import joint_train as joint_train_module
from pptkit.stages.evaluate import EvalOptions, run_eval
from pptkit.stages.joint_train import JointTrainOptions, run_joint_train
from tests.conftest import run_cli
from tests.stages.conftest import TINY, data_args

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "ppt-tiny.toml"
pytestmark = pytest.mark.slow


def options(files, out, epochs=2, extra=(), val=True, **kwargs) -> JointTrainOptions:
    return JointTrainOptions(
        recipe=RECIPE, data=[f"{s}={p['train']}" for s, p in files.items()],
        val=[f"{s}={p['val']}" for s, p in files.items()] if val else [], out=out, device="cpu",
        overrides=[*TINY, f"train.epochs={epochs}", *extra], **kwargs)


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_train_then_evaluate_every_style(style_data, tmp_path):
    run = tmp_path / "run"
    run_joint_train(options(style_data, run, epochs=2))

    for name in ("config.toml", "metrics.jsonl", "last.pt", "best.pt", "text_embeddings.pt"):
        assert (run / name).is_file(), name
    config = (run / "config.toml").read_text()
    assert "epochs = 2" in config and 'adapter = "pdnorm"' in config
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert {r["dataset"] for r in train} == {"structured3d", "scannet", "s3dis"}
    assert all(r["loss"] > 0 for r in train)
    val = [r for r in records if r["split"] == "val"]
    assert val and all(0.0 <= r["miou"] <= 1.0 for r in val)
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["datasets"] == ["structured3d", "scannet", "s3dis"]
    assert ckpt["model"]["head.text_embeddings"].shape == (35, 384)  # union of 25 + 20 + 13 by name

    out = tmp_path / "eval" / "results.json"
    results = run_eval(EvalOptions(checkpoint=run, data=[f"{s}={p['val']}" for s, p in style_data.items()],
                                   out=out, export_ply=tmp_path / "ply", device="cpu"))
    saved = json.loads(out.read_text())
    assert set(saved) == {"structured3d", "scannet", "s3dis"}
    for style, scores in saved.items():
        assert set(scores) == {"miou", "macc", "oa", "per_class"}
        assert 0.0 <= scores["oa"] <= 1.0 and scores["miou"] == pytest.approx(results[style].miou)
        assert (out.parent / f"confusion_{style}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        plys = list((tmp_path / "ply" / style).glob("*.ply"))
        assert len(plys) == 1
        vertex = read_ply(plys[0]).vertex
        assert {"x", "red", "label", "gt"} <= set(vertex)


def test_eval_scores_every_original_point_with_tta(style_data, tmp_path):
    run = tmp_path / "run"
    run_joint_train(options(style_data, run, epochs=1, val=False))
    scannet_val = style_data["scannet"]["val"]
    plain = run_eval(EvalOptions(checkpoint=run, data=[f"scannet={scannet_val}"], out=tmp_path / "a.json",
                                 device="cpu"))
    voted = run_eval(EvalOptions(checkpoint=run, data=[f"scannet={scannet_val}"], out=tmp_path / "b.json",
                                 device="cpu", tta=True))
    support_plain = sum(c["support"] for c in plain["scannet"].per_class.values())
    support_voted = sum(c["support"] for c in voted["scannet"].per_class.values())
    import h5py
    with h5py.File(scannet_val) as f:
        labelled = sum(int((g["points/segment"][:] >= 0).sum()) for g in f.values())
    assert support_plain == support_voted == labelled


def test_resumed_run_ends_with_the_same_weights(style_data, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    run_joint_train(options(style_data, reference, epochs=3, val=False))

    interrupted = tmp_path / "interrupted"
    real_collate = joint_train_module.collate
    calls = {"n": 0}

    def collate_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:  # in the second epoch (7 steps per epoch)
            raise KeyboardInterrupt
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(joint_train_module, "collate", collate_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_joint_train(options(style_data, interrupted, epochs=3, val=False))
    monkeypatch.setattr(joint_train_module, "collate", real_collate)
    assert torch.load(interrupted / "last.pt", weights_only=True)["epoch"] == 1

    run_joint_train(options(style_data, interrupted, epochs=3, val=False, resume=True))
    a, b = state_dict(reference / "last.pt"), state_dict(interrupted / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    reference_steps = [json.loads(line)["step"] for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert steps == reference_steps


def test_same_seed_same_weights_other_seed_differs(style_data, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_joint_train(options(style_data, tmp_path / name, epochs=1, val=False, seed=seed))
    a, b, c = (state_dict(tmp_path / n / "last.pt") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_two_cpu_processes_train_one_model(style_data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pptkit", "--quiet", "joint-train", "--recipe", str(RECIPE), "--out", str(run),
           "--device", "cpu", *data_args(style_data, "train"),
           *[arg for item in TINY + ["train.epochs=1"] for arg in ("--set", item)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    check = [r for r in records if r["split"] == "ddp_check"]
    assert check == [{**check[0], "world_size": 2, "ranks_in_sync": True}]
    epoch = [r for r in records if r["split"] == "train_epoch"][0]
    assert epoch["world_size"] == 2
    # 4 training rooms per style and a global batch of 2 (one per rank): 2 batches per style;
    # the 4:2:1 pattern 0,1,0,2 then finds structured3d exhausted, so the epoch has 4 steps.
    assert epoch["step"] == 4


@pytest.mark.parametrize("args, message", [
    (["--data", "scannet=/no/such.h5"], "/no/such.h5: file not found"),
    (["--data", "scannet"], "expected NAME=PATH.h5"),
    (["--set", "model.nope=1"], "unknown key 'model.nope'"),
    (["--resume"], "nothing to resume"),
])
def test_bad_input_is_one_line_and_exit_2(style_data, tmp_path, args, message):
    base = ["joint-train", "--recipe", RECIPE, "--out", tmp_path / "run", "--device", "cpu"]
    if "--data" not in args:
        base += ["--data", f"scannet={style_data['scannet']['train']}"]
    result = run_cli(*base, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_existing_checkpoint_needs_resume(style_data, tmp_path):
    run = tmp_path / "run"
    run_joint_train(options(style_data, run, epochs=1, val=False))
    result = run_cli("joint-train", "--recipe", RECIPE, "--out", run, "--device", "cpu",
                     "--data", f"scannet={style_data['scannet']['train']}")
    assert result.returncode == 2 and "pass --resume" in result.stderr


def test_eval_refuses_unknown_dataset_and_missing_checkpoint(style_data, tmp_path):
    result = run_cli("eval", "--checkpoint", tmp_path / "none", "--data", f"scannet={style_data['scannet']['val']}")
    assert result.returncode == 2 and "not found" in result.stderr
