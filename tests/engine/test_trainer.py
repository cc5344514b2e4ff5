"""The one training loop with a stage-supplied loss: exact resume, scaler state, CPU checkpoints."""

from __future__ import annotations

import pytest
import torch

from pptkit.engine import distributed
from pptkit.engine.checkpoint import load_checkpoint
from pptkit.engine.distributed import DistInfo, process_group_backend
from pptkit.engine.run_dir import RunDir
from pptkit.engine.setup import open_run
from pptkit.engine.trainer import LoopConfig, StepResult, TrainState, grad_scaler, restore, train
from pptkit.errors import InputError
from pptkit.stages.ppt_recipe import PPTRecipe

CPU = torch.device("cpu")
SINGLE = DistInfo(0, 1, 0)


class Interrupt(Exception):
    pass


def regression_run(out, epochs: int, interrupt_at: int | None = None, resume: bool = False):
    """A small regression with dropout (so the RNG state matters) through the engine's loop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * 5)
    data = torch.randn(5, 8, 4, generator=torch.Generator().manual_seed(1))
    run = RunDir(out)
    state = TrainState()
    if resume:
        state = restore(load_checkpoint(run.last), model, optimizer, scheduler, CPU)
    run.start("", resume_step=state.step if resume else None)
    calls = {"n": 0}

    def loss_fn(model, batch, step):
        calls["n"] += 1
        if interrupt_at is not None and calls["n"] == interrupt_at:
            raise Interrupt
        out = model(batch)
        return StepResult(((out - batch.sum(1, keepdim=True)) ** 2).mean(), size=len(batch),
                          metrics={"mean_out": out.mean().item()})

    cfg = LoopConfig(epochs=epochs, clip_grad=1.0, amp=False, log_every=1, unit="obj")
    try:
        train(model, optimizer, scheduler, loss_fn, lambda epoch: iter(data), len(data), None, run, cfg,
              state, CPU, SINGLE, {"config": {}})
    finally:
        run.close()
    return model


def test_a_resumed_run_ends_with_the_same_weights(tmp_path):
    reference = regression_run(tmp_path / "a", epochs=3)
    with pytest.raises(Interrupt):
        regression_run(tmp_path / "b", epochs=3, interrupt_at=8)  # in the second epoch
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = regression_run(tmp_path / "b", epochs=3, resume=True)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    steps = [line.split(",")[0] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [line.split(",")[0] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]


def test_checkpoints_hold_cpu_rng_and_read_on_cpu_whatever_the_device(tmp_path, monkeypatch):
    regression_run(tmp_path / "run", epochs=1)
    seen = {}
    real_load = torch.load

    def recording_load(*args, **kwargs):
        seen["map_location"] = kwargs.get("map_location")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(distributed, "resolve_device", lambda spec: torch.device("cuda", 0))
    monkeypatch.setattr("pptkit.engine.setup.resolve_device", lambda spec: torch.device("cuda", 0))
    setup = open_run(tmp_path / "run", True, None, PPTRecipe, [], "cuda")
    assert setup.device.type == "cuda"  # the run would train on a GPU ...
    assert seen["map_location"] == "cpu"  # ... but its checkpoint is read on the CPU
    assert setup.checkpoint["torch_rng"].device.type == "cpu"


def test_the_grad_scaler_continues_from_its_saved_state():
    scaler = grad_scaler(CPU, True, {})
    scaler.scale(torch.tensor(1.0))
    scaler.update(new_scale=1024.0)
    saved = scaler.state_dict()
    again = grad_scaler(CPU, True, saved)
    assert again.get_scale() == 1024.0 and again.state_dict() == saved
    state = restore_state_with_scaler(saved)
    assert state.scaler == saved


def restore_state_with_scaler(scaler_state):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "epoch": 1,
                  "step": 3, "best": None, "history": [], "scaler": scaler_state}
    return restore(checkpoint, model, optimizer, scheduler, CPU)


def test_gpu_process_groups_also_serve_cpu_tensors():
    """The loop all-reduces CPU tensors (loss sums, confusion matrices): NCCL alone cannot."""
    assert process_group_backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(CPU) == "gloo"


def test_init_distributed_uses_that_backend(monkeypatch):
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    distributed.init_distributed(torch.device("cuda", 0))
    assert calls["backend"] == "cpu:gloo,cuda:nccl"


def test_open_run_refuses_before_writing(tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        open_run(tmp_path / "new", True, None, PPTRecipe, [], "cpu")
    with pytest.raises(InputError, match="'train.epochs' must be >= 1"):
        open_run(tmp_path / "new", False, None, PPTRecipe, ["train.epochs=0"], "cpu")
    assert not (tmp_path / "new").exists()
