"""Sparse voxel tensors and the coordinate context that their layers share.

A `SparseTensor` is a feature matrix (N, C) with one integer coordinate row (batch, x, y, z)
per feature row. Coordinates are in finest-grid units and, like MinkowskiEngine, a tensor at
stride s only holds multiples of s. Every tensor derived from another one by a sparse layer
shares its `CoordinateContext`: the context remembers the coordinates seen at each stride (so
a transposed convolution can go back to them) and caches kernel maps, so that all layers
working on the same coordinates and kernel re-use one map instead of searching again.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class CoordinateContext:
    """Coordinates per stride and cached kernel maps for one batch of sparse tensors.

    One coordinate set per stride: the first tensor registered at a stride defines it, and
    every later tensor at that stride in this context must have those same rows (in the same
    order), which is what sparse layers guarantee. Backends keep their own state (e.g. the
    MinkowskiEngine coordinate manager) in `backend_state`.
    """

    def __init__(self) -> None:
        self._coords: dict[int, Tensor] = {}
        self._kernel_maps: dict[tuple, Any] = {}
        self._batch_size: int | None = None
        self.backend_state: dict[str, Any] = {}

    @property
    def strides(self) -> list[int]:
        """Strides that have coordinates in this context, finest first."""
        return sorted(self._coords)

    def coords(self, stride: int) -> Tensor:
        """The coordinates registered at `stride` (KeyError naming the known strides if none)."""
        try:
            return self._coords[stride]
        except KeyError:
            raise KeyError(
                f"no coordinates at stride {stride} in this context (have strides {self.strides}); "
                "a transposed convolution can only return to a stride its input came from"
            ) from None

    def register(self, stride: int, coords: Tensor) -> None:
        """Record `coords` as the coordinate set at `stride`; re-registering must not change it."""
        known = self._coords.get(stride)
        if known is None:
            self._coords[stride] = coords
            return
        if known is coords:
            return
        if known.shape != coords.shape or not torch.equal(known.to(coords.device), coords):
            raise ValueError(
                f"a different coordinate set is already registered at stride {stride} in this "
                "context; build a new SparseTensor without `context=` for new coordinates"
            )

    def kernel_map(self, key: tuple, build: Callable[[], T]) -> T:
        """The map cached under `key` ((stride, kernel_size, kind)), built on first use."""
        cached = self._kernel_maps.get(key)
        if cached is None:
            cached = build()
            self._kernel_maps[key] = cached
        return cached

    def cached_keys(self) -> list[tuple]:
        """Keys of the kernel maps built so far (for tests and debugging)."""
        return list(self._kernel_maps)

    def batch_size(self) -> int:
        """Number of batch entries (max batch index + 1 of the finest coordinates), cached."""
        if self._batch_size is None:
            finest = self._coords[min(self._coords)]
            self._batch_size = int(finest[:, 0].max().item()) + 1 if len(finest) else 0
        return self._batch_size

    def set_batch_size(self, batch_size: int) -> None:
        """Record the batch size when it is known up front (e.g. from collation)."""
        self._batch_size = batch_size


class SparseTensor:
    """Features (N, C) on integer coordinates (N, 4) = (batch, x, y, z) at a tensor stride.

    `condition` is an opaque payload (e.g. the dataset / prompt ids that PDNorm reads); every
    sparse op carries it through unchanged.
    """

    __slots__ = ("feats", "coords", "stride", "context", "condition")

    def __init__(
        self,
        feats: Tensor,
        coords: Tensor,
        stride: int = 1,
        *,
        context: CoordinateContext | None = None,
        condition: object = None,
    ) -> None:
        if feats.dim() != 2:
            raise ValueError(f"feats must be (N, C), got shape {tuple(feats.shape)}")
        if coords.dim() != 2 or coords.shape[1] != 4 or coords.shape[0] != feats.shape[0]:
            raise ValueError(
                f"coords must be (N, 4) = (batch, x, y, z) with N = {feats.shape[0]} rows, "
                f"got shape {tuple(coords.shape)}"
            )
        if coords.dtype.is_floating_point or coords.dtype == torch.bool:
            raise ValueError(f"coords must be an integer tensor, got {coords.dtype}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.feats = feats
        self.coords = coords
        self.stride = int(stride)
        self.context = CoordinateContext() if context is None else context
        self.context.register(self.stride, coords)
        self.condition = condition

    @property
    def batch_size(self) -> int:
        return self.context.batch_size()

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def replace(self, feats: Tensor) -> SparseTensor:
        """Same coordinates, stride, context and condition with new features (N, C')."""
        if feats.shape[0] != self.feats.shape[0]:
            raise ValueError(f"replacement feats have {feats.shape[0]} rows, expected {self.feats.shape[0]}")
        return SparseTensor(feats, self.coords, self.stride, context=self.context, condition=self.condition)

    def with_condition(self, condition: object) -> SparseTensor:
        """Same tensor carrying a different condition payload."""
        return SparseTensor(self.feats, self.coords, self.stride, context=self.context, condition=condition)

    def __repr__(self) -> str:
        return (
            f"SparseTensor(n={self.feats.shape[0]}, channels={self.feats.shape[1]}, stride={self.stride}, "
            f"dtype={self.feats.dtype}, device={self.device})"
        )
