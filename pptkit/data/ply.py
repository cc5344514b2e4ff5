"""PLY reading and writing (ascii, binary little/big endian), with NumPy arrays.

Only what point-cloud datasets use: a `vertex` element with scalar properties and an
optional `face` element with one list property (the vertex indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pptkit.data.tables import parse_table
from pptkit.errors import InputError
from pptkit.progress import console

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort",
          "i4": "int", "u4": "uint", "f4": "float", "f8": "double"}


@dataclass
class PlyData:
    """Vertex properties by name, and faces as an (F, 3) int array when the file has them."""

    vertex: dict[str, np.ndarray]
    faces: np.ndarray | None = None


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str]]  # scalar (name, dtype)
    list_prop: tuple[str, str, str] | None = None  # (name, count dtype, item dtype)


def _parse_header(f, path: Path) -> tuple[str, list[_Element], int]:
    """(format, elements, number of header lines)."""
    if f.readline().strip() != b"ply":
        raise InputError("not a PLY file (missing 'ply' magic)", path)
    fmt = None
    elements: list[_Element] = []
    for lineno in range(2, 10_000):
        raw = f.readline()
        if not raw:
            raise InputError("truncated PLY header (no 'end_header')", path)
        line = raw.decode("ascii", errors="replace").strip()
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else None
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise InputError(f"bad element line '{line[:80]}' (expected 'element NAME "
                                 "COUNT', COUNT a whole number)", path, f"line {lineno}")
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise InputError("property before any element", path, f"line {lineno}")
            try:
                if words[1] == "list":
                    elements[-1].list_prop = (words[4], _TYPES[words[2]], _TYPES[words[3]])
                else:
                    elements[-1].props.append((words[2], _TYPES[words[1]]))
            except (KeyError, IndexError):
                raise InputError(f"bad property line '{line[:80]}'", path,
                                 f"line {lineno}") from None
        elif words[0] == "end_header":
            break
    else:
        raise InputError("PLY header has no 'end_header' in its first 10,000 lines", path)
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(f"unsupported PLY format '{fmt}'", path)
    return fmt, elements, lineno


def read_ply(path: str | Path) -> PlyData:
    """Read a PLY file; raises InputError on a missing, malformed or truncated file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    with open(path, "rb") as f:
        fmt, elements, header_lines = _parse_header(f, path)
        body = f.read()
    if fmt == "ascii":
        return _read_ascii(body, elements, path, header_lines + 1)
    return _read_binary(body, elements, "<" if fmt == "binary_little_endian" else ">", path)


def _read_binary(body: bytes, elements: list[_Element], order: str, path: Path) -> PlyData:
    offset = 0
    data = PlyData(vertex={})
    for el in elements:
        dtype = np.dtype([(n, order + t) for n, t in el.props])
        if el.list_prop is None:
            need = dtype.itemsize * el.count
            if offset + need > len(body):
                raise InputError(
                    f"truncated PLY: element '{el.name}' needs {need} bytes, "
                    f"{max(len(body) - offset, 0)} left", path)
            arr = np.frombuffer(body, dtype=dtype, count=el.count, offset=offset)
            offset += need
            if el.name == "vertex":
                data.vertex = {n: arr[n].copy() for n, _ in el.props}
        else:
            faces, offset = _read_binary_lists(body, offset, el, order, path)
            if el.name == "face":
                data.faces = faces
    if offset < len(body):
        _warn_extra(path, elements, f"{len(body) - offset:,} bytes")
    return data


def _warn_extra(path: Path, elements: list[_Element], extra: str) -> None:
    """Data past the elements the header announces is most likely a wrong count: say so."""
    counts = ", ".join(f"{el.count:,} {el.name}" for el in elements) or "no elements"
    console.print(f"warning: {path}: the header announces {counts}, but {extra} follow them; "
                  "that data is ignored", markup=False, highlight=False, soft_wrap=True)


