"""A dataset reader that fails on purpose, for the preprocess worker tests (kept apart so that
the spawned workers that unpickle it import nothing heavy)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FailingReader:
    """Item "die" ends the worker process; any other item raises an unexpected error."""

    def read(self, root: Path, item: str, strict: bool = False):
        if item == "die":
            os._exit(3)
        raise ZeroDivisionError(f"bug on {item}")
