"""`pptkit synth`: write synthetic rooms (or shapes) in a dataset's own raw format.

Everything is written into a temporary folder next to `out`, which replaces `out` only
when complete, so an interrupted run leaves no half-written dataset behind. Every output
holds a MARKER file; `--overwrite` replaces only folders that have one (or empty ones).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pptkit import __version__
from pptkit.data.classes import MODELNET40
from pptkit.data.synth.objects import SHAPES, make_object
from pptkit.data.synth.scenes import make_scene, scene_rng
from pptkit.data.synth.styles import ALL_STYLES
from pptkit.data.synth import writers
from pptkit.errors import InputError
from pptkit.fileio import atomic_path, temporary_name
from pptkit.progress import track

OBJECT_POINTS = 2048
# Written into every synth output: the only folders that `synth --overwrite` replaces.
MARKER = ".pptkit-synth"
S3DIS_TRAIN_AREAS = (1, 2, 3, 4, 6)
VAL_AREA = 5


def is_val(index: int, count: int) -> bool:
    """Every fifth item is validation (test for objects); with fewer than five, the last."""
    return index % 5 == 4 or (count < 5 and index == count - 1)


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse to write over anything but an empty folder or (with `overwrite`) a folder that
    an earlier `synth` wrote: --overwrite must never delete a user's own files."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise InputError("output already exists and is not empty (pass --overwrite to replace "
                         "it)", out)
    if not out.is_dir():
        raise InputError("is a file, not a folder written by 'pptkit synth'; --overwrite only "
                         "replaces those", out)
    if not (out / MARKER).is_file():
        raise InputError(f"is not a folder written by 'pptkit synth' (it has no {MARKER} "
                         "file), so --overwrite will not delete it; remove it yourself or "
                         "choose another --out", out)


def _write_marker(folder: Path, style: str, scenes: int, seed: int) -> None:
    record = {"made_by": "pptkit synth", "style": style, "scenes": scenes, "seed": seed,
              "pptkit_version": __version__}
    (folder / MARKER).write_text(json.dumps(record) + "\n")


def run_synth(style: str, out: Path, scenes: int, seed: int, overwrite: bool) -> Path:
    """Write `scenes` rooms (or shapes per class for 'objects') of `style` into `out`."""
    if style not in ALL_STYLES:
        raise InputError(f"unknown style '{style}' (choose from: {', '.join(ALL_STYLES)})", where="--style")
    if scenes < 1:
        raise InputError(f"--scenes must be at least 1, got {scenes}", where="--scenes")
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stale = temporary_name(out)
    if stale.exists():
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    with atomic_path(out) as tmp:
        tmp.mkdir()
        _WRITE[style](tmp, scenes, seed)
        _write_marker(tmp, style, scenes, seed)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
    return out


def _scannet(root: Path, count: int, seed: int) -> None:
    train, val = [], []
    for i in track(range(count), "synth scannet"):
        name = f"scene{i:04d}_00"
        writers.write_scannet_scene(root, make_scene("scannet", i, seed, name))
        (val if is_val(i, count) else train).append(name)
    writers.write_scannet_meta(root, train, val)


def _s3dis(root: Path, count: int, seed: int) -> None:
    rooms_in_area: dict[tuple[int, str], int] = {}
    trained = 0
    for i in track(range(count), "synth s3dis"):
        if is_val(i, count):
            area = VAL_AREA
        else:
            area = S3DIS_TRAIN_AREAS[trained % len(S3DIS_TRAIN_AREAS)]
            trained += 1
        scene = make_scene("s3dis", i, seed, "")
        key = (area, scene.room_type)
        rooms_in_area[key] = rooms_in_area.get(key, 0) + 1
        writers.write_s3dis_room(root / f"Area_{area}" / f"{scene.room_type}_{rooms_in_area[key]}", scene)


def _structured3d(root: Path, count: int, seed: int) -> None:
    for i in track(range(count), "synth structured3d"):
        name = f"scene_{i:05d}_room_{1 + i % 7:05d}"
        split = "val" if is_val(i, count) else "train"
        writers.write_structured3d_scene(root / split / name, make_scene("structured3d", i, seed, name))


def _objects(root: Path, count: int, seed: int) -> None:
    train, test = [], []
    jobs = [(cls, i) for cls in sorted(SHAPES) for i in range(count)]
    for cls, i in track(jobs, "synth objects"):
        rng = scene_rng(seed, "objects", MODELNET40.index(cls) * 1_000_000 + i)
        coord, normal = make_object(cls, rng, OBJECT_POINTS)
        name = writers.write_modelnet_shape(root, cls, i + 1, coord, normal)
        (test if is_val(i, count) else train).append(name)
    writers.write_modelnet_meta(root, train, test)


_WRITE = {"scannet": _scannet, "s3dis": _s3dis, "structured3d": _structured3d, "objects": _objects}
