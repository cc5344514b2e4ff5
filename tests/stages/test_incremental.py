"""`pptkit incremental` end to end on synthetic ScanNet-style rooms: step 0 -> step 1 -> step 2, eval."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pptkit.data.dataset import SceneDataset
from pptkit.errors import InputError
from pptkit.stages import incremental as incremental_module
from pptkit.stages.evaluate import EvalOptions, run_eval
from pptkit.stages.incremental import IncrementalOptions, run_incremental
from pptkit.stages.finetune import load_backbone
from pptkit.stages.joint_train import JointTrainOptions, run_joint_train
from pptkit.stages.pretrain import PretrainOptions, run_pretrain
from tests.conftest import run_cli
from tests.stages.conftest import TINY
from tests.stages.test_pretrain import TINY as PRETRAIN_TINY

ROOT = Path(__file__).resolve().parents[2]
BASE_RECIPE = ROOT / "recipes" / "incr-base-tiny.toml"
RECIPE = ROOT / "recipes" / "incr-tiny.toml"
ACT_RECIPE = ROOT / "recipes" / "act-tiny.toml"
pytestmark = pytest.mark.slow

MODEL = [o for o in TINY if o.startswith("model.")]
STEP = ["data.grid_size=0.1", "data.point_max=20000", "data.batch_size=1", "data.num_workers=0",
        "train.log_every=1", "teacher.hidden_channels=8", "teacher.embed_channels=4", "masks.start_epoch=0",
        "teacher.warmup_epochs=1", "train.epochs=2"]


def present_classes(path: Path) -> list[str]:
    with h5py.File(path) as f:
        names = list(f.attrs["class_names"])
        counts = sum(np.bincount(g["segment"][()][g["segment"][()] >= 0], minlength=len(names)) > 0
                     for g in f.values())
    return [n for n, c in zip(names, counts) if c >= 2]  # in two rooms at least


@pytest.fixture(scope="module")
def steps(style_data, tmp_path_factory) -> dict:
    """A base run on the scannet rooms without the last three classes present in two rooms (added
    two at step 1, one at step 2), and those classes."""
    root = tmp_path_factory.mktemp("incremental")
    train, val = style_data["scannet"]["train"], style_data["scannet"]["val"]
    new = present_classes(train)[-3:]
    base_store = root / "base.h5"
    run_incremental(IncrementalOptions(new_classes=",".join(new), data=str(train), write_base_store=base_store))
    base = root / "base"
    run_joint_train(JointTrainOptions(recipe=BASE_RECIPE, data=[f"scannet={base_store}"], out=base, device="cpu",
                                      overrides=[*TINY, "data.ratios={scannet=1}", "train.epochs=1"]))
    return {"root": root, "train": train, "val": val, "base": base, "base_store": base_store,
            "step1": new[:2], "step2": new[2:], "old": [c for c in SceneDataset(train).class_names if c not in new]}


def options(steps: dict, out: Path, **kwargs) -> IncrementalOptions:
    defaults = dict(new_classes=",".join(steps["step1"]), data=str(steps["train"]), out=out, recipe=RECIPE,
                    base=steps["base"], tags_from_labels=True, memory=2, memory_data=steps["base_store"],
                    device="cpu", overrides=list(STEP))
    defaults.update(kwargs)
    return IncrementalOptions(**defaults)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]


def test_base_store_drops_the_new_classes(steps):
    base = SceneDataset(steps["base_store"], with_points=True)
    full = SceneDataset(steps["train"], with_points=True)
    assert list(base.class_names) == steps["old"]
    dropped = [list(full.class_names).index(c) for c in steps["step1"] + steps["step2"]]
    dropped_points = 0
    for i in range(len(full)):
        a, b = full[i], base[i]
        gone = np.isin(a["point_segment"], dropped)
        dropped_points += int(gone.sum())
        assert (b["point_segment"][gone] == -1).all() and (b["segment"][np.isin(a["segment"], dropped)] == -1).all()
        kept = (a["point_segment"] >= 0) & ~gone
        names = [full.class_names[c] for c in a["point_segment"][kept]]
        assert names == [base.class_names[c] for c in b["point_segment"][kept]]
        assert np.array_equal(a["coord"], b["coord"])
    assert dropped_points > 0


def test_two_steps_then_eval_reports_base_novel_and_all(steps, tmp_path):
    step1 = tmp_path / "step1"
    run_incremental(options(steps, step1))
    for name in ("config.toml", "metrics.jsonl", "last.pt", "best.pt", "memory.pt", "text_embeddings.pt"):
        assert (step1 / name).is_file(), name
    ckpt = torch.load(step1 / "last.pt", map_location="cpu", weights_only=True)
    info = ckpt["incremental"]
    assert ckpt["class_names"]["scannet"][-2:] == steps["step1"]
    assert info["steps"] == {"scannet": [steps["step1"]]} and info["base_classes"] == {"scannet": steps["old"]}
    records = [json.loads(line) for line in (step1 / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert all(np.isfinite(r["loss"]) for r in train)
    assert any(r["fused_new"] > 0 for r in train) and any(r["pasted"] > 0 for r in train)
    assert all(r["teacher"] > 0 for r in train)

    # Step 2 from step 1: the memory comes from step 1's run folder.
    step2 = tmp_path / "step2"
    run_incremental(options(steps, step2, base=step1, new_classes=",".join(steps["step2"]), memory_data=None))
    info = torch.load(step2 / "last.pt", map_location="cpu", weights_only=True)["incremental"]
    assert info["steps"]["scannet"] == [steps["step1"], steps["step2"]]

    out = tmp_path / "eval" / "results.json"
    results = run_eval(EvalOptions(checkpoint=step2, data=[f"scannet={steps['val']}"], out=out, device="cpu"))
    saved = json.loads(out.read_text())["scannet"]
    assert set(saved["groups"]) == {"base", "novel", "all", "step_1", "step_2"}
    assert list(saved["per_class"]) == steps["old"] + steps["step1"] + steps["step2"]
    assert saved["miou"] == pytest.approx(results["scannet"].miou)
    for value in saved["groups"].values():
        assert value is None or 0.0 <= value <= 1.0
    cli = run_cli("eval", "--checkpoint", step2, "--data", f"scannet={steps['val']}", "--out", tmp_path / "b.json",
                  "--device", "cpu")
    assert cli.returncode == 0, cli.stderr
    assert "Incremental mIoU" in cli.stdout and "novel" in cli.stdout


def test_point_labels_of_tagged_scenes_never_reach_training(steps, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    run_incremental(options(steps, reference))

    real_getitem = SceneDataset.__getitem__
    train_path = Path(steps["train"])
    real_tags = incremental_module.tags_from_present
    poisoned = {"n": 0}

    def poisoning_getitem(self, index):
        sample = real_getitem(self, index)
        if self.path == train_path:
            rng = np.random.default_rng(index)
            sample["segment"] = rng.integers(0, len(self.class_names), len(sample["segment"])).astype(np.int16)
            sample["instance"] = rng.integers(0, 5, len(sample["instance"])).astype(np.int32)
            poisoned["n"] += 1
        return sample

    def tags_then_poison(*args, **kwargs):
        tags = real_tags(*args, **kwargs)
        monkeypatch.setattr(SceneDataset, "__getitem__", poisoning_getitem)  # every read from here on
        return tags

    monkeypatch.setattr(incremental_module, "tags_from_present", tags_then_poison)
    run_incremental(options(steps, tmp_path / "poisoned"))
    assert poisoned["n"] > 0  # training read the poisoned labels ...
    a, b = weights(reference), weights(tmp_path / "poisoned")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # ... and never used them


def test_resumed_step_ends_with_the_same_weights(steps, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    run_incremental(options(steps, reference))
    interrupted = tmp_path / "interrupted"
    real_collate = incremental_module.collate_step
    calls = {"n": 0}
    per_epoch = torch.load(reference / "last.pt", weights_only=True)["step"] // 2

    def collate_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == per_epoch + 2:  # inside the second epoch
            raise KeyboardInterrupt
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(incremental_module, "collate_step", collate_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_incremental(options(steps, interrupted))
    monkeypatch.setattr(incremental_module, "collate_step", real_collate)
    assert torch.load(interrupted / "last.pt", weights_only=True)["epoch"] == 1
    run_incremental(options(steps, interrupted, resume=True))
    a, b = weights(reference), weights(interrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps_a = [json.loads(x)["step"] for x in (reference / "metrics.jsonl").read_text().splitlines()]
    steps_b = [json.loads(x)["step"] for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps_a == steps_b


@pytest.mark.parametrize("overrides", [
    ["refine.enabled=false", "teacher.enabled=false", "distill.enabled=false"],  # the lower bound
    ['data.supervision="labels"'],  # the upper bound
    ["teacher.contrastive_weight=0", "refine.superpoints=false"],
])
def test_bounds_and_ablations_run_through_the_same_command(steps, tmp_path, overrides):
    run = tmp_path / "run"
    run_incremental(options(steps, run, memory=0, memory_data=None, overrides=[*STEP, "train.epochs=1", *overrides]))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert not (run / "memory.pt").exists()


@pytest.fixture(scope="module")
def scene_encoder(steps) -> Path:
    """A one-epoch Point-MAE run on 256-point crops of the base rooms, 24 channels wide (the base
    model's features are narrower, so the refinement's feature width tells which it used)."""
    run = steps["root"] / "mae"
    run_pretrain(PretrainOptions(recipe=ACT_RECIPE, data=[steps["base_store"]], out=run, stage="mae", crop=256,
                                 device="cpu", overrides=[*PRETRAIN_TINY, "encoder.embed_dim=24",
                                                          "mae.batch_size=2", "train.epochs=1"]))
    return run


def test_encoder_gives_the_refinement_its_features_and_joins_the_fingerprint(steps, scene_encoder, tmp_path,
                                                                             monkeypatch):
    widths = []
    real_refine = incremental_module.refine_masks

    def spy(scores, tagged, feats, *args, **kwargs):
        widths.append(feats.shape[1])
        return real_refine(scores, tagged, feats, *args, **kwargs)

    monkeypatch.setattr(incremental_module, "refine_masks", spy)
    run = tmp_path / "run"
    run_incremental(options(steps, run, encoder=scene_encoder, overrides=[*STEP, "train.epochs=1"]))
    assert widths and set(widths) == {24}
    saved = torch.load(run / "last.pt", weights_only=True)["incremental"]["inputs"]
    assert saved["encoder"] == load_backbone(scene_encoder).digest
    with pytest.raises(InputError, match="--encoder differ from the checkpoint's"):
        run_incremental(options(steps, run, resume=True, overrides=[*STEP, "train.epochs=1"]))


@pytest.mark.parametrize("case, message", [
    ("objects", "holds an encoder pretrained on objects; the refinement reads whole rooms"),
    ("no-refine", "--encoder: is given but the recipe does not refine masks"),
    ("not-a-pretrain-run", "holds no 'encoder' state dict"),
])
def test_bad_encoder_is_one_line_exit_2_and_writes_nothing(steps, scene_encoder, tmp_path, case, message):
    encoder, extra = scene_encoder, []
    if case == "objects":  # the same run, as if pretrained on objects (no crop recorded)
        checkpoint = torch.load(scene_encoder / "last.pt", weights_only=True)
        del checkpoint["crop"]
        encoder = tmp_path / "objects.pt"
        torch.save(checkpoint, encoder)
    elif case == "no-refine":
        extra = ["--set", "refine.enabled=false"]
    else:
        encoder = steps["base"]
    result = run_cli("incremental", "--recipe", RECIPE, "--base", steps["base"], "--data", steps["train"],
                     "--new-classes", ",".join(steps["step1"]), "--tags-from-labels", "--encoder", encoder,
                     "--out", tmp_path / "run", "--device", "cpu", *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_disjoint_setting_drops_scenes_holding_a_future_class(steps, tmp_path):
    # The step-2 class is in every room that holds a step-1 class, so no room is left.
    step = options(steps, tmp_path / "run", overrides=[*STEP, 'data.setting="disjoint"'])
    with pytest.raises(InputError, match="0 scenes are tagged with a new class"):
        run_incremental(step)
    assert not (tmp_path / "run").exists()
    both = options(steps, tmp_path / "run", new_classes=",".join(steps["step1"] + steps["step2"]),
                   overrides=[*STEP, 'data.setting="disjoint"', "train.epochs=1"])
    run_incremental(both)  # no future class left: nothing dropped
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"] == 3


def write_tags(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_tags_json_trains_the_scenes_it_names(steps, tmp_path):
    with h5py.File(steps["train"]) as f:
        names = [str(g.attrs["name"]) for g in f.values()]
    tags = write_tags(tmp_path / "tags.json", {names[0]: steps["step1"], names[1]: [steps["step1"][0], "wall"]})
    run = tmp_path / "run"
    run_incremental(options(steps, run, tags=tags, tags_from_labels=False, memory=0, memory_data=None,
                            overrides=[*STEP, "train.epochs=1"]))
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["incremental"]["inputs"]["tags"] == [[1, 1], [1, 0]] and ckpt["step"] == 2


@pytest.mark.parametrize("change, message", [
    (lambda s, t: ["--new-classes", s["old"][0]], "the base run already knows class"),
    (lambda s, t: ["--new-classes", f"{s['step1'][0]},{s['step1'][0]}"], "is given twice"),
    (lambda s, t: ["--tags", write_tags(t / "t.json", {"nowhere_00": ["x"]})], "unknown scene 'nowhere_00'"),
    (lambda s, t: ["--tags", write_tags(t / "t.json", {}), "--tags-from-labels"], "not both"),
    (lambda s, t: ["--memory", "2"], "copy-paste needs old-class instances"),
    (lambda s, t: ["--memory-data", s["base_store"]], "is given but --memory is 0"),
    (lambda s, t: ["--tags-from-labels", "--set", 'data.supervision="nope"'], "must be one of tags | labels"),
    (lambda s, t: ["--tags-from-labels", "--base", t / "none"], "checkpoint or run folder not found"),
    (lambda s, t: ["--tags-from-labels", "--data", f"s3dis={s['train']}"], "was not trained on 's3dis'"),
    (lambda s, t: ["--tags-from-labels", "--set", "data.batch_size=50"], "fewer than one global batch"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(steps, tmp_path, change, message):
    args = ["incremental", "--recipe", RECIPE, "--base", steps["base"], "--data", steps["train"],
            "--new-classes", ",".join(steps["step1"]), "--out", tmp_path / "run", "--device", "cpu"]
    extra = [str(a) for a in change(steps, tmp_path)]
    for option in ("--new-classes", "--base", "--data"):
        if option in extra:
            at = args.index(option)
            del args[at:at + 2]
    if "--tags" not in extra and "--tags-from-labels" not in extra:
        extra.append("--tags-from-labels")
    result = run_cli(*args, *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_unknown_class_in_tags_json_names_the_scene(steps, tmp_path):
    with h5py.File(steps["train"]) as f:
        scene = str(next(iter(f.values())).attrs["name"])
    tags = write_tags(tmp_path / "tags.json", {scene: ["spaceship"]})
    result = run_cli("incremental", "--base", steps["base"], "--data", steps["train"], "--new-classes",
                     ",".join(steps["step1"]), "--tags", tags, "--out", tmp_path / "run", "--device", "cpu")
    assert result.returncode == 2
    assert f"{tags}:{scene}: unknown class 'spaceship'" in result.stderr
    assert not (tmp_path / "run").exists()
