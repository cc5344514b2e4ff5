"""Sparse voxel convolution engine: SparseTensor, sparse layers and two backends.

backend="torch" is pure PyTorch (CPU and CUDA, no compiled extension); backend="minkowski"
runs MinkowskiEngine 0.5.4 (`make minkowski`). Both read the same canonical weights, so a
state_dict works with either.
"""

from pptkit.sparse.collate import sparse_collate
from pptkit.sparse.minkowski_backend import BackendUnavailableError
from pptkit.sparse.modules import (
    BatchNorm,
    Conv3d,
    ConvTranspose3d,
    GlobalPool,
    ReLU,
    SubMConv3d,
    available_backends,
)
from pptkit.sparse.tensor import CoordinateContext, SparseTensor

__all__ = [
    "BackendUnavailableError",
    "BatchNorm",
    "Conv3d",
    "ConvTranspose3d",
    "CoordinateContext",
    "GlobalPool",
    "ReLU",
    "SparseTensor",
    "SubMConv3d",
    "available_backends",
    "sparse_collate",
]
