"""The run folder: resolved config, metrics.jsonl, TensorBoard events, checkpoint paths."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pptkit.fileio import write_text_atomic


class RunDir:
    """Everything a training stage writes lives here; only the main process writes."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._tb = None
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path / "tb"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def write_config(self, toml_text: str) -> None:
        if self.writer:
            write_text_atomic(self.path / "config.toml", toml_text)

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
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{split}/{key}", value, record.get("step", 0))

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log matches an uninterrupted run."""
        path = self.path / "metrics.jsonl"
        if not self.writer or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
