"""`pptkit preprocess`: read a dataset's raw items, voxelize (or resample) them, write one HDF5.

Workers (spawned processes: forking after open3d or torch were imported is unsafe) read and
voxelize items and send back arrays; only the main process writes. Each finished item is kept
as a shard in ``<output>.parts/`` (see pptkit.data.parts), and the shards are merged into the
output when every item is done. A run stopped at any instant (Ctrl-C, kill -9, a crash, a bad
input file) keeps every finished item, and `--resume` continues from them; nothing is written
before the first item is finished.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from itertools import islice
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from pptkit.data.parts import PartialStore, parts_folder
from pptkit.data.readers import DatasetReader, get_reader
from pptkit.data.store import (
    ObjectSample,
    StoreMeta,
    VoxelScene,
    group_name,
    sample_object,
    voxelize_scene,
)
from pptkit.data.types import PointObject
from pptkit.data.voxelize import CoordinateRangeError
from pptkit.errors import InputError
from pptkit.fileio import check_output
from pptkit.progress import console, track

# Points kept per object (the usual setting of each benchmark); other object datasets: 8192.
OBJECT_POINTS: dict[str, int] = {"modelnet40": 8192, "scanobjectnn": 2048}
DEFAULT_OBJECT_POINTS = 8192


@dataclass
class PreprocessOptions:
    """Options of `pptkit preprocess` (see the CLI's help for each)."""

    dataset: str
    input: Path
    output: Path
    split: str | None = None
    grid_size: float = 0.02
    workers: int = 1
    resume: bool = False
    strict: bool = False
    seed: int = 0
    overwrite: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class _Job:
    """What a worker needs to turn one item into arrays (picklable)."""

    reader: DatasetReader
    root: Path
    strict: bool
    grid_size: float
    num_points: int
    seed: int


def run_preprocess(opts: PreprocessOptions) -> Path:
    """Preprocess `opts.input` into the HDF5 file `opts.output`; returns the output path."""
    if not opts.grid_size > 0:
        raise InputError(f"--grid-size must be positive, got {opts.grid_size}")
    if opts.workers < 1:
        raise InputError(f"--workers must be at least 1, got {opts.workers}")
    output = check_output(opts.output, opts.overwrite)
    reader = get_reader(opts.dataset)
    split = opts.split if opts.split is not None else reader.default_split
    items = reader.items(Path(opts.input), split)
    if not items:
        raise InputError("no items to preprocess", opts.input)
    _check_unique_groups(items, Path(opts.input))
    object_points = OBJECT_POINTS.get(reader.name, DEFAULT_OBJECT_POINTS)
    meta = StoreMeta(
        dataset=reader.name, class_names=tuple(reader.classes(Path(opts.input))),
        grid_size=float(opts.grid_size), kind=reader.kind, split=split or "",
        source=str(Path(opts.input).resolve()), seed=opts.seed,
        num_points=object_points if reader.kind == "object" else 0,
    )
    job = _Job(reader=reader, root=Path(opts.input), strict=opts.strict,
               grid_size=float(opts.grid_size), num_points=meta.num_points, seed=opts.seed)

    parts = PartialStore.open(parts_folder(output), meta, opts.resume)
    todo = [item for item in items if group_name(item) not in parts.done]
    if parts.done:
        console.print(f"resuming {escape(str(parts.folder))}: {len(items) - len(todo)} of "
                      f"{len(items)} items done", highlight=False, soft_wrap=True)
    try:
        with _deferred_interrupt() as check_interrupt, \
                closing(_process(job, todo, opts.workers, check_interrupt)) as records:
            for item, record in track(records, f"preprocess {reader.name}", total=len(todo)):
                parts.add(item, record)
                if opts.verbose and isinstance(record, VoxelScene):
                    console.print(f"{escape(item)}: {len(record.inverse):,} points -> "
                                  f"{len(record.coord):,} voxels", highlight=False,
                                  soft_wrap=True)
                check_interrupt()
        parts.merge(items, output, lambda todo: track(todo, f"merge {reader.name}"))
    except InputError as exc:
        if not parts.done:
            parts.remove()
            raise
        raise InputError(f"{exc}; the {len(parts.done)} finished item(s) are kept in "
                         f"{parts.folder}: fix the input and run again with --resume") from None
    except BaseException:
        if parts.done:
            console.print(f"partial output kept in {escape(str(parts.folder))}; run again with "
                          "--resume to continue", highlight=False, soft_wrap=True)
        raise
    return output


def _check_unique_groups(items: list[str], root: Path) -> None:
    seen: dict[str, str] = {}
    for item in items:
        name = group_name(item)
        if name in seen:
            raise InputError(f"items '{seen[name]}' and '{item}' map to the same HDF5 group "
                             f"'{name}'; rename one", root)
        seen[name] = item


@contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], None]]:
    """Turn the first Ctrl-C into a flag that the returned check raises between items.

    An interrupt landing inside h5py or multiprocessing code can be swallowed there, or
    leave a group half-written; deferring it stops the run cleanly after the item in hand.
    A second Ctrl-C interrupts at once.
    """
    interrupted: list[int] = []

    def on_interrupt(signum, frame) -> None:
        interrupted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        console.print("interrupted: stopping after the current item (Ctrl-C again to stop now)",
                      soft_wrap=True)

    def check() -> None:
        if interrupted:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


def _process(job: _Job, items: list[str], workers: int, check_interrupt: Callable[[], None]
             ) -> Iterator[tuple[str, VoxelScene | ObjectSample]]:
    """(item, record) for every item in order, computed here or in `workers` processes."""
    if workers == 1 or len(items) <= 1:
        for item in items:
            yield _convert(job, item)
        return
    workers = min(workers, len(items))
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_ignore_interrupts) as pool:
        # A bounded window of submitted items: results of big scenes must not pile up in
        # memory while the main process compresses and writes.
        queue = iter(items)
        pending = deque(pool.apply_async(_convert, (job, item))
                        for item in islice(queue, 2 * workers))
        while pending:
            while not pending[0].ready():
                pending[0].wait(0.2)
                check_interrupt()
            result = pending.popleft().get()
            for item in islice(queue, 1):
                pending.append(pool.apply_async(_convert, (job, item)))
            yield result


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the main process, which stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _convert(job: _Job, item: str) -> tuple[str, VoxelScene | ObjectSample]:
    record = job.reader.read(job.root, item, strict=job.strict)
    if isinstance(record, PointObject):
        return item, sample_object(record, job.num_points, job.seed)
    try:
        return item, voxelize_scene(record, job.grid_size)
    except CoordinateRangeError as exc:
        raise InputError(str(exc), record.source or job.root / item) from None
