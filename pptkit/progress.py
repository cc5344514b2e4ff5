"""Progress reporting: a rich bar on a terminal, plain lines otherwise (or with --quiet)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

# User text (file names, class names, messages) prints literally: no markup, no highlighting,
# and long lines are never wrapped (a metrics line stays one line in a log file).
console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
stdout = Console(markup=False, highlight=False, soft_wrap=True)  # results (tables, paths) for pipes
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Force plain-line output (``--quiet``)."""
    global _quiet
    _quiet = quiet


def fancy() -> bool:
    """Whether to draw live bars: only on a terminal and when not quiet."""
    return not _quiet and sys.stderr.isatty()


def make_progress() -> Progress:
    """A rich Progress with the columns every pptkit loop uses."""
    return Progress(
        TextColumn("{task.description}", style="bold blue", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not fancy(),
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (or a plain line every few seconds when not on a terminal)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if fancy():
        with make_progress() as progress:
            task = progress.add_task(description, total=total, status="")
            for item in items:
                yield item
                progress.advance(task)
        return
    last = 0.0
    for i, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last > 5 or i == total:
            console.print(f"{description}: {i}/{total if total is not None else '?'}")
            last = now
