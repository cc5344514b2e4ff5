"""Class-incremental splits of a label space, and the step-0 store a base model trains on.

Splits follow the 3D class-incremental literature: `S-B` makes the last B classes of the label
order new (ScanNet 15-5, S3DIS 8-5, ...), and `S-B1-B2-...` adds them in several steps (15-3-2:
three new classes at step 1, two at step 2).

A base model must never see the new classes, not even as a class it predicts nothing for:
`write_base_store` copies a labelled store with those classes removed from its class list and
their voxels and points relabelled ignore (-1), so that `pptkit joint-train` on it records a
label space without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from pptkit.data.classes import IGNORE_INDEX
from pptkit.data.store import complete_groups, open_store, write_meta
from pptkit.data.tags import canonical_class_name
from pptkit.errors import InputError
from pptkit.fileio import atomic_path, check_output
from pptkit.progress import track


def split_steps(class_names: Sequence[str], spec: str) -> list[list[str]]:
    """[base classes, step-1 classes, ...] for a split like "15-5" or "15-3-2".

    The numbers must add up to the number of classes; classes keep their label order.
    """
    try:
        sizes = [int(part) for part in spec.split("-")]
    except ValueError:
        raise InputError(f"split '{spec}' is not of the form BASE-NEW[-NEW...] (e.g. 15-5)") from None
    if len(sizes) < 2 or min(sizes) < 1 or sum(sizes) != len(class_names):
        raise InputError(f"split '{spec}' must be two or more positive numbers adding up to "
                         f"{len(class_names)} (the number of classes)")
    bounds = np.cumsum([0, *sizes])
    return [list(class_names[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def base_class_map(class_names: Sequence[str], drop: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(kept class names, lookup old label -> new label or -1) with the `drop` classes removed."""
    keys = [canonical_class_name(n) for n in class_names]
    for name in drop:
        if canonical_class_name(name) not in keys:
            raise InputError(f"class '{name}' is not one of the store's classes ({', '.join(class_names)})")
    dropped = {canonical_class_name(n) for n in drop}
    kept = [n for n, key in zip(class_names, keys) if key not in dropped]
    lookup = np.full(len(class_names), IGNORE_INDEX, dtype=np.int16)
    for new, name in enumerate(kept):
        lookup[list(class_names).index(name)] = new
    return kept, lookup


def _relabel(segment: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    out = np.full(segment.shape, IGNORE_INDEX, dtype=np.int16)
    labelled = segment >= 0
    out[labelled] = lookup[segment[labelled].astype(np.int64)]
    return out


def write_base_store(source: str | Path, output: str | Path, drop: Sequence[str],
                     overwrite: bool = False) -> Path:
    """Write `output`: `source` without the `drop` classes (their voxels and points ignored).

    Scene groups are copied as they are (whatever the store's format version holds) and only
    their labels rewritten. Every input is checked before anything is written; the file
    appears complete or not at all.
    """
    import h5py

    output = check_output(output, overwrite)
    f, meta = open_store(source)
    with f:
        if meta.kind != "scene":
            raise InputError(f"holds {meta.kind}s; a base store is made from scenes", source)
        kept, lookup = base_class_map(meta.class_names, drop)
        groups = complete_groups(f)
        if not groups:
            raise InputError("holds no complete scene", source)
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output) as tmp, h5py.File(tmp, "w") as out:
            write_meta(out, replace(meta, class_names=tuple(kept), created=""))
            for name in track(groups, "base store", total=len(groups)):
                f.copy(f[name], out, name=name)
                for key in ("segment", "points/segment"):
                    out[name][key][...] = _relabel(out[name][key][()], lookup)
    return output
