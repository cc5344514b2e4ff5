"""`pptkit joint-train` and `pptkit eval` end to end on the three synthetic styles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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
    (["--set", "data.batch_size=0"], "'data.batch_size' must be >= 1, got 0"),
    (["--set", "train.log_every=0"], "'train.log_every' must be >= 1, got 0"),
    (["--set", "data.grid_size=0"], "'data.grid_size' must be > 0"),
    (["--set", "optim.lr=-1"], "'optim.lr' must be > 0"),
    (["--set", "train.epochs=0"], "'train.epochs' must be >= 1"),
    (["--set", "data.batch_size=5"], "dataset 'scannet' has 4 scenes, fewer than one global batch (5"),
    (["--set", "data.ratios={}"], "no ratio for dataset 'scannet' (add it to [data] ratios)"),
    (["--data", "structured3d=STORE"], "validation set 'scannet' is not one of the trained datasets"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(style_data, tmp_path, args, message):
    base = ["joint-train", "--recipe", RECIPE, "--out", tmp_path / "run", "--device", "cpu"]
    if "--data" not in args:
        base += ["--data", f"scannet={style_data['scannet']['train']}"]
    else:
        args = [a.replace("STORE", str(style_data["structured3d"]["train"])) for a in args]
        if "structured3d=" in args[1]:
            args += ["--val", f"scannet={style_data['scannet']['val']}"]
    result = run_cli(*base, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_out_naming_a_file_is_refused(style_data, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    result = run_cli("joint-train", "--recipe", RECIPE, "--out", target, "--device", "cpu",
                     "--data", f"scannet={style_data['scannet']['train']}")
    assert result.returncode == 2 and "--out names an existing file" in result.stderr
    assert target.read_text() == "mine"


def test_resume_with_datasets_in_another_order_says_which(style_data, tmp_path):
    run = tmp_path / "run"
    files = {s: style_data[s] for s in ("scannet", "s3dis")}
    run_joint_train(options(files, run, epochs=1, val=False))
    result = run_cli("joint-train", "--out", run, "--device", "cpu", "--resume",
                     "--data", f"s3dis={files['s3dis']['train']}", "--data", f"scannet={files['scannet']['train']}")
    assert result.returncode == 2, result.stderr
    assert "--data datasets ['s3dis', 'scannet'] differ from the checkpoint's ['scannet', 's3dis']" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def cli_command(*args) -> list[str]:
    return [sys.executable, "-c", "from pptkit.cli import main; main()", "--quiet", *map(str, args)]


def sigint_as_a_terminal_sends_it() -> None:
    """Child set-up: a shell's background job (CI runners, `cmd &`) starts with SIGINT ignored,
    and Python keeps an inherited ignore; these tests press Ctrl-C, so restore the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_training(style_data, run: Path, epochs: int = 50) -> subprocess.Popen:
    """A joint-train run in a subprocess that logs every step, for interrupting."""
    cmd = cli_command("joint-train", "--recipe", RECIPE, "--out", run, "--device", "cpu",
                      "--data", f"scannet={style_data['scannet']['train']}",
                      *[arg for item in TINY + [f"train.epochs={epochs}"] for arg in ("--set", item)])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=sigint_as_a_terminal_sends_it)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_a_second_run_in_the_same_folder_is_refused(style_data, tmp_path):
    run = tmp_path / "run"
    first = start_training(style_data, run)
    try:
        wait_for(lambda: (run / ".lock").is_file(), first)
        second = run_cli("joint-train", "--recipe", RECIPE, "--out", run, "--device", "cpu",
                         "--data", f"scannet={style_data['scannet']['train']}")
        assert second.returncode == 2, second.stderr
        assert f"in use by another pptkit run (pid {first.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()


def test_ctrl_c_exits_130_with_one_line_and_the_run_resumes(style_data, tmp_path):
    run = tmp_path / "run"
    proc = start_training(style_data, run, epochs=3)
    wait_for(lambda: (run / "last.pt").is_file(), proc)  # one epoch done: a checkpoint to keep
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: finished work is kept")
    assert "Traceback" not in stderr
    assert not (run / ".lock").exists()
    epoch = torch.load(run / "last.pt", weights_only=True)["epoch"]
    result = run_cli("joint-train", "--out", run, "--device", "cpu", "--resume",
                     "--data", f"scannet={style_data['scannet']['train']}")
    assert result.returncode == 0, result.stderr
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3 >= epoch


def test_ctrl_c_during_eval_exits_130_with_one_line(style_data, tmp_path):
    run = tmp_path / "run"
    run_joint_train(options({"scannet": style_data["scannet"]}, run, epochs=1, val=False))
    for _ in range(5):  # the four tiny rooms can be scored before the signal lands: then try again
        proc = subprocess.Popen(cli_command("eval", "--checkpoint", run, "--device", "cpu", "--tta",
                                            "--data", f"scannet={style_data['scannet']['train']}"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=sigint_as_a_terminal_sends_it)
        first = proc.stderr.readline()  # the first progress line: eval is predicting scene 1 of 4
        assert "1/4" in first, first
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=60)
        stderr = first + rest
        if proc.returncode != 0:
            break
    else:
        pytest.fail("eval finished before the interrupt arrived, five times")
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted:")
    assert "Traceback" not in stderr


def test_loader_workers_start_under_spawn(style_data, monkeypatch):
    """macOS and Python 3.14 start DataLoader workers by spawning: everything must pickle."""
    import multiprocessing

    from pptkit.data.dataset import SceneDataset
    from pptkit.data.transforms import train_transforms
    from pptkit.engine.sampler import epoch_schedule

    datasets = [SceneDataset(style_data["scannet"]["train"])]
    schedule = epoch_schedule([len(datasets[0])], [1], 2, seed=0, epoch=0)
    batches = joint_train_module.EpochBatches(datasets, schedule, [train_transforms(0.1)],
                                              [joint_train_module.dataset_key("scannet")], seed=0, epoch=0,
                                              mix_prob=0.5)
    expected = [batches[i] for i in range(len(batches))]
    loader = joint_train_module.epoch_loader(batches, num_workers=2)
    loader.multiprocessing_context = multiprocessing.get_context("spawn")
    got = list(loader)
    assert len(got) == len(expected)
    for (d_a, samples_a), (d_b, samples_b) in zip(got, expected):
        assert d_a == d_b
        for a, b in zip(samples_a, samples_b):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_existing_checkpoint_needs_resume(style_data, tmp_path):
    run = tmp_path / "run"
    run_joint_train(options(style_data, run, epochs=1, val=False))
    result = run_cli("joint-train", "--recipe", RECIPE, "--out", run, "--device", "cpu",
                     "--data", f"scannet={style_data['scannet']['train']}")
    assert result.returncode == 2 and "pass --resume" in result.stderr


def test_eval_refuses_unknown_dataset_and_missing_checkpoint(style_data, tmp_path):
    result = run_cli("eval", "--checkpoint", tmp_path / "none", "--data", f"scannet={style_data['scannet']['val']}")
    assert result.returncode == 2 and "not found" in result.stderr
