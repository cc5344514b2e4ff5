"""Text tables of numbers (one row a line), read fast, with errors that name the bad line."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from pptkit.errors import InputError


def parse_table(lines: str | list[str], path: str | Path, delimiter: str | None = None,
                first_line: int = 1) -> np.ndarray:
    """The (N, C) float64 rows of `lines` (a text, or its lines; blank lines skipped), every
    row C numbers.

    NumPy's C parser reads well-formed tables in one pass; only when it fails are the lines
    scanned one by one to report the first bad one as InputError ``path:line K`` (`first_line`
    is the file line of the first line), in words rather than NumPy's parser hints.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            return np.loadtxt(io.StringIO(lines) if isinstance(lines, str) else lines,
                              dtype=np.float64, ndmin=2, delimiter=delimiter, comments=None)
    except ValueError:
        pass
    width = None
    for lineno, line in enumerate(lines.splitlines() if isinstance(lines, str) else lines,
                                  first_line):
        words = [w.strip() for w in line.split(delimiter)]
        if not line.strip():
            continue
        for word in words:
            try:
                float(word)
            except ValueError:
                raise InputError(f"'{word[:40]}' is not a number", path,
                                 f"line {lineno}") from None
        if width is None:
            width = len(words)
        elif len(words) != width:
            raise InputError(f"{len(words)} values where the lines above have {width}", path,
                             f"line {lineno}")
    raise InputError("cannot be read as a table of numbers", path)
