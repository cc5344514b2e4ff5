"""ScanObjectNN objects from the released HDF5 files (``data`` (M, 2048, 3), ``label`` (M,)).

The variant is chosen by the folder given as root, the file by the split:

=============  =====================  ====================================================
variant        root                   split -> file
=============  =====================  ====================================================
OBJ_BG         ``main_split``         ``train`` / ``test`` -> ``training_objectdataset.h5``
                                      / ``test_objectdataset.h5``
OBJ_ONLY       ``main_split_nobg``    same as OBJ_BG
PB_T50_RS      ``main_split``         ``train_augmentedrot_scale75`` /
                                      ``test_augmentedrot_scale75`` ->
                                      ``training_objectdataset_augmentedrot_scale75.h5`` ...
=============  =====================  ====================================================

In general split ``train<suffix>`` reads ``training_objectdataset<suffix>.h5`` and
``test<suffix>`` reads ``test_objectdataset<suffix>.h5``. Root may also be one .h5 file,
read whole with split None. The background ``mask`` is not used.

Item ids are ``<split>/<index>`` (or ``<index>`` for a file root), the index zero-padded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pptkit.data.classes import SCANOBJECTNN15
from pptkit.data.types import PointObject, validate_object
from pptkit.errors import InputError

_FILE = re.compile(r"(training|test)_objectdataset(.*)\.h5")


def split_file(split: str) -> str:
    """File of a split starting with train or test: 'train_x' -> 'training_objectdataset_x.h5'."""
    if split.startswith("train"):
        return f"training_objectdataset{split[len('train'):]}.h5"
    return f"test_objectdataset{split[len('test'):]}.h5"


def _splits_in(folder: Path) -> list[str]:
    splits = []
    for p in folder.glob("*.h5"):
        match = _FILE.fullmatch(p.name)
        if match:
            splits.append(("train" if match.group(1) == "training" else "test") + match.group(2))
    return sorted(splits)


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot open HDF5 file: {exc}", path) from None


def _count(path: Path) -> int:
    with _open(path) as f:
        for key in ("data", "label"):
            if key not in f:
                raise InputError(f"no '{key}' dataset (found: {', '.join(f.keys())})", path)
        if len(f["data"]) != len(f["label"]):
            raise InputError(f"'data' has {len(f['data'])} objects, 'label' {len(f['label'])}",
                             path)
        return len(f["data"])


@dataclass(frozen=True)
class ScanObjectNNReader:
    """Reads ScanObjectNN objects (see the module docstring for variants and splits)."""

    name: str = "scanobjectnn"
    class_names: tuple[str, ...] = SCANOBJECTNN15
    kind: str = "object"
    default_split: str | None = None

    def classes(self, root: Path) -> tuple[str, ...]:
        return self.class_names

    def _file(self, root: Path, split: str | None) -> Path:
        if root.is_file():
            if split is not None:
                raise InputError(f"input is a single .h5 file, so no split applies (got "
                                 f"'{split}'); give the folder to choose a split", root)
            return root
        if not root.is_dir():
            raise InputError("ScanObjectNN folder or .h5 file not found", root)
        available = ", ".join(_splits_in(root)) or (
            "none: no training_objectdataset*.h5 or test_objectdataset*.h5 files")
        if split is None or not split.startswith(("train", "test")):
            raise InputError(f"choose a split (available: {available})", root)
        path = root / split_file(split)
        if not path.is_file():
            raise InputError(f"split '{split}' needs {path.name} (available: {available})",
                             root)
        return path

    def items(self, root: Path, split: str | None) -> list[str]:
        root = Path(root)
        path = self._file(root, split)
        count = _count(path)
        if count == 0:
            raise InputError("holds no objects", path)
        width = max(5, len(str(count - 1)))
        prefix = "" if root.is_file() else f"{split}/"
        return [f"{prefix}{i:0{width}d}" for i in range(count)]

    def read(self, root: Path, item: str, strict: bool = False) -> PointObject:
        root = Path(root)
        split, _, index = item.rpartition("/")
        path = self._file(root, split or None)
        if not index.isdigit():
            raise InputError(f"bad item id '{item}' (expected [<split>/]<index>)", path)
        i = int(index)
        with _open(path) as f:
            if "data" not in f or "label" not in f or i >= len(f["data"]):
                raise InputError(f"no object {i} (the file has 'data' and 'label' for "
                                 f"{_count(path)} objects)", path)
            points = np.asarray(f["data"][i], dtype=np.float64)
            label = np.asarray(f["label"][i]).reshape(-1)
        if points.ndim != 2 or points.shape[1] < 3 or label.size != 1:
            raise InputError(f"object {i}: expected data (P, 3) and one label, got "
                             f"{points.shape} and {label.shape}", path)
        obj = PointObject(name=item, coord=points[:, :3], label=int(label[0]))
        return validate_object(obj, len(self.class_names), f"{path}:object {i}")
