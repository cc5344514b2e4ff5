"""Class names of every supported dataset, in label order. The one place they live."""

from __future__ import annotations

SCANNET20: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "desk", "curtain", "refrigerator",
    "shower curtain", "toilet", "sink", "bathtub", "otherfurniture",
)
# NYU40 ids of the ScanNet v2 20-class benchmark, aligned with SCANNET20.
SCANNET20_NYU40_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39,
)

S3DIS13: tuple[str, ...] = (
    "ceiling", "floor", "wall", "beam", "column", "window", "door",
    "table", "chair", "sofa", "bookcase", "board", "clutter",
)

# Structured3D as converted by Pointcept (25 classes; NYU40-derived names).
STRUCTURED3D25: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "picture", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "ceiling",
    "refrigerator", "television", "nightstand", "sink", "lamp", "otherstructure",
    "otherfurniture", "otherprop",
)

MODELNET40: tuple[str, ...] = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair",
    "cone", "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box",
    "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor", "night_stand", "person",
    "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table",
    "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)

SCANOBJECTNN15: tuple[str, ...] = (
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf",
    "table", "bed", "pillow", "sink", "sofa", "toilet",
)

IGNORE_INDEX = -1
