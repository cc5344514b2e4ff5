"""`pptkit synth --overwrite` replaces only folders that synth wrote."""

from __future__ import annotations

import json

from pptkit.stages.synth import MARKER
from tests.conftest import run_cli


def synth(out, *extra):
    return run_cli("synth", "--style", "objects", "--out", out, "--scenes", "1", *extra)


def test_overwrite_replaces_only_synth_outputs(tmp_path):
    mine = tmp_path / "[my]data"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    result = synth(mine, "--overwrite")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{mine}: is not a folder written by 'pptkit synth'" in lines[0]
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name]  # no temporary left

    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    result = synth(afile, "--overwrite")
    assert result.returncode == 2 and "is a file" in result.stderr and afile.read_text() == "keep"

    out = tmp_path / "synth"
    assert synth(out).returncode == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker == {"made_by": "pptkit synth", "style": "objects", "scenes": 1, "seed": 0,
                      "pptkit_version": marker["pptkit_version"]}
    result = synth(out)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    (out / "chair" / "extra.txt").write_text("stale")
    assert synth(out, "--overwrite", "--seed", "3").returncode == 0
    assert not (out / "chair" / "extra.txt").exists()
    assert json.loads((out / MARKER).read_text())["seed"] == 3

    empty = tmp_path / "empty"
    empty.mkdir()
    assert synth(empty, "--overwrite").returncode == 0 and (empty / MARKER).is_file()
