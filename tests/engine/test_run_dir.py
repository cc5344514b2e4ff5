"""The run folder: nothing written before start(), an exclusive lock, a log that matches the checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pptkit.engine.run_dir import RunDir
from pptkit.errors import InputError


def test_nothing_is_written_before_start(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check(resume=False)
    assert not (tmp_path / "run").exists()
    run.start("a = 1\n", resume_step=None)
    assert (tmp_path / "run" / "config.toml").read_text() == "a = 1\n"
    assert (tmp_path / "run" / ".lock").is_file()
    run.close()
    assert not (tmp_path / "run" / ".lock").exists()


def test_out_naming_a_file_is_refused(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(InputError, match="names an existing file"):
        RunDir(path).check(resume=False)


def test_a_live_owner_keeps_the_folder_and_a_stale_lock_is_taken_over(tmp_path):
    run_path = tmp_path / "run"
    run_path.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_path / ".lock").write_text(f"{socket.gethostname()} {owner.pid}\n")
        with pytest.raises(InputError, match=f"in use by another pptkit run \\(pid {owner.pid}\\)"):
            RunDir(run_path).check(resume=False)
        with pytest.raises(InputError, match="in use by another pptkit run"):
            RunDir(run_path).start("", resume_step=None)
    finally:
        owner.kill()
        owner.wait()
    # The owner is gone: its lock is stale and the next run takes the folder.
    run = RunDir(run_path)
    run.check(resume=False)
    run.start("", resume_step=None)
    assert (run_path / ".lock").read_text().split() == [socket.gethostname(), str(os.getpid())]
    run.close()


def test_a_fresh_run_starts_a_fresh_log(tmp_path):
    run_path = tmp_path / "run"
    run_path.mkdir()
    (run_path / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n')  # a run killed early
    run = RunDir(run_path)
    run.start("", resume_step=None)
    run.log({"step": 1, "split": "train", "loss": 1.0})
    run.close()
    lines = (run_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines] == [1.0]


def test_resume_truncates_to_the_checkpoint_and_tolerates_a_torn_line(tmp_path):
    run_path = tmp_path / "run"
    run_path.mkdir()
    lines = [json.dumps({"step": s, "split": "train"}) for s in (1, 2, 3, 4)]
    (run_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "spl')
    run = RunDir(run_path)
    run.start("", resume_step=2)
    run.close()
    assert (run_path / "metrics.jsonl").read_text().splitlines() == lines[:2]
