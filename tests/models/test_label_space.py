"""Union label space: built by name, deterministic, and mismatches caught."""

from __future__ import annotations

import pytest
import torch

from pptkit.data.classes import MODELNET40, S3DIS13, SCANNET20, STRUCTURED3D25
from pptkit.errors import InputError
from pptkit.models.label_space import UnionLabelSpace, normalize_class_name

DATASETS = {"scannet": SCANNET20, "s3dis": S3DIS13, "structured3d": STRUCTURED3D25}


def test_union_by_name_keeps_first_appearance_order():
    space = UnionLabelSpace.from_class_names(DATASETS)
    assert space.union_names[:20] == SCANNET20
    # s3dis adds ceiling, beam, column, bookcase, board, clutter; structured3d adds 9 more.
    assert space.union_names[20:26] == ("ceiling", "beam", "column", "bookcase", "board", "clutter")
    assert len(space) == 35
    for dataset, names in DATASETS.items():
        mapped = [space.union_names[u] for u in space.dataset_to_union[dataset].tolist()]
        assert mapped == list(names)
        assert space.dataset_to_union[dataset].dtype == torch.long


def test_shared_class_shares_union_entry_and_near_synonyms_stay_distinct():
    space = UnionLabelSpace.from_class_names(DATASETS)
    chair = {d: space.dataset_to_union[d][list(n).index("chair")].item() for d, n in DATASETS.items()}
    assert len(set(chair.values())) == 1
    bookshelf = space.dataset_to_union["scannet"][SCANNET20.index("bookshelf")].item()
    bookcase = space.dataset_to_union["s3dis"][S3DIS13.index("bookcase")].item()
    assert bookshelf != bookcase


def test_order_is_deterministic_and_follows_dataset_order():
    first = UnionLabelSpace.from_class_names(DATASETS)
    again = UnionLabelSpace.from_class_names(dict(DATASETS))
    assert first.union_names == again.union_names
    reversed_order = UnionLabelSpace.from_class_names(dict(reversed(DATASETS.items())))
    assert reversed_order.union_names[:25] == STRUCTURED3D25
    assert set(reversed_order.union_names) == set(first.union_names)


def test_names_are_normalised_before_matching():
    assert normalize_class_name(" Flower_Pot ") == "flower pot"
    space = UnionLabelSpace.from_class_names({"a": ["Night_Stand", "chair"], "b": ["night stand "]})
    assert space.union_names == ("night stand", "chair")
    assert space.dataset_to_union["b"].tolist() == [0]


def test_hand_written_mapping_with_wrong_entry_is_rejected():
    # The reference bug: S3DIS labels paired with a hand-written, shifted index list.
    good = UnionLabelSpace.from_class_names(DATASETS)
    shifted = {d: t.clone() for d, t in good.dataset_to_union.items()}
    shifted["s3dis"][[9, 10]] = shifted["s3dis"][[10, 9]]  # swap sofa and bookcase
    with pytest.raises(InputError, match=r"'s3dis' class 9 \('sofa'\).*'bookcase'"):
        UnionLabelSpace(good.union_names, DATASETS, shifted)
    UnionLabelSpace(good.union_names, DATASETS, good.dataset_to_union)  # the correct one passes


def test_bad_inputs_are_named():
    with pytest.raises(InputError, match="'x' names class 0 and class 1 both 'chair'"):
        UnionLabelSpace.from_class_names({"x": ["chair", "Chair"]})
    with pytest.raises(InputError, match="outside"):
        UnionLabelSpace(["chair"], {"x": ["chair"]}, {"x": [3]})
    with pytest.raises(InputError, match="2 classes"):
        UnionLabelSpace(["chair", "sofa"], {"x": ["chair", "sofa"]}, {"x": [0]})
    with pytest.raises(InputError, match="not in the label space"):
        UnionLabelSpace.from_class_names(DATASETS).mappings(["modelnet"])


def test_mappings_and_describe():
    space = UnionLabelSpace.from_class_names({"scannet": SCANNET20, "modelnet": MODELNET40})
    maps = space.mappings(["modelnet", "scannet"])
    assert [len(m) for m in maps] == [40, 20]
    text = space.describe()
    lines = text.splitlines()
    assert lines[0].startswith(f"union label space: {len(space)} classes (scannet 20, modelnet 40)")
    chair_row = next(line.split() for line in lines if line.split()[1:2] == ["chair"])
    assert chair_row[2:] == [str(SCANNET20.index("chair")), str(MODELNET40.index("chair"))]
    wall_row = next(line.split() for line in lines if line.split()[1:2] == ["wall"])
    assert wall_row[2:] == ["0", "-"]
