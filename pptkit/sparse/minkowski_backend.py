"""MinkowskiEngine 0.5.4 backend: the same convolutions run by ME's own kernels.

Coordinates stay the ones the context defines (the torch-side code decides them, so both
backends produce identical rows): each stride's coordinate set is inserted once into the
context's ME `CoordinateManager`, and ME's convolution functions are called with explicit
input and output map keys, so ME builds and caches every kernel map in its manager.

Weight layout: ME's HYPER_CUBE kernel lists offsets with dx fastest, i.e. lexicographic in
(dz, dy, dx), the reverse of the canonical (dx, dy, dz) order (see kernel_map.py); this holds
for odd kernels (offsets -k//2..k//2) and for even kernels such as the stride-2 k=2
downsampling ({0,1}^3) and its transposed convolution alike. So
`me_weight = weight.view(k, k, k, C_in, C_out).permute(2, 1, 0, 3, 4).reshape(K, C_in, C_out)`;
tests/sparse/test_minkowski_equivalence.py checks it numerically.
"""

from __future__ import annotations

import collections
import collections.abc
import warnings
from types import ModuleType

import torch
from torch import Tensor

from pptkit.errors import InputError
from pptkit.sparse.tensor import CoordinateContext


class BackendUnavailableError(InputError):
    """A sparse backend was requested that is not installed."""


def _import_minkowski() -> ModuleType | None:
    """Import MinkowskiEngine, or None when it is not installed.

    ME 0.5.4 still uses `collections.Sequence` & co., removed in Python 3.10; the aliases are
    set here only, right before importing it.
    """
    for name in ("Sequence", "Mapping", "Iterable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*compiled with CPU_ONLY.*")
            import MinkowskiEngine
    except ImportError:
        return None
    return MinkowskiEngine


_ME: ModuleType | None = None
_ME_TRIED = False


def minkowski() -> ModuleType | None:
    """The MinkowskiEngine module if importable (imported once), else None."""
    global _ME, _ME_TRIED
    if not _ME_TRIED:
        _ME = _import_minkowski()
        _ME_TRIED = True
    return _ME


def require_minkowski() -> ModuleType:
    """MinkowskiEngine, or a BackendUnavailableError that says how to install it."""
    me = minkowski()
    if me is None:
        raise BackendUnavailableError(
            'sparse backend "minkowski" needs MinkowskiEngine 0.5.4, which is not importable; '
            'install it with `make minkowski` (CPU build) or use backend="torch"',
            where="backend",
        )
    return me


def to_minkowski_weight(weight: Tensor, kernel_size: int) -> Tensor:
    """Canonical (K, C_in, C_out) weight -> ME's kernel layout (differentiable view + copy)."""
    k = kernel_size
    c_in, c_out = weight.shape[1], weight.shape[2]
    return weight.view(k, k, k, c_in, c_out).permute(2, 1, 0, 3, 4).reshape(k**3, c_in, c_out)


class _ManagerState:
    """The ME coordinate manager of one context and the map key of each inserted stride."""

    def __init__(self, me: ModuleType):
        # ME would otherwise take min(cpu_count, 20) OpenMP threads; follow torch's setting
        self.manager = me.CoordinateManager(D=3, num_threads=torch.get_num_threads())
        self.keys: dict[int, object] = {}


def map_key(context: CoordinateContext, stride: int):
    """(ME coordinate manager, map key) for the context's coordinates at `stride`."""
    me = require_minkowski()
    state = context.backend_state.get("minkowski")
    if state is None:
        state = context.backend_state["minkowski"] = _ManagerState(me)
    key = state.keys.get(stride)
    if key is None:
        coords = context.coords(stride)
        key, (unique_map, _) = state.manager.insert_and_map(
            coords.to(torch.int32).contiguous(), tensor_stride=stride, string_id=""
        )
        if unique_map.numel() != coords.shape[0] or not torch.equal(
            unique_map.cpu().long(), torch.arange(coords.shape[0])
        ):
            raise ValueError(f"coordinates at stride {stride} contain duplicate rows")
        state.keys[stride] = key
    return state.manager, key


def convolution(
    feats: Tensor,
    weight: Tensor,
    context: CoordinateContext,
    in_stride: int,
    out_stride: int,
    kernel_size: int,
    conv_stride: int,
    transposed: bool,
) -> Tensor:
    """Run ME's (transposed) convolution between two strides of the context."""
    me = require_minkowski()
    from MinkowskiEngineBackend._C import ConvolutionMode
    from MinkowskiEngine.MinkowskiConvolution import (
        MinkowskiConvolutionFunction,
        MinkowskiConvolutionTransposeFunction,
    )

    manager, in_key = map_key(context, in_stride)
    _, out_key = map_key(context, out_stride)
    generator = me.KernelGenerator(
        kernel_size=kernel_size,
        stride=conv_stride,
        dilation=1,
        region_type=me.RegionType.HYPER_CUBE,
        dimension=3,
    )
    function = MinkowskiConvolutionTransposeFunction if transposed else MinkowskiConvolutionFunction
    return function.apply(
        feats.contiguous(),
        to_minkowski_weight(weight, kernel_size),
        generator,
        ConvolutionMode.DEFAULT,
        in_key,
        out_key,
        manager,
    )
