"""Dataset readers: list and read the scenes or objects of each supported dataset.

Every reader follows `DatasetReader`; `READERS` maps the CLI name to a reader instance.
"""

from __future__ import annotations

from pptkit.data.readers.base import DatasetReader
from pptkit.data.readers.generic import NpyFolderReader, PlyFolderReader
from pptkit.data.readers.pointcept import PointceptReader
from pptkit.errors import InputError

READERS: dict[str, DatasetReader] = {
    "structured3d": PointceptReader(),
    "ply": PlyFolderReader(),
    "npy": NpyFolderReader(),
}


def get_reader(name: str) -> DatasetReader:
    """The reader registered as `name`; InputError listing the valid names otherwise."""
    try:
        return READERS[name]
    except KeyError:
        raise InputError(f"unknown dataset '{name}' (choose from: {', '.join(READERS)})") from None


__all__ = ["DatasetReader", "READERS", "get_reader"]
