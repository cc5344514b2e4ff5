"""`pptkit preprocess`: read a dataset's raw items, voxelize (or resample) them, write one HDF5.

Workers (spawned processes: forking after open3d or torch were imported is unsafe) read and
voxelize items and send back arrays; only the main process writes. Output goes to a temporary
name and is renamed when every item is written. On Ctrl-C or a crash the temporary file stays
so that `--resume` can continue it; on bad input it is removed.
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

from pptkit.data.readers import DatasetReader, get_reader
from pptkit.data.store import (
    ObjectSample,
    StoreMeta,
    VoxelScene,
    complete_groups,
    group_name,
    open_store,
    sample_object,
    voxelize_scene,
    write_meta,
    write_object,
    write_scene,
)
from pptkit.data.types import PointObject
from pptkit.errors import InputError
from pptkit.fileio import check_output, temporary_name
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

    tmp = temporary_name(output)
    f, done = _open_output(tmp, meta, opts.resume)
    todo = [item for item in items if group_name(item) not in done]
    if done:
        console.print(f"resuming {tmp}: {len(items) - len(todo)} of {len(items)} items done",
                      soft_wrap=True)
    try:
        with f, _deferred_interrupt() as check_interrupt, \
                closing(_process(job, todo, opts.workers, check_interrupt)) as records:
            for item, record in track(records, f"preprocess {reader.name}", total=len(todo)):
                if isinstance(record, VoxelScene):
                    write_scene(f, item, record)
                    if opts.verbose:
                        console.print(f"{item}: {len(record.inverse):,} points -> "
                                      f"{len(record.coord):,} voxels", soft_wrap=True)
                else:
                    write_object(f, item, record)
                f.flush()
                check_interrupt()
    except InputError:
        tmp.unlink(missing_ok=True)
        raise
    except BaseException:
        console.print(f"partial output kept in {tmp}; run again with --resume to continue",
                      soft_wrap=True)
        raise
    os.replace(tmp, output)
    return output


def _check_unique_groups(items: list[str], root: Path) -> None:
    seen: dict[str, str] = {}
    for item in items:
        name = group_name(item)
        if name in seen:
            raise InputError(f"items '{seen[name]}' and '{item}' map to the same HDF5 group "
                             f"'{name}'; rename one", root)
        seen[name] = item


def _open_output(tmp: Path, meta: StoreMeta, resume: bool):
    """(h5py.File, names of finished groups): the temporary file continued or started anew."""
    import h5py

    if resume and tmp.exists():
        f, old = open_store(tmp, "a")
        differences = meta.differences(old)
        if differences:
            f.close()
            raise InputError(
                f"cannot resume: the unfinished file was made with different settings "
                f"({', '.join(differences)}); run without --resume to start over", tmp)
        done = set(complete_groups(f))
        for name in [n for n in f if n not in done]:  # half-written groups are redone
            del f[name]
        return f, done
    f = h5py.File(tmp, "w")
    write_meta(f, meta)
    return f, set()


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
    return item, voxelize_scene(record, job.grid_size)
