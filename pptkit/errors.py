"""Errors that the CLI turns into one clear line and exit code 2."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad input or bad usage: a file, key or option the user can fix.

    The message must name the file (and line or key) and say what is wrong; the CLI prints
    it as a single line and exits with code 2.
    """

    def __init__(self, message: str, path: str | Path | None = None, where: str | None = None):
        self.path = None if path is None else str(path)
        self.where = where
        prefix = ""
        if self.path is not None:
            prefix = self.path + (f":{where}" if where else "") + ": "
        super().__init__(prefix + message)
