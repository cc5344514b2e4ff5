"""What every dataset reader provides, and the small file helpers the readers share."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from pptkit.data.types import PointObject, PointScene
from pptkit.errors import InputError


class DatasetReader(Protocol):
    """Lists and reads the items (scenes or objects) of one dataset in its native format.

    Readers are small frozen dataclasses: picklable, cheap to build, and `read` touches only
    the files of one item, so it is safe to call from worker processes.
    """

    name: str  # CLI name
    kind: str  # "scene" or "object"
    class_names: tuple[str, ...]  # label order (from pptkit.data.classes); () for generic data
    default_split: str | None

    def items(self, root: Path, split: str | None) -> list[str]:
        """Sorted ids of the items of `split`; InputError if `root` is missing, not this
        format, or has no such split."""
        ...

    def read(self, root: Path, item: str, strict: bool = False) -> PointScene | PointObject:
        """One item, validated; InputError naming the offending file."""
        ...

    def classes(self, root: Path) -> tuple[str, ...]:
        """Class names of the data under `root`: `class_names` for the fixed datasets, the
        folder's classes.txt for generic data (whose names are only known from the files)."""
        ...


def require_dir(root: Path, what: str = "dataset folder") -> Path:
    """`root` as a Path, or InputError when it is not an existing folder."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{what} not found" if not root.exists() else f"{what} is not a folder",
                         root)
    return root


def load_npy(path: Path) -> np.ndarray:
    """np.load without pickles; InputError naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read NumPy array: {exc}", path) from None


def as_columns(array: np.ndarray, cols: int, path: Path, key: str) -> np.ndarray:
    """`array` checked to be (N, cols); InputError naming the file and key otherwise."""
    if array.ndim != 2 or array.shape[1] != cols:
        raise InputError(f"'{key}' must be (N, {cols}), got {array.shape}", path)
    return array


def as_labels(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Per-point integer labels from (N,) or (N, 1) arrays of any numeric dtype."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise InputError(f"'{key}' must be (N,) or (N, 1), got {array.shape}", path)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise InputError(f"'{key}' holds non-integer values", path)
    elif array.dtype.kind not in "iu":
        raise InputError(f"'{key}' must be numeric, got dtype {array.dtype}", path)
    return array.astype(np.int64)


def as_color(array: np.ndarray) -> np.ndarray:
    """Colours as 0-255 values; float colours that all lie in [0, 1] are scaled up."""
    if array.dtype.kind == "f" and array.size and np.nanmax(array) <= 1.0:
        return np.round(array * 255.0)
    return array


def read_class_file(path: Path) -> tuple[str, ...]:
    """Class names, one per non-empty line, in label order."""
    try:
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read class names: {exc}", path) from None
    if len(set(names)) != len(names):
        raise InputError("class names are not unique", path)
    return names


def read_id_list(path: Path) -> list[str]:
    """Ids listed one per line (split files); blank lines skipped."""
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read list: {exc}", path) from None
