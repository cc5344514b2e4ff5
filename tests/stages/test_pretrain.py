"""`pptkit pretrain` end to end on tiny synthetic objects: the three stages from the CLI, what
their checkpoints hold, bit-exact resume, scene crops, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pptkit.errors import InputError
from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.stages import pretrain as pretrain_module
from pptkit.stages.pretrain import PretrainOptions, run_pretrain
from tests.conftest import run_cli
from tests.objects import object_stores, scene_store, teacher_file

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "act-tiny.toml"
pytestmark = pytest.mark.slow

# 64 points in 8 patches of 8; 18 training objects in batches of 6: 3 steps per epoch.
TINY = [
    "patches.num_groups=8", "patches.group_size=8", "data.num_points=64", "data.num_workers=0",
    "encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2", "encoder.pos_hidden=16",
    "encoder.embed_first_channels=[16,32]", "encoder.embed_second_hidden=32",
    "autoencoder.teacher_depth=0", "autoencoder.num_prompts=4", "autoencoder.encoder_dim=32",
    "autoencoder.num_tokens=32", "autoencoder.token_dim=32", "autoencoder.decoder_dim=32",
    "autoencoder.graph_input_channels=16", "autoencoder.graph_channels=[16,16]",
    "autoencoder.embed_first_channels=[16,32]", "autoencoder.embed_second_hidden=32",
    "autoencoder.fold_hidden=32", "autoencoder.fold_channels=16", "autoencoder.temperature_steps=6",
    "autoencoder.kl_delay=1", "autoencoder.kl_steps=4",
    "autoencoder.batch_size=6", "distill.batch_size=6", "mae.batch_size=6",
    "distill.decoder_depth=1", "distill.decoder_num_heads=2", "mae.decoder_depth=1", "mae.decoder_num_heads=2",
    "train.warmup_epochs=1", "train.log_every=1",
]


def set_args(epochs: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [arg for item in [*TINY, f"train.epochs={epochs}", *extra] for arg in ("--set", item)]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    return {**object_stores(root), "scenes": scene_store(root), "teacher": teacher_file(root / "teacher.safetensors"),
            "other_teacher": teacher_file(root / "other.safetensors", seed=1), "root": root}


def options(files, stage: str, out: Path, epochs: int = 2, **kwargs) -> PretrainOptions:
    extra = kwargs.pop("extra", ())
    defaults = dict(recipe=RECIPE, data=[files["train"]], out=out, stage=stage, device="cpu",
                    overrides=[*TINY, f"train.epochs={epochs}", *extra])
    if stage == "autoencoder":
        defaults["teacher"] = str(files["teacher"])
    return PretrainOptions(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def autoencoder_run(files) -> Path:
    run = files["root"] / "ae"
    run_pretrain(options(files, "autoencoder", run, epochs=2))
    return run


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_three_stages_from_the_cli(files, tmp_path):
    ae, act, mae = tmp_path / "ae", tmp_path / "act", tmp_path / "mae"
    common = ["--recipe", RECIPE, "--device", "cpu", "--data", files["train"], "--val", files["test"]]
    result = run_cli("pretrain", "--stage", "autoencoder", "--out", ae, "--teacher", files["teacher"],
                     *common, *set_args(2))
    assert result.returncode == 0, result.stderr
    result = run_cli("pretrain", "--stage", "distill", "--out", act, "--autoencoder", ae, *common, *set_args(2))
    assert result.returncode == 0, result.stderr
    result = run_cli("pretrain", "--stage", "mae", "--out", mae, *common, *set_args(2))
    assert result.returncode == 0, result.stderr

    assert f'teacher = "{files["teacher"]}"' in (ae / "config.toml").read_text()
    for run, stage in ((ae, "autoencoder"), (act, "distill"), (mae, "mae")):
        saved = checkpoint(run / "last.pt")
        assert saved["stage"] == stage and saved["epoch"] == 2 and saved["step"] == 6
        val = [r for r in records(run) if r["split"] == "val"]
        assert [r["epoch"] for r in val] == [1, 2] and all(r["loss"] > 0 for r in val)
        train = [r for r in records(run) if r["split"] == "train"]
        assert [r["step"] for r in train] == list(range(1, 7))
    stage_one = checkpoint(ae / "last.pt")
    assert "encoder" not in stage_one
    assert not any(k.startswith(("teacher.blocks.", "teacher.norm.")) for k in stage_one["model"])
    assert {"teacher.prompts", "codebook"} <= set(stage_one["model"])
    ae_records = [r for r in records(ae) if r["split"] == "train"]
    assert ae_records[0]["temperature"] == 1.0 and ae_records[0]["kl_weight"] == 0.0
    assert ae_records[-1]["temperature"] < 0.2 and 0 < ae_records[-1]["kl_weight"] <= 0.1

    for run in (act, mae):  # what `pptkit finetune` loads, whichever stage made it
        saved = checkpoint(run / "last.pt")
        encoder = PointTransformerEncoder(**saved["encoder_config"])
        encoder.load_state_dict(saved["encoder"])
        for key, value in saved["encoder"].items():
            assert torch.equal(value, saved["model"][f"encoder.{key}"]), key
    distilled = checkpoint(act / "last.pt")
    assert not any(k.startswith("target.") for k in distilled["model"])
    assert distilled["autoencoder_run"] == str(ae.resolve()) and distilled["teacher"] == str(files["teacher"])


def test_frozen_teacher_is_bit_identical_after_stage_one(files, autoencoder_run):
    from pptkit.models.teacher_weights import read_teacher_safetensors

    saved = checkpoint(autoencoder_run / "last.pt")
    state, _ = read_teacher_safetensors(files["teacher"])
    assert saved["teacher_digest"] == pretrain_module.state_digest(
        {k: v for k, v in state.items() if k.startswith(("blocks.", "norm."))})


class Interrupt:
    """Wrap point_loader so that the n-th training batch raises KeyboardInterrupt."""

    def __init__(self, monkeypatch, at: int):
        self.real, self.at, self.count = pretrain_module.point_loader, at, 0
        monkeypatch.setattr(pretrain_module, "point_loader", self)

    def __call__(self, batches, workers):
        for batch in self.real(batches, workers):
            self.count += 1
            if self.count == self.at:
                raise KeyboardInterrupt
            yield batch


@pytest.mark.parametrize("stage", ["autoencoder", "distill", "mae"])
def test_interrupted_then_resumed_equals_uninterrupted(files, autoencoder_run, tmp_path, monkeypatch, stage):
    extra = {"autoencoder": autoencoder_run} if stage == "distill" else {}
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_pretrain(options(files, stage, reference, epochs=3, **extra))
    Interrupt(monkeypatch, at=5)  # the second step of epoch 2
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(options(files, stage, interrupted, epochs=3, **extra))
    monkeypatch.undo()
    assert checkpoint(interrupted / "last.pt")["epoch"] == 1
    run_pretrain(options(files, stage, interrupted, epochs=3, resume=True, **extra))
    a, b = checkpoint(reference / "last.pt"), checkpoint(interrupted / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["step"] for r in records(reference)] == [r["step"] for r in records(interrupted)]
    losses = [(r["step"], r["loss"]) for r in records(reference) if r["split"] == "train"]
    assert losses == [(r["step"], r["loss"]) for r in records(interrupted) if r["split"] == "train"]


def test_distill_resumes_without_naming_the_autoencoder_again(files, autoencoder_run, tmp_path, monkeypatch):
    run = tmp_path / "act"
    Interrupt(monkeypatch, at=4)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(options(files, "distill", run, autoencoder=autoencoder_run))
    monkeypatch.undo()
    run_pretrain(PretrainOptions(recipe=None, data=[files["train"]], out=run, stage="distill", device="cpu",
                                 resume=True))
    assert checkpoint(run / "last.pt")["epoch"] == 2


def test_scene_collections_pretrain_on_crops(files, tmp_path):
    run = tmp_path / "crops"
    run_pretrain(options(files, "mae", run, epochs=1, data=[files["scenes"]], crop=512,
                         extra=("mae.batch_size=1",)))
    saved = checkpoint(run / "last.pt")
    assert saved["epoch"] == 1 and saved["num_items"] == 1 and saved["crop"] == 512
    with pytest.raises(InputError, match="the run started with --crop 512; resume with the same"):
        run_pretrain(options(files, "mae", run, epochs=1, data=[files["scenes"]], crop=1024, resume=True,
                             extra=("mae.batch_size=1",)))


@pytest.fixture(scope="module")
def other_runs(files) -> dict[str, Path]:
    """A finished mae run, an empty folder, and a folder with another command's checkpoint."""
    runs = {"MAE_RUN": files["root"] / "mae_run", "EMPTY": files["root"] / "empty",
            "OTHER_RUN": files["root"] / "other_run"}
    run_pretrain(options(files, "mae", runs["MAE_RUN"], epochs=1))
    runs["EMPTY"].mkdir()
    runs["OTHER_RUN"].mkdir()
    torch.save({"model": {}, "epoch": 1, "step": 3}, runs["OTHER_RUN"] / "last.pt")
    return runs


