"""Shared fixtures: where the real-data samples live, and a CLI runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_sample(name: str) -> Path:
    """Path of a real-data sample under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real-data sample {path} is absent (see ../shared/data/README.md)")
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `pptkit ARGS` in a subprocess, capturing output; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-c", "from pptkit.cli import main; main()", "--quiet", *map(str, args)],
        capture_output=True, text=True, cwd=cwd,
    )


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread_for_shared_fixtures():
    """Module- and session-scoped fixtures (e.g. reference runs that a test compares bit for bit
    with its own) are built before function fixtures: give them the tests' one thread too."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run with one intra-op thread: small ops gain nothing from more, and on a busy
    2-core machine oversubscribed threads made steps 10-50x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
