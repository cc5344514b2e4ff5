"""Scene-level tags: which new classes a scene contains, read from `tags.json` or derived from labels.

`tags.json` is one JSON object mapping a scene id (the store item's `name`, e.g. "scene0000_00")
to the list of class names it contains:

    {"scene0000_00": ["toilet", "sink"], "scene0001_00": ["bathtub"]}

Names are compared as the label space compares them (case-insensitive, "_" as space). A name
that is one of the classes being added becomes a tag; a class the model already knows is
accepted and dropped (its points are supervised by distillation, not by tags); anything else,
and a scene the store does not hold, is an error naming the file and key. Scenes of the store
that tags.json leaves out carry no tag.

`classes_present` reads labelled scenes to derive the same information for benchmarks; it is
the only place labels of a tagged store are read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pptkit.errors import InputError


def canonical_class_name(name: str) -> str:
    """The label space's comparison form: lowercase, '_' as space, outer spaces gone."""
    return name.lower().replace("_", " ").strip()


def read_tags(path: str | Path, scene_names: Sequence[str], new_classes: Sequence[str],
              old_classes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """{scene: new classes it contains, in `new_classes` order} for the scenes tags.json names.

    InputError (naming the file, and the scene key or JSON line) when the file is not a JSON
    object of lists of strings, names a scene that is not in `scene_names`, or names a class
    that is neither new nor old.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("tags file not found", path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError("is not UTF-8 text", path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg} (column {exc.colno})", path, where=f"line {exc.lineno}") from None
    if not isinstance(document, dict):
        raise InputError("must hold one JSON object mapping scene ids to lists of class names", path)
    known_scenes = set(scene_names)
    new_by_key = {canonical_class_name(n): n for n in new_classes}
    old_keys = {canonical_class_name(n) for n in old_classes}
    tags: dict[str, tuple[str, ...]] = {}
    for scene, names in document.items():
        if scene not in known_scenes:
            example = next(iter(scene_names), "")
            raise InputError(f"unknown scene '{scene}': the store holds no scene of that name "
                             f"({len(known_scenes)} scenes, e.g. '{example}')", path, where=scene)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError("must be a list of class names (strings)", path, where=scene)
        present = set()
        for name in names:
            key = canonical_class_name(name)
            if key in new_by_key:
                present.add(key)
            elif key not in old_keys:
                raise InputError(f"unknown class '{name}': neither a new class ({', '.join(new_classes)}) "
                                 "nor one the base model knows", path, where=scene)
        tags[scene] = tuple(n for n in new_classes if canonical_class_name(n) in present)
    return tags


def classes_present(segments: Iterable[tuple[str, np.ndarray]], class_names: Sequence[str],
                    min_voxels: int = 1) -> dict[str, frozenset[str]]:
    """{scene: names of the classes with at least `min_voxels` voxels} from (scene, segment) pairs."""
    present: dict[str, frozenset[str]] = {}
    for scene, segment in segments:
        counts = np.bincount(np.asarray(segment, dtype=np.int64)[np.asarray(segment) >= 0],
                             minlength=len(class_names))
        present[scene] = frozenset(class_names[c] for c in np.flatnonzero(counts >= min_voxels))
    return present


def tags_from_present(present: Mapping[str, frozenset[str]], new_classes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Tags (new classes present, in `new_classes` order) from `classes_present`'s output."""
    new_keys = [canonical_class_name(n) for n in new_classes]
    tags = {}
    for scene, names in present.items():
        keys = {canonical_class_name(n) for n in names}
        tags[scene] = tuple(n for n, key in zip(new_classes, new_keys) if key in keys)
    return tags
