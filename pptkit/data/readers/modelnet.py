"""ModelNet40 shapes in the "normal_resampled" release: ``root/<class>/<class>_NNNN.txt``.

Each line is ``x,y,z,nx,ny,nz`` (``x,y,z`` alone is accepted, without normals). Item ids are
shape ids such as ``airplane_0001``; the class is the id without its number.

Splits come from ``modelnet40_<split>.txt`` (``train``, ``test``; one shape id a line) in
root; without them only split None (every shape found) is available.

Class order is MODELNET40 from pptkit.data.classes, not the names in the release's
``modelnet40_shape_names.txt``: label indices must mean the same class in every copy of
the data, in every checkpoint and in every evaluation. The file is still checked when
present; if it disagrees (another dataset or an edited copy) reading stops with an error
rather than silently assigning different classes to the same indices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pptkit.data.classes import MODELNET40
from pptkit.data.readers.base import read_class_file, read_id_list, require_dir
from pptkit.data.tables import parse_table
from pptkit.data.types import PointObject, validate_object
from pptkit.errors import InputError
from pptkit.progress import console

SHAPE_NAMES = "modelnet40_shape_names.txt"
_SHAPE = re.compile(r"(.+)_(\d+)")


def _class_of(item: str) -> str | None:
    match = _SHAPE.fullmatch(item)
    return match.group(1) if match else None


def check_shape_names(root: Path) -> None:
    """InputError when root's modelnet40_shape_names.txt disagrees with MODELNET40."""
    path = root / SHAPE_NAMES
    if not path.is_file():
        return
    names = read_class_file(path)
    for lineno, (theirs, ours) in enumerate(zip(names, MODELNET40), 1):
        if theirs != ours:
            raise InputError(f"class '{theirs}' where ModelNet40's label order has '{ours}'",
                             path, f"line {lineno}")
    if len(names) != len(MODELNET40):
        raise InputError(f"lists {len(names)} classes, ModelNet40 has {len(MODELNET40)}", path)


@dataclass(frozen=True)
class ModelNet40Reader:
    """Reads ModelNet40 shapes with their normals (see the module docstring)."""

    name: str = "modelnet40"
    class_names: tuple[str, ...] = MODELNET40
    kind: str = "object"
    default_split: str | None = None

    def classes(self, root: Path) -> tuple[str, ...]:
        return self.class_names

    def _all_shapes(self, root: Path) -> list[str]:
        shapes = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            found = [p.stem for p in folder.glob(f"{folder.name}_*.txt")
                     if _class_of(p.stem) == folder.name]
            if found and folder.name not in self.class_names:
                raise InputError(f"'{folder.name}' is not a ModelNet40 class", folder)
            shapes += found
        return shapes

    def items(self, root: Path, split: str | None) -> list[str]:
        root = require_dir(root)
        check_shape_names(root)
        if split is None:
            shapes = self._all_shapes(root)
            if not shapes:
                raise InputError("not a ModelNet40 folder: no <class>/<class>_NNNN.txt files",
                                 root)
            return sorted(shapes)
        list_file = root / f"modelnet40_{split}.txt"
        if not list_file.is_file():
            raise InputError(f"split '{split}' needs the list {list_file.name} (without split "
                             "lists only split None, every shape, is available)", root)
        wanted = read_id_list(list_file)
        present = [s for s in wanted if (root / str(_class_of(s)) / f"{s}.txt").is_file()]
        if not present:
            raise InputError(f"none of the {len(wanted)} shapes listed is in {root}", list_file)
        if len(present) < len(wanted):
            console.print(f"warning: {list_file}: {len(wanted) - len(present)} of {len(wanted)} "
                          f"listed shapes are absent", markup=False, highlight=False,
                          soft_wrap=True)
        return sorted(present)

    def read(self, root: Path, item: str, strict: bool = False) -> PointObject:
        cls = _class_of(item)
        if cls not in self.class_names:
            raise InputError(f"shape id '{item}' does not start with a ModelNet40 class", root)
        path = Path(root) / cls / f"{item}.txt"
        if not path.is_file():
            raise InputError("file not found", path)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read as text: {exc}", path) from None
        table = parse_table(text, path, delimiter=",")  # an empty file is caught below
        if table.size and table.shape[1] not in (3, 6):
            raise InputError(f"expected 'x,y,z,nx,ny,nz' (or 'x,y,z') lines, got "
                             f"{table.shape[1]} values", path, "line 1")
        shape = PointObject(name=item, coord=table[:, :3], label=self.class_names.index(cls),
                            normal=table[:, 3:6] if table.shape[1] == 6 else None)
        return validate_object(shape, len(self.class_names), str(path))
