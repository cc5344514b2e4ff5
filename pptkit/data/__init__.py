"""Point-cloud data: readers, voxelization, the HDF5 store and its loaders."""

from pptkit.data.voxelize import Voxelization, voxel_mean, voxel_mode, voxelize

__all__ = ["Voxelization", "voxel_mean", "voxel_mode", "voxelize"]
