"""Network architectures, one per module; import the class you mean."""

from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.models.sparse_unet import MinkUNet14, MinkUNet18, MinkUNet34, SparseUNet
from pptkit.models.vit_teacher import PromptedTeacher, VisionTransformer

__all__ = ["MinkUNet14", "MinkUNet18", "MinkUNet34", "PointTransformerEncoder", "PromptedTeacher", "SparseUNet",
           "VisionTransformer"]
