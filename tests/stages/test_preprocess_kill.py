"""`kill -9` of a real `pptkit preprocess` at many instants: resuming keeps every finished item
and ends with the file an uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pptkit.stages.preprocess as preprocess_module
from pptkit.stages.preprocess import PreprocessOptions, run_preprocess
from tests.stages.failing_reader import FailingReader
from tests.stages.test_preprocess import assert_same, h5_contents, pointcept_fixture

SCENES = 8
GRID = 0.05


class _Run:
    """`pptkit -v preprocess` in a subprocess; collects the items it reports finished."""

    def __init__(self, raw: Path, out: Path):
        self.finished: list[tuple[float, str]] = []  # (time, item) per "-v" line
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from pptkit.cli import main; main()", "--quiet", "-v",
             "preprocess", "--dataset", "structured3d", "--input", str(raw), "--split", "train",
             "--output", str(out), "--grid-size", str(GRID), "--resume"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # the line is printed once the item is safely stored
            if " points -> " in line:
                self.finished.append((time.monotonic(), line.split(": ", 1)[0]))

    def wait_finished(self, count: int) -> bool:
        """Wait until `count` items are reported (False if the run ended first)."""
        while len(self.finished) < count:
            if self.proc.poll() is not None:
                return False
            time.sleep(0.002)
        return True

    def kill(self) -> int:
        self.proc.kill()
        code = self.proc.wait()
        self._reader.join()
        return code


@pytest.mark.slow
def test_kill_at_many_instants_then_resume_matches_uninterrupted(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    pointcept_fixture(raw, scenes=SCENES, n=6000)
    reference = tmp_path / "reference.h5"
    run = _Run(raw, reference)
    assert run.proc.wait() == 0
    run._reader.join()
    expected = h5_contents(reference)
    assert len(run.finished) == SCENES
    times = [t for t, _ in run.finished]
    item_time = (times[-1] - times[0]) / (SCENES - 1)
    startup = times[0] - run.start

    converted: list[str] = []
    convert = preprocess_module._convert
    monkeypatch.setattr(preprocess_module, "_convert",
                        lambda job, item: converted.append(item) or convert(job, item))
    rng = np.random.default_rng(0)
    # (items reported before the kill's clock starts, delay): the start-up, every item, and
    # the end (merging into the output, the rename, removing the partial state).
    schedule = [(0, startup * f) for f in (0.2, 0.6, 0.95)]
    schedule += [(k, item_time * rng.uniform(0, 1)) for k in range(1, SCENES) for _ in range(2)]
    schedule += [(SCENES, item_time * f) for f in (0.0, 0.2, 0.5, 1.0, 2.0)]
    partial = 0
    for i, (count, delay) in enumerate(schedule):
        out = tmp_path / f"killed{i}.h5"
        run = _Run(raw, out)
        run.wait_finished(count)
        time.sleep(delay)
        code = run.kill()
        finished = {item for _, item in run.finished}
        partial += 0 < len(finished) < SCENES and code == -9
        if out.exists():  # killed after the output was renamed into place
            assert code in (0, -9)
        else:
            converted.clear()
            run_preprocess(PreprocessOptions(dataset="structured3d", input=raw, output=out,
                                             split="train", grid_size=GRID, resume=True))
            assert not finished & set(converted), (i, count, delay)  # nothing finished redone
            assert len(converted) <= SCENES - len(finished)
            assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(out.name)) \
                == [out.name], i  # no temporary or partial state left
        assert_same(h5_contents(out), expected)
    assert len(schedule) >= 20 and partial >= SCENES


def _session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_exit_quietly_when_the_parent_is_killed(tmp_path):
    raw = tmp_path / "raw"
    pointcept_fixture(raw, scenes=8, n=150_000)  # items long enough to be busy at the kill
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pptkit.cli import main; main()", "--quiet", "preprocess",
         "--dataset", "structured3d", "--input", str(raw), "--split", "train", "--output",
         str(tmp_path / "out.h5"), "--grid-size", "0.02", "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = proc.stderr.readline()  # "preprocess structured3d: 1/8": the workers are busy
        assert "1/8" in first, first
        workers = [pid for pid in _session_processes(proc.pid) if pid != proc.pid]
        assert len(workers) >= 2
        proc.kill()
        proc.wait()
        rest: list[str] = []
        reader = threading.Thread(target=lambda: rest.append(proc.stderr.read()), daemon=True)
        reader.start()  # ends when every process holding the pipe (the workers) has exited
        reader.join(timeout=20)
        deadline = time.monotonic() + 10
        while _session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # a worker that closed the pipe may still be exiting
        left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in
                _session_processes(proc.pid)}
        assert not reader.is_alive() and not left, left
        assert rest == [""] or "Traceback" not in rest[0] and "Error" not in rest[0], rest
        assert rest == [""] or "warn" not in rest[0], rest
    finally:
        for pid in _session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_worker_that_dies_or_raises_stops_the_run_with_a_reason():
    job = preprocess_module._Job(reader=FailingReader(), root=Path("."), strict=False,
                                 grid_size=0.1, num_points=0, seed=0)
    with pytest.raises(RuntimeError, match=r"worker \d died \(exit code 3"):
        list(preprocess_module._process(job, ["die", "die"], 2, lambda: None))
    with pytest.raises(ZeroDivisionError, match="bug on a") as err:
        list(preprocess_module._process(job, ["a", "b"], 2, lambda: None))
    assert "in read" in str(err.value.__cause__)  # the worker's traceback, for -v
