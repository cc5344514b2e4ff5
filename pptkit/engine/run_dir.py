"""The run folder: lock, resolved config, metrics.jsonl, TensorBoard events, checkpoint paths.

Nothing is written until `start()`, which a stage calls after every input has been checked.
`start()` takes an exclusive lock (`RUN_DIR/.lock`, holding the owner's host and pid; a lock
whose process is gone is stale and taken over), so two runs can never share a folder.
A fresh run starts a fresh `metrics.jsonl`; a resumed one keeps the lines up to its
checkpoint's step and drops the rest (including a line torn by a kill).
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

from pptkit.errors import InputError
from pptkit.fileio import write_text_atomic


class RunDir:
    """Everything a training stage writes lives here; only the main process writes."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._tb = None
        self._locked = False

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    def check(self, resume: bool) -> None:
        """Refuse a folder this run cannot use, before anything is read or written."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError("--out names an existing file, not a run folder", self.path)
        if resume and not self.last.is_file():
            raise InputError("nothing to resume (no last.pt)", self.path)
        if not resume and self.last.is_file():
            raise InputError("run folder already holds a checkpoint: pass --resume, or choose another --out",
                             self.path)
        owner = self._lock_owner() if self.writer else None  # other ranks would see rank 0's lock
        if owner is not None:
            raise self._in_use(owner)

    def start(self, config_toml: str, resume_step: int | None) -> None:
        """Lock the folder, write `config.toml`, and start or truncate `metrics.jsonl`."""
        if not self.writer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        write_text_atomic(self.path / "config.toml", config_toml)
        metrics = self.path / "metrics.jsonl"
        if resume_step is None:
            metrics.unlink(missing_ok=True)  # lines of a run killed before its first checkpoint
        elif metrics.exists():
            write_text_atomic(metrics, "".join(line + "\n" for line in _lines_up_to(metrics, resume_step)))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))
        except ImportError:  # tensorboard is optional
            self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line (`step`, `epoch`, `split`, metrics) and mirror scalars to TensorBoard."""
        if not self.writer:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            split = record.get("split", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{split}/{key}", value, record.get("step", 0))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._locked:
            self.lock_file.unlink(missing_ok=True)
            self._locked = False

    def _lock(self) -> None:
        text = f"{socket.gethostname()} {os.getpid()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._lock_owner()
                if owner is not None:
                    raise self._in_use(owner)
                self.lock_file.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self._locked = True
            return
        raise InputError("could not lock the run folder (another run is starting in it)", self.path)

    def _in_use(self, owner: str) -> InputError:
        return InputError(f"run folder is in use by another pptkit run ({owner}); wait for it or "
                          "choose another --out", self.path)

    def _lock_owner(self) -> str | None:
        """'pid N on HOST' of a live run holding the lock, or None (no lock, or a stale one)."""
        try:
            host, pid = self.lock_file.read_text().split()
            pid_number = int(pid)
        except (FileNotFoundError, ValueError):
            return None
        if host != socket.gethostname():
            return f"pid {pid} on {host}"  # another machine's process: cannot check, assume alive
        if pid_number == os.getpid():
            return None
        try:
            os.kill(pid_number, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user
        return f"pid {pid}"


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The log's lines with `step` <= the checkpoint's; unparsable (torn) lines are dropped."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    return kept