def _read_binary_lists(body: bytes, offset: int, el: _Element, order: str, path: Path):
    _, count_t, item_t = el.list_prop  # type: ignore[misc]
    prefix = np.dtype([(n, order + t) for n, t in el.props]).itemsize if el.props else 0
    count_size = np.dtype(count_t).itemsize
    item_size = np.dtype(item_t).itemsize
    # Fast path: no scalar properties and every list has 3 items (triangle meshes).
    if not el.props:
        row = np.dtype([("n", order + count_t), ("i", order + item_t, (3,))])
        need = row.itemsize * el.count
        if offset + need <= len(body):
            arr = np.frombuffer(body, dtype=row, count=el.count, offset=offset)
            if (arr["n"] == 3).all():
                return arr["i"].astype(np.int64), offset + need
    faces = []
    for _ in range(el.count):
        offset += prefix
        if offset + count_size > len(body):
            raise InputError(f"truncated PLY in element '{el.name}'", path)
        k = int(np.frombuffer(body, dtype=order + count_t, count=1, offset=offset)[0])
        offset += count_size
        if offset + k * item_size > len(body):
            raise InputError(f"truncated PLY in element '{el.name}'", path)
        idx = np.frombuffer(body, dtype=order + item_t, count=k, offset=offset)
        offset += k * item_size
        for j in range(1, k - 1):  # fan-triangulate polygons
            faces.append((idx[0], idx[j], idx[j + 1]))
    return np.asarray(faces, dtype=np.int64).reshape(-1, 3), offset


def _read_ascii(body: bytes, elements: list[_Element], path: Path, first_line: int) -> PlyData:
    lines = body.decode("ascii", errors="replace").splitlines()
    data = PlyData(vertex={})
    pos = 0
    for el in elements:
        rows = lines[pos:pos + el.count]
        if len(rows) < el.count:
            raise InputError(
                f"truncated PLY: element '{el.name}' has {len(rows)} of {el.count} rows", path)
        start = first_line + pos
        if el.list_prop is None:
            table = parse_table(rows, path, first_line=start) if rows else \
                np.zeros((0, len(el.props)))
            if len(table) != el.count:
                raise InputError(f"element '{el.name}' has blank lines among its {el.count} "
                                 "rows", path)
            if table.shape[1] < len(el.props):
                raise InputError(f"element '{el.name}' rows have {table.shape[1]} values, its "
                                 f"{len(el.props)} properties need as many", path, f"line {start}")
            if el.name == "vertex":
                data.vertex = {n: table[:, i].astype(t) for i, (n, t) in enumerate(el.props)}
        elif el.name == "face":
            data.faces = _ascii_faces(rows, len(el.props), path, start)
        pos += el.count
    extra = sum(1 for line in lines[pos:] if line.strip())
    if extra:
        _warn_extra(path, elements, f"{extra:,} more line(s)")
    return data


def _ascii_faces(rows: list[str], skip: int, path: Path, first_line: int) -> np.ndarray:
    """Fan-triangulated (F, 3) faces from ascii rows ``[scalars] k i1 ... ik``."""
    faces = []
    for lineno, row in enumerate(rows, first_line):
        try:
            values = [int(v) for v in row.split()[skip:]]
        except ValueError:
            raise InputError(f"face row '{row.strip()[:80]}' holds a value that is not a whole "
                             "number", path, f"line {lineno}") from None
        if not values or values[0] < 0 or len(values) < values[0] + 1:
            raise InputError(f"face row '{row.strip()[:80]}' does not hold a count and that "
                             "many vertex indices", path, f"line {lineno}")
        k, idx = values[0], values[1:]
        faces.extend((idx[0], idx[j], idx[j + 1]) for j in range(1, k - 1))
    return np.asarray(faces, dtype=np.int64).reshape(-1, 3)


def write_ply(path: str | Path, vertex: dict[str, np.ndarray], faces: np.ndarray | None = None,
              binary: bool = True) -> None:
    """Write vertex properties (name → 1-D array, all the same length) and optional triangles."""
    path = Path(path)
    names = list(vertex)
    n = len(vertex[names[0]])
    arrays = [np.asarray(vertex[k]) for k in names]
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
              f"element vertex {n}"]
    header += [f"property {_NAMES[a.dtype.str[1:]]} {k}" for k, a in zip(names, arrays)]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            table = np.empty(n, dtype=[(k, "<" + a.dtype.str[1:]) for k, a in zip(names, arrays)])
            for k, a in zip(names, arrays):
                table[k] = a
            f.write(table.tobytes())
            if faces is not None:
                rows = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
                rows["n"] = 3
                rows["i"] = faces
                f.write(rows.tobytes())
        else:
            cols = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
            for i in range(n):
                f.write((" ".join(str(c[i]) for c in cols) + "\n").encode("ascii"))
            if faces is not None:
                for tri in faces:
                    f.write(f"3 {tri[0]} {tri[1]} {tri[2]}\n".encode("ascii"))
