"""tags.json parsing and its errors; tags derived from labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pptkit.data.tags import classes_present, read_tags, tags_from_present
from pptkit.errors import InputError

SCENES = ["scene0000_00", "scene0001_00", "scene0002_00"]
NEW = ["toilet", "sink", "bathtub"]
OLD = ["wall", "floor", "shower curtain"]


def write(tmp_path, document) -> object:
    path = tmp_path / "tags.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_tags_keep_new_classes_in_their_order_and_drop_old_ones(tmp_path):
    path = write(tmp_path, {"scene0000_00": ["Sink", "toilet", "wall"], "scene0002_00": [],
                            "scene0001_00": ["shower_curtain", "bathtub", "bathtub"]})
    tags = read_tags(path, SCENES, NEW, OLD)
    assert tags == {"scene0000_00": ("toilet", "sink"), "scene0002_00": (), "scene0001_00": ("bathtub",)}


@pytest.mark.parametrize("document, where, message", [
    ('{"scene0000_00": ["toilet"],}', "line 1", "invalid JSON"),
    ('["toilet"]', None, "must hold one JSON object"),
    ({"scene9999_00": ["toilet"]}, "scene9999_00", "unknown scene 'scene9999_00'"),
    ({"scene0000_00": "toilet"}, "scene0000_00", "must be a list of class names"),
    ({"scene0000_00": ["toilet", 3]}, "scene0000_00", "must be a list of class names"),
    ({"scene0001_00": ["lamp"]}, "scene0001_00", "unknown class 'lamp'"),
])
def test_bad_tags_name_the_file_and_key(tmp_path, document, where, message):
    path = write(tmp_path, document)
    with pytest.raises(InputError) as info:
        read_tags(path, SCENES, NEW, OLD)
    text = str(info.value)
    assert text.startswith(f"{path}:{where}: " if where else f"{path}: ")
    assert message in text
    assert "\n" not in text


def test_missing_and_non_utf8_tags_files(tmp_path):
    with pytest.raises(InputError, match="tags file not found"):
        read_tags(tmp_path / "none.json", SCENES, NEW, OLD)
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(InputError, match="is not UTF-8 text"):
        read_tags(path, SCENES, NEW, OLD)


def test_tags_from_labels_count_voxels_per_class():
    names = ["wall", "toilet", "sink"]
    segments = [("a", np.array([0, 0, 1, -1, 2, 2], np.int16)), ("b", np.array([0, -1, -1], np.int16))]
    assert classes_present(segments, names) == {"a": frozenset(names), "b": frozenset({"wall"})}
    present = classes_present(segments, names, min_voxels=2)
    assert present == {"a": frozenset({"wall", "sink"}), "b": frozenset()}
    assert tags_from_present(present, ["sink", "toilet"]) == {"a": ("sink",), "b": ()}
