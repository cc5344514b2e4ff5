"""Checkpoints: plain tensors and containers only, written atomically, read with weights_only."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pptkit.errors import InputError
from pptkit.fileio import temporary_name


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's entries in sorted key order: name, dtype, shape and bytes (what
    a run records of the weights it was given, to refuse a resume with other ones)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` under a temporary name, then rename (a crash never leaves half a file)."""
    path = Path(path)
    tmp = temporary_name(path)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused a Python object: possibly malicious, so never retry without it.
        raise InputError("not a pptkit checkpoint (it holds Python objects other than tensors and "
                         "plain containers); it was not loaded", path)
    except Exception as exc:  # noqa: BLE001 - any failure to read is bad input here
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"not a readable pptkit checkpoint ({type(exc).__name__}: {first_line})", path)


def find_checkpoint(path: str | Path, prefer: tuple[str, ...] = ("best.pt", "last.pt")) -> Path:
    """A checkpoint file itself, or the preferred one inside a run folder."""
    path = Path(path)
    if path.is_dir():
        for name in prefer:
            if (path / name).is_file():
                return path / name
        raise InputError(f"no checkpoint ({' or '.join(prefer)}) in run folder", path)
    if not path.exists():
        raise InputError("checkpoint or run folder not found", path)
    return path
