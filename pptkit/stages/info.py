"""`pptkit info`: what a preprocessed HDF5 file holds (classes, scenes, points, voxels, counts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pptkit.data.store import complete_groups, open_store
from pptkit.errors import InputError


def read_info(path: str | Path) -> dict:
    """Summary of a store file.

    Keys: dataset, class_names, scenes, points, voxels, class_counts. For scene files
    class_counts counts ORIGINAL points per class (ignored points are not counted); for object
    files scenes is the number of objects, points their total points, voxels 0, and
    class_counts the objects per class.
    """
    path = Path(path)
    f, meta = open_store(path)
    names = list(meta.class_names)
    counts = np.zeros(len(names), dtype=np.int64)
    points = voxels = 0
    name = "/"
    with f:
        try:
            groups = complete_groups(f)
            for name in groups:
                group = f[name]
                if meta.kind == "object":
                    points += int(group["coord"].shape[0])
                    label = int(group.attrs["label"])
                    if 0 <= label < len(names):
                        counts[label] += 1
                    continue
                points += int(group.attrs["num_points"])
                voxels += int(group.attrs["num_voxels"])
                segment = group["points/segment"][()]
                segment = segment[(segment >= 0) & (segment < len(names))]
                counts += np.bincount(segment, minlength=len(names))
        except (OSError, KeyError, RuntimeError) as exc:
            raise InputError(f"cannot read group '{name}' (truncated or corrupt?): {exc}",
                             path) from None
    return {
        "dataset": meta.dataset,
        "class_names": names,
        "scenes": len(groups),
        "points": points,
        "voxels": voxels,
        "class_counts": {c: int(n) for c, n in zip(names, counts)},
    }


def print_info(info: dict, as_json: bool) -> None:
    """Print `info` to stdout as JSON (exactly `json.dumps(info)`) or as rich tables."""
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # names print literally: "[red]x" is a name, not markup

    out = Console()
    summary = Table(title=Text(info["dataset"]), show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value", justify="right")
    summary.add_row("classes", str(len(info["class_names"])))
    summary.add_row("scenes", f"{info['scenes']:,}")
    summary.add_row("points", f"{info['points']:,}")
    summary.add_row("voxels", f"{info['voxels']:,}")
    out.print(summary)
    total = sum(info["class_counts"].values())
    classes = Table(title="class counts")
    classes.add_column("#", justify="right")
    classes.add_column("class")
    classes.add_column("count", justify="right")
    classes.add_column("share", justify="right")
    for i, (name, count) in enumerate(info["class_counts"].items()):
        classes.add_row(str(i), Text(name), f"{count:,}", f"{100 * count / total:.1f}%" if total else "-")
    out.print(classes)