def named(files, autoencoder_run, other_runs, args: list[str]) -> list[str]:
    names = {"SCENES": files["scenes"], "AE_RUN": autoencoder_run, "OTHER": files["other_teacher"], **other_runs}
    return [str(names.get(a, a)) for a in args]


@pytest.mark.parametrize("args, message", [
    (["--stage", "mae", "--data", "SCENES"], "holds scenes; pretraining on scenes needs --crop N"),
    (["--stage", "mae", "--set", "data.num_points=6"], "8 patches of 8 points need at least 8 points per cloud"),
    (["--stage", "mae", "--set", "data.num_points=9000"], "objects hold 8192 points, fewer than the 9000"),
    (["--stage", "autoencoder", "--teacher", "/no/such.safetensors"], "/no/such.safetensors: teacher weights file not found"),
    (["--stage", "distill"], "--stage distill needs --autoencoder RUN_DIR"),
    (["--stage", "distill", "--autoencoder", "MAE_RUN"], "is a --stage mae run, not a --stage autoencoder run"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, autoencoder_run, other_runs, tmp_path, args, message):
    args = named(files, autoencoder_run, other_runs, args)
    if "--data" not in args:
        args += ["--data", str(files["train"])]
    out = tmp_path / "run"
    result = run_cli("pretrain", "--recipe", RECIPE, "--out", out, "--device", "cpu", *set_args(1), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("stage, kwargs, message", [
    ("distill", {"autoencoder": "OTHER_RUN"}, "is not a pptkit pretrain run, not a --stage autoencoder run"),
    ("distill", {"autoencoder": "EMPTY"}, "has no last.pt; expected the --out folder of a finished"),
    ("distill", {"autoencoder": "AE_RUN", "teacher": "OTHER"},
     "these teacher weights differ from those the autoencoder run was trained with"),
    ("mae", {"autoencoder": "AE_RUN"}, "only --stage distill takes --autoencoder"),
    ("mae", {"teacher": "OTHER"}, "--stage mae uses no teacher"),
    ("pretty", {}, "unknown stage 'pretty'"),
    ("mae", {"extra": ("mae.batch_size=40",)}, "18 training clouds are fewer than one global batch (40"),
    ("mae", {"extra": ("mae.mask_ratio=0.1",)}, "mask ratio 0.1 masks 0 of 8 patches"),
    ("autoencoder", {"extra": ("autoencoder.teacher_depth=3",)}, "teacher_depth is 3, but the teacher has 2 blocks"),
    ("mae", {"extra": ("encoder.num_heads=3",)}, "impossible model settings"),
    ("mae", {"crop": 0}, "--crop: must be at least 1"),
])
def test_more_bad_input_writes_nothing(files, autoencoder_run, other_runs, tmp_path, stage, kwargs, message):
    names = {"SCENES": files["scenes"], "AE_RUN": autoencoder_run, "OTHER": files["other_teacher"], **other_runs}
    kwargs = {k: (Path(names[v]) if k == "autoencoder" else str(names[v])) if isinstance(v, str) else v
              for k, v in kwargs.items()}
    out = tmp_path / "run"
    with pytest.raises(InputError) as error:
        run_pretrain(options(files, stage, out, epochs=1, **kwargs))
    assert message in str(error.value)
    assert not out.exists()


def test_unfinished_autoencoder_and_stage_mismatch_on_resume(files, tmp_path, monkeypatch):
    unfinished = tmp_path / "unfinished"
    Interrupt(monkeypatch, at=4)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(options(files, "autoencoder", unfinished))
    monkeypatch.undo()
    with pytest.raises(InputError, match="stopped after epoch 1 of 2; finish it with --resume first"):
        run_pretrain(options(files, "distill", tmp_path / "act", autoencoder=unfinished))
    assert not (tmp_path / "act").exists()
    before = (unfinished / "metrics.jsonl").read_text()
    with pytest.raises(InputError, match="is a --stage autoencoder run; resume it with that stage"):
        run_pretrain(PretrainOptions(recipe=None, data=[files["train"]], out=unfinished, stage="mae", device="cpu",
                                     resume=True))
    assert (unfinished / "metrics.jsonl").read_text() == before
