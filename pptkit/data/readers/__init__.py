"""Dataset readers: list and read the scenes or objects of each supported dataset.

Every reader follows `DatasetReader`; `READERS` maps the CLI name to a reader instance.
"""

from __future__ import annotations

from pptkit.data.readers.base import DatasetReader
from pptkit.data.readers.generic import NpyFolderReader, PlyFolderReader
from pptkit.data.readers.modelnet import ModelNet40Reader
from pptkit.data.readers.pointcept import PointceptReader
from pptkit.data.readers.s3dis import S3DISReader
from pptkit.data.readers.scannet import ScanNetReader
from pptkit.data.readers.scanobjectnn import ScanObjectNNReader
from pptkit.errors import InputError

READERS: dict[str, DatasetReader] = {
    "scannet": ScanNetReader(),
    "s3dis": S3DISReader(),
    "structured3d": PointceptReader(),
    "modelnet40": ModelNet40Reader(),
    "scanobjectnn": ScanObjectNNReader(),
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
