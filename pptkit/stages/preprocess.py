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
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

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
        console.print(f"resuming {parts.folder}: {len(items) - len(todo)} of "
                      f"{len(items)} items done")
    try:
        with _deferred_interrupt() as check_interrupt, \
                closing(_process(job, todo, opts.workers, check_interrupt)) as records:
            for item, record in track(records, f"preprocess {reader.name}", total=len(todo)):
                parts.add(item, record)
                if opts.verbose and isinstance(record, VoxelScene):
                    console.print(f"{item}: {len(record.inverse):,} points -> "
                                  f"{len(record.coord):,} voxels")
                check_interrupt()
        parts.merge(items, output, lambda names: track(names, f"merge {reader.name}"))
    except InputError as exc:
        if not parts.done:
            parts.remove()
            raise
        raise InputError(f"{exc}; the {len(parts.done)} finished item(s) are kept in "
                         f"{parts.folder}: fix the input and run again with --resume") from None
    except BaseException:
        if parts.done:
            console.print(f"partial output kept in {parts.folder}; run again with "
                          "--resume to continue")
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
                      highlight=False, soft_wrap=True)

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
    with _Workers(job, min(workers, len(items))) as pool:
        yield from pool.convert(items, check_interrupt)


class _Workers:
    """Spawned processes that convert items, each fed through its own pair of pipes.

    The pipes' other ends live only in this process, so a worker learns at once when the
    parent is gone (end of file, broken pipe) and exits without a word, as it also does when
    it sees its parent change; multiprocessing.Pool's workers instead print BrokenPipe
    tracebacks after a `kill -9` of the parent. A worker that dies (out of memory, say)
    stops the run with an error instead of leaving it waiting forever.
    """

    def __init__(self, job: _Job, count: int):
        context = multiprocessing.get_context("spawn")
        self.processes, self.tasks, self.results = [], [], []
        # Spawned children inherit an ignored SIGINT: Ctrl-C in the terminal reaches the
        # whole process group, and only this process decides what it means.
        ignore = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore else None
        try:
            for _ in range(count):
                task_out, task_in = context.Pipe(duplex=False)
                result_out, result_in = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(job, task_out, result_in,
                                                                os.getpid()), daemon=True)
                process.start()
                task_out.close()
                result_in.close()
                self.processes.append(process)
                self.tasks.append(task_in)
                self.results.append(result_out)
        except BaseException:
            self.close()
            raise
        finally:
            if ignore:
                signal.signal(signal.SIGINT, previous)

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (idle ones see their task pipe close; busy ones are ended)."""
        for connection in self.tasks + self.results:
            connection.close()
        for process in self.processes:
            process.join(timeout=0.2)
            if process.is_alive():
                process.terminate()
                process.join()

    def _exit_status(self, w: int) -> str:
        process = self.processes[w]
        process.join(timeout=5)
        if process.exitcode is None:
            return "it closed its pipe"
        if process.exitcode < 0:
            return f"killed by signal {-process.exitcode}"
        return f"exit code {process.exitcode}"

    def convert(self, items: list[str], check_interrupt: Callable[[], None]
                ) -> Iterator[tuple[str, VoxelScene | ObjectSample]]:
        """Results in item order. At most two tasks wait per worker, and at most two per
        worker run ahead of the next item due: results of big scenes must not pile up in
        memory while the main process compresses and writes."""
        window = 2 * len(self.processes)
        queued = [0] * len(self.processes)
        ready: dict[int, object] = {}
        submitted = done = 0
        while done < len(items):
            for w in range(len(self.processes)):
                while queued[w] < 2 and submitted < len(items) and submitted - done < window:
                    self.tasks[w].send((submitted, items[submitted]))
                    queued[w] += 1
                    submitted += 1
            while done not in ready:
                for connection in multiprocessing.connection.wait(self.results, timeout=0.2):
                    w = self.results.index(connection)
                    try:
                        index, outcome = connection.recv()
                    except EOFError:
                        raise RuntimeError(f"preprocess worker {w + 1} died ("
                                           f"{self._exit_status(w)}; out of memory?)") from None
                    queued[w] -= 1
                    ready[index] = outcome
                check_interrupt()
            outcome = ready.pop(done)
            done += 1
            if isinstance(outcome, _Failure):
                outcome.reraise()
            yield outcome


@dataclass
class _Failure:
    """An exception raised in a worker, with its traceback as text (for -v)."""

    error: BaseException
    traceback: str

    def reraise(self) -> None:
        if isinstance(self.error, InputError):
            raise self.error
        raise self.error from _WorkerTraceback(self.traceback)


class _WorkerTraceback(Exception):
    """The traceback of an exception in a worker process, as the cause of its re-raise."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def _worker(job: _Job, tasks, results, parent: int) -> None:
    """Convert items received on `tasks`, send (index, record or _Failure) on `results`."""
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    try:
        while True:
            index, item = tasks.recv()
            try:
                outcome = _convert(job, item)
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
                outcome = _Failure(_picklable(exc), traceback.format_exc())
            results.send((index, outcome))
    except (EOFError, OSError):  # the parent closed the pipes or is gone: nobody to tell
        pass


def _exit_when_orphaned(parent: int) -> None:
    """End this worker quietly once its parent is gone, even in the middle of an item."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _picklable(exc: Exception) -> Exception:
    """`exc` itself when it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _convert(job: _Job, item: str) -> tuple[str, VoxelScene | ObjectSample]:
    record = job.reader.read(job.root, item, strict=job.strict)
    if isinstance(record, PointObject):
        return item, sample_object(record, job.num_points, job.seed)
    try:
        return item, voxelize_scene(record, job.grid_size)
    except CoordinateRangeError as exc:
        raise InputError(str(exc), record.source or job.root / item) from None
