"""Small preprocessed datasets of the three synthetic scene styles, built once per session
through the real path: `synth` (native raw files) -> readers -> `preprocess` (HDF5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pptkit.stages.preprocess import PreprocessOptions, run_preprocess
from pptkit.stages.synth import run_synth

STYLES = ("structured3d", "scannet", "s3dis")

# A model small enough that a step takes well under a second on one CPU thread.
TINY = [
    "model.base_channels=8", "model.channels=[8,16,16,16,16,16,8,8]", "model.layers=[1,1,1,1,1,1,1,1]",
    "model.context_channels=16", "data.grid_size=0.1", "data.point_max=20000", "data.batch_size=1",
    "data.num_workers=0", "train.log_every=1",
]


@pytest.fixture(scope="session")
def style_data(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{style: {"train": h5, "val": h5}} with 5 rooms per style (4 train, 1 val)."""
    root = tmp_path_factory.mktemp("styles")
    files: dict[str, dict[str, Path]] = {}
    for style in STYLES:
        raw = run_synth(style=style, out=root / "raw" / style, scenes=5, seed=0, overwrite=False)
        files[style] = {}
        for split in ("train", "val"):
            out = root / f"{style}_{split}.h5"
            run_preprocess(PreprocessOptions(dataset=style, input=raw, output=out, split=split, grid_size=0.05))
            files[style][split] = out
    return files


def data_args(files: dict[str, dict[str, Path]], split: str, option: str = "--data") -> list[str]:
    """`--data NAME=PATH` pairs for every style, as CLI arguments."""
    args: list[str] = []
    for style, paths in files.items():
        args += [option, f"{style}={paths[split]}"]
    return args
