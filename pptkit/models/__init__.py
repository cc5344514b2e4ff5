"""Network architectures, one per module; import the class you mean."""

from pptkit.models.sparse_unet import MinkUNet14, MinkUNet18, MinkUNet34, SparseUNet

__all__ = ["MinkUNet14", "MinkUNet18", "MinkUNet34", "SparseUNet"]
