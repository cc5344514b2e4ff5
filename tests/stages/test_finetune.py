"""`pptkit finetune` (PointGST, full, linear) and `pptkit eval` of its task files, on tiny
synthetic objects built through the real path: `synth --style objects` -> `preprocess
--dataset modelnet40`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import pptkit.stages.finetune as finetune_module
from pptkit.data.store import StoreMeta, write_meta
from pptkit.engine.object_batches import PointSource
from pptkit.errors import InputError
from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.stages.finetune import (
    FinetuneOptions,
    build_classifier,
    build_encoder,
    load_backbone,
    load_encoder_state,
    load_task_model,
    read_task_file,
    run_finetune,
    train_transform,
)
from pptkit.config import load_recipe
from pptkit.stages.gst_recipe import FinetuneRecipe
from pptkit.stages.preprocess import PreprocessOptions, run_preprocess
from pptkit.stages.synth import run_synth
from tests.conftest import run_cli

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "gst-tiny.toml"
ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0, "qkv_bias": False, "drop_path_rate": 0.0,
           "num_groups": 16, "group_size": 16, "pos_hidden": 32, "embed_first_channels": [16, 32],
           "embed_second_hidden": 32}
# 36 training objects in 3 steps of 12, two epochs; a 16-wide head.
SMALL = ["train.batch_size=12", "train.epochs=2", "train.log_every=1", "model.head.hidden=[16]",
         "model.adapter.rank=4"]


def save_backbone(path: Path, seed: int, with_cls: bool = True) -> Path:
    """A pretrain-style checkpoint whose BatchNorm statistics are not the initial ones."""
    torch.manual_seed(seed)
    encoder = PointTransformerEncoder(**ENCODER)
    with torch.no_grad():
        encoder(torch.randn(4, 128, 3) * 0.5)  # train mode: moves the running statistics
    state = encoder.state_dict()
    if not with_cls:  # as Point-MAE's pretraining encoder
        state = {k: v for k, v in state.items() if k not in ("cls_token", "cls_pos")}
    torch.save({"encoder": state, "encoder_config": ENCODER, "stage": "mae"}, path)
    return path


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> dict[str, Path]:
    """Stores of 18 synthetic classes (36 training, 18 test objects) and two backbones."""
    root = tmp_path_factory.mktemp("objects")
    raw = run_synth(style="objects", out=root / "raw", scenes=3, seed=0, overwrite=False)
    files = {split: run_preprocess(PreprocessOptions(dataset="modelnet40", input=raw, split=split,
                                                     output=root / f"{split}.h5"))
             for split in ("train", "test")}
    files["backbone"] = save_backbone(root / "backbone.pt", seed=0)
    files["other_backbone"] = save_backbone(root / "other.pt", seed=1)
    files["no_cls_backbone"] = save_backbone(root / "no_cls.pt", seed=2, with_cls=False)
    scenes = root / "scenes.h5"
    with h5py.File(scenes, "w") as f:
        write_meta(f, StoreMeta(dataset="scannet", class_names=("wall",), grid_size=0.02, kind="scene", split="val",
                                source="/x"))
    files["scenes"] = scenes
    return files


def finetune(objects, out: Path, mode: str, backbone: str = "backbone", resume: bool = False, extra=()) -> Path:
    run_finetune(FinetuneOptions(
        recipe=RECIPE, checkpoint=objects[backbone], out=out, mode=mode, device="cpu", resume=resume,
        data=[f"train={objects['train']}", f"val={objects['test']}"], overrides=[*SMALL, *extra]))
    return out


@pytest.fixture(scope="module")
def runs(objects, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"gst": finetune(objects, root / "gst", "gst"), "full": finetune(objects, root / "full", "full"),
            "linear": finetune(objects, root / "linear", "linear", backbone="no_cls_backbone")}


def model_state(run: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run / name, weights_only=True)["model"]


def backbone_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["encoder"]


def recipe(mode: str) -> FinetuneRecipe:
    return load_recipe(RECIPE, FinetuneRecipe, [*SMALL, f"model.mode=\"{mode}\""])


def test_cached_farthest_points_give_the_same_samples(objects):
    plain, cached = (PointSource([objects["test"]], 300, "fps") for _ in range(2))
    cached.cache_farthest_points(batch_size=7)  # batched FPS, in uneven chunks
    transform = train_transform(recipe("gst").data)
    for index in range(len(plain)):
        a = plain.sample(index, np.random.default_rng([0, 1, index]), transform)
        b = cached.sample(index, np.random.default_rng([0, 1, index]), transform)
        assert np.array_equal(a[0], b[0]) and a[1] == b[1]


def test_gst_starts_as_the_frozen_backbone_bit_for_bit(objects):
    backbone = load_backbone(objects["backbone"])
    encoder = build_encoder(backbone.config, recipe("gst"), backbone.path)
    load_encoder_state(encoder, backbone)
    torch.manual_seed(0)
    model = build_classifier(encoder, recipe("gst"), num_classes=40).double().eval()
    plain = PointTransformerEncoder(**{**ENCODER, "drop_path_rate": 0.1})
    plain.load_state_dict(backbone.state)
    plain = plain.double().eval()
    points = torch.randn(3, 256, 3, dtype=torch.float64)
    with torch.no_grad():
        adapted, reference = model.features(points), plain.features(points)
        logits = model(points)
    assert adapted.dtype == torch.float64
    assert torch.equal(adapted, reference)
    assert torch.equal(logits, model.head(reference))
    # The adapters do take part: moving an up-projection changes the output.
    with torch.no_grad():
        model.adapters[0].up.bias.fill_(0.1)
        assert not torch.equal(model.features(points), reference)


def test_gst_leaves_the_backbone_and_its_statistics_untouched(objects, runs):
    frozen = backbone_state(objects["backbone"])
    trained = model_state(runs["gst"])
    assert any(key.endswith("running_mean") for key in frozen)
    for key, value in frozen.items():
        if key in ("cls_token", "cls_pos"):  # trained with the adapters, as the reference
            assert not torch.equal(trained[f"encoder.{key}"], value), key
        else:
            assert torch.equal(trained[f"encoder.{key}"], value), key
    assert torch.load(runs["gst"] / "last.pt", weights_only=True)["step"] == 6
    assert trained["adapters.0.up.weight"].abs().sum() > 0  # the adapters did train
    assert trained["head.mlp.1.num_batches_tracked"] == 6  # the head's BatchNorm did train


def test_linear_trains_only_the_head(objects, runs):
    frozen = backbone_state(objects["no_cls_backbone"])
    trained = model_state(runs["linear"])
    for key, value in frozen.items():
        assert torch.equal(trained[f"encoder.{key}"], value), key
    assert "adapters.0.up.weight" not in trained
    tensors, config = read_task_file(runs["linear"] / "task.safetensors")
    # The backbone file lacks the cls token: the task file carries the initialised one.
    assert sorted(k for k in tensors if k.startswith("encoder.")) == ["encoder.cls_pos", "encoder.cls_token"]
    assert torch.equal(tensors["encoder.cls_token"], trained["encoder.cls_token"])
    assert config["mode"] == "linear"


def head_parameters(model) -> int:
    return sum(p.numel() for p in model.head.parameters())


@pytest.mark.parametrize("mode", ["gst", "full", "linear"])
def test_trainable_share_is_printed_recorded_and_right(objects, runs, mode):
    records = [json.loads(line) for line in (runs[mode] / "metrics.jsonl").read_text().splitlines()]
    counts = [r for r in records if r["split"] == "parameters"]
    assert len(counts) == 1 and counts[0]["mode"] == mode
    checkpoint = torch.load(runs[mode] / "last.pt", weights_only=True)
    assert checkpoint["parameters"] == {k: counts[0][k] for k in ("trainable", "total", "percent")}
    backbone = load_backbone(objects["backbone"])
    encoder = build_encoder(backbone.config, recipe(mode), backbone.path)
    model = build_classifier(encoder, recipe(mode), num_classes=40)
    total = sum(p.numel() for p in model.parameters())
    if mode == "full":
        expected = total
    elif mode == "linear":
        expected = head_parameters(model)
    else:  # adapters, head, cls token and its position (width 32 each)
        expected = head_parameters(model) + sum(p.numel() for p in model.adapters.parameters()) + 2 * 32
    assert counts[0]["trainable"] == expected and counts[0]["total"] == total
    assert counts[0]["percent"] == pytest.approx(100 * expected / total)


def test_task_file_holds_what_was_trained_and_round_trips(objects, runs):
    tensors, config = read_task_file(runs["gst"] / "task.safetensors")
    assert {k.split(".")[0] for k in tensors} == {"adapters", "head", "encoder"}
    assert sorted(k for k in tensors if k.startswith("encoder.")) == ["encoder.cls_pos", "encoder.cls_token"]
    best = torch.load(runs["gst"] / "best.pt", weights_only=True)
    for key, value in tensors.items():
        assert torch.equal(value, best["model"][key]), key
    assert config["backbone_sha256"] == load_backbone(objects["backbone"]).digest
    assert config["class_names"][:2] == ["airplane", "bathtub"] and config["val_acc"] == best["best"]

    model = load_task_model(config, tensors, load_backbone(objects["backbone"]), runs["gst"]).eval()
    reference = build_classifier(build_encoder(ENCODER, recipe("gst"), runs["gst"]), recipe("gst"), 40)
    reference.load_state_dict(best["model"])
    points = torch.randn(2, 256, 3)
    with torch.no_grad():
        assert torch.equal(model(points), reference.eval()(points))

    with pytest.raises(InputError, match="lacks 'encoder.patch_embed"):
        load_task_model(config, tensors, None, runs["gst"])  # gst needs its backbone
    full_tensors, full_config = read_task_file(runs["full"] / "task.safetensors")
    assert len(full_tensors) == len(model_state(runs["full"]))  # full mode: the whole model
    load_task_model(full_config, full_tensors, None, runs["full"])  # and no backbone needed


def test_resume_after_an_interrupt_ends_where_an_uninterrupted_run_does(objects, runs, tmp_path, monkeypatch):
    real_loader = finetune_module.point_loader
    calls = {"n": 0}

    def loader_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 training, epoch 1 validation, then epoch 2 training
            raise KeyboardInterrupt
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "point_loader", loader_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        finetune(objects, tmp_path / "run", "gst")
    monkeypatch.setattr(finetune_module, "point_loader", real_loader)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "run" / "task.safetensors").exists()

    run_finetune(FinetuneOptions(recipe=None, checkpoint=None, out=tmp_path / "run", device="cpu", resume=True,
                                 data=[f"train={objects['train']}", f"val={objects['test']}"]))
    reference, resumed = (torch.load(r / "last.pt", weights_only=True) for r in (runs["gst"], tmp_path / "run"))
    assert reference["model"].keys() == resumed["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for param, state in reference["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][param][name]), (param, name)
    assert reference["scheduler"] == resumed["scheduler"]
    assert reference["history"] == resumed["history"] and reference["best"] == resumed["best"]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    reference_lines = [json.loads(line) for line in (runs["gst"] / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in lines] == [(r["step"], r["split"]) for r in reference_lines]


def cli_finetune(objects, out: Path, *args: str):
    return run_cli("finetune", "--recipe", RECIPE, "--out", out, "--device", "cpu", *args)


@pytest.mark.parametrize("case, message", [
    ("missing", "backbone.pt: checkpoint or run folder not found"),
    ("no_encoder", "holds no 'encoder' state dict"),
    ("scenes", "holds scenes; finetune classifies objects"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(objects, tmp_path, case, message):
    checkpoint, train = objects["backbone"], objects["train"]
    if case == "missing":
        checkpoint = tmp_path / "backbone.pt"
    elif case == "no_encoder":
        checkpoint = tmp_path / "optimizer_only.pt"
        torch.save({"model": {"w": torch.zeros(1)}}, checkpoint)
    else:
        train = objects["scenes"]
    result = cli_finetune(objects, tmp_path / "run", "--checkpoint", checkpoint, "--data", f"train={train}")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_eval_refuses_a_task_over_the_wrong_backbone(objects, runs, tmp_path):
    out = tmp_path / "eval" / "results.json"
    result = run_cli("eval", "--checkpoint", objects["other_backbone"], "--task", runs["gst"] / "task.safetensors",
                     "--data", f"test={objects['test']}", "--out", out, "--device", "cpu")
    assert result.returncode == 2, result.stderr
    assert "other.pt: is not the backbone this task was trained on" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.parent.exists()


@pytest.mark.parametrize("which, message", [
    ("run_best", "is a finetune checkpoint: evaluate its run folder or its task.safetensors"),
    ("backbone", "is a pretraining checkpoint: fine-tune it (pptkit finetune)"),
])
def test_eval_of_a_point_transformer_pt_file_says_what_to_pass(objects, runs, tmp_path, which, message):
    checkpoint = runs["gst"] / "best.pt" if which == "run_best" else objects["backbone"]
    result = run_cli("eval", "--checkpoint", checkpoint, "--data", f"test={objects['test']}", "--device", "cpu",
                     "--out", tmp_path / "eval" / "results.json")
    assert result.returncode == 2, result.stderr
    assert f"{checkpoint}: {message}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_eval_of_an_object_task_reports_scores_plot_csv_and_votes(objects, runs, tmp_path):
    csv_path = tmp_path / "predictions.csv"
    result = run_cli("eval", "--checkpoint", runs["gst"], "--data", f"test={objects['test']}", "--votes", "2",
                     "--export", csv_path, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "OA" in result.stdout and "2 votes per object" in result.stdout
    scores = json.loads((runs["gst"] / "eval" / "results.json").read_text())["test"]
    assert (runs["gst"] / "eval" / "confusion_test.png").stat().st_size > 0
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 18 and set(rows[0]) == {"dataset", "object", "label", "prediction", "correct", "confidence"}
    assert scores["oa"] == pytest.approx(sum(int(r["correct"]) for r in rows) / 18)
    present = {r["label"] for r in rows}
    assert len(present) == 18
    for name, entry in scores["per_class"].items():
        hits = [int(r["correct"]) for r in rows if r["label"] == name]
        assert entry["support"] == len(hits)
        assert (entry["acc"] is None) == (not hits)
        if hits:
            assert entry["acc"] == pytest.approx(sum(hits) / len(hits))
    assert scores["macc"] == pytest.approx(sum(e["acc"] for e in scores["per_class"].values() if e["acc"] is not None)
                                           / 18)

    # The same seed gives the same votes; the task over its recorded backbone equals --task over it.
    again = tmp_path / "again.csv"
    result = run_cli("eval", "--checkpoint", objects["backbone"], "--task", runs["gst"] / "task.safetensors",
                     "--data", f"test={objects['test']}", "--votes", "2", "--export", again, "--device", "cpu",
                     "--out", tmp_path / "again.json")
    assert result.returncode == 0, result.stderr
    assert again.read_text() == csv_path.read_text()
