"""Checkpoints are written atomically and read back with weights_only (no arbitrary unpickling)."""

import pickle

import pytest
import torch

from pptkit.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from pptkit.errors import InputError


def test_round_trip_of_plain_containers(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3, "best": float("-inf"),
             "history": [{"loss": 1.5}], "torch_rng": torch.get_rng_state(), "names": ["a", "b"]}
    save_checkpoint(tmp_path / "last.pt", state)
    assert not (tmp_path / "last.pt.tmp").exists()
    back = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["epoch"] == 3 and back["history"] == [{"loss": 1.5}] and back["names"] == ["a", "b"]


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path, pickle_module=pickle)
    with pytest.raises(InputError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message == f"{path}: not a pptkit checkpoint (it holds Python objects other than tensors and " \
                      "plain containers); it was not loaded"
    assert "weights_only=False" not in message and "\n" not in message


def test_a_corrupt_file_is_one_line(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match="not a readable pptkit checkpoint") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_run_folder_prefers_best_then_last(tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        find_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "last.pt", {"a": 1})
    assert find_checkpoint(tmp_path).name == "last.pt"
    save_checkpoint(tmp_path / "best.pt", {"a": 1})
    assert find_checkpoint(tmp_path).name == "best.pt"
    with pytest.raises(InputError, match="not found"):
        find_checkpoint(tmp_path / "missing.pt")
