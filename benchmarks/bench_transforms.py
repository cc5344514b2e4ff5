"""Training transforms on one 200k-point room: time per transform, whole chain, and elastic vs reference.

The room is what the training loader hands over: a furnished box room (floor, ceiling, walls,
box furniture, 2 mm scanner noise, per-surface colours, normals, labels and instance ids)
sampled densely and averaged per 2 cm voxel (pptkit voxelize + voxel_mean), as the store keeps
scenes; then exactly `--points` voxels are drawn. (pptkit.data.synth was not committed when this
was written, so the generator lives here.)

Timings:
- "recipe chain": `train_transforms()` as configured (augmentations fire with the recipe's
  probabilities), one fresh Generator per run; per-step medians are over those runs, so a step
  that rarely fires (RandomDropout, p = 0.2) shows its skip cost.
- "all applied": the same chain with every probability set to 1, the worst case per room.
- elastic distortion: ours against a faithful reference written below as a user would run it
  (Gaussian noise grid, three separable `scipy.ndimage.convolve` box blurs applied twice,
  `scipy.interpolate.RegularGridInterpolator` at every point; granularity 0.2 then 0.8), with the
  root-mean-square displacement of each for the magnitude check.

- training-step share: one forward + backward of the paper-scale SparseUNet (pptkit default,
  39 M parameters, torch backend) on the chain's output for this room, and the chain's time as a
  share of (chain + step). The requirement is under 20%.

Run: python benchmarks/bench_transforms.py [--repeats 11] [--points 200000]
Writes benchmarks/results/transforms.md and transforms.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import convolve

import torch

from pptkit.fileio import write_text_atomic
from pptkit.data import transforms as T
from pptkit.data.voxelize import voxel_mean, voxelize

GRID_SIZE = 0.02
ELASTIC_PARAMS = ((0.2, 0.4), (0.8, 1.6))
CHAIN_TARGET_MS = 110.0
RESULTS = Path(__file__).resolve().parent / "results"


def room_scene(num_points: int, seed: int = 0) -> dict:
    """A voxelised furnished room with exactly `num_points` rows, as the training loader yields."""
    rng = np.random.default_rng(seed)
    # About 2.5 voxels of surface per wanted point fill this room's 2 cm voxels densely enough.
    scale = np.sqrt(num_points / 200_000)
    size = np.array([5.0 * scale, 4.0 * scale, 2.8])
    faces, labels = [], []  # (origin, edge u, edge v, outward normal), semantic class
    for origin, u, v, normal in _box_faces(np.zeros(3), size, bottom=True, inward=True):
        faces.append((origin, u, v, normal))
        labels.append(1 if normal[2] > 0.5 else (0 if abs(normal[2]) < 0.5 else 2))  # wall/floor/ceiling
    instance_of_face = [-1] * len(faces)
    for k in range(int(6 * scale * scale)):
        box = rng.uniform([0.4, 0.4, 0.4], [2.0, 1.2, 1.8])
        corner = np.append(rng.uniform(0, size[:2] - box[:2]), 0.0)
        for face in _box_faces(corner, box, bottom=False, inward=False):
            faces.append(face)
            labels.append(3 + k % 5)
            instance_of_face.append(k)
    origin, u, v, normal = (np.array(x) for x in zip(*faces))
    area = np.linalg.norm(np.cross(u, v), axis=1)
    num_raw = int(num_points * 3)
    face = rng.choice(len(area), size=num_raw, p=area / area.sum())
    s, t = rng.random((2, num_raw, 1))
    coord = origin[face] + s * u[face] + t * v[face] + rng.normal(0, 0.002, (num_raw, 3))
    base_colour = rng.integers(40, 220, (len(area), 3))
    colour = np.clip(base_colour[face] + rng.normal(0, 12, (num_raw, 3)), 0, 255)

    vox = voxelize(coord.astype(np.float32), GRID_SIZE)
    if vox.num_voxels < num_points:
        raise RuntimeError(f"room has {vox.num_voxels} voxels, fewer than {num_points}")
    rep = vox.index  # labels and normals of each voxel's first point
    keep = np.sort(rng.choice(vox.num_voxels, num_points, replace=False))
    return {
        "coord": voxel_mean(vox, coord)[keep].astype(np.float32),
        "grid_coord": vox.grid_coord[keep],
        "color": np.rint(voxel_mean(vox, colour)[keep]).astype(np.uint8),
        "normal": normal[face[rep]][keep].astype(np.float32),
        "segment": np.asarray(labels, dtype=np.int16)[face[rep]][keep],
        "instance": np.asarray(instance_of_face, dtype=np.int32)[face[rep]][keep],
        "name": f"bench_room_{seed}",
    }


def _box_faces(corner: np.ndarray, size: np.ndarray, bottom: bool, inward: bool) -> list[tuple]:
    """Faces (origin, u, v, normal) of an axis-aligned box; normals point out (or in, for a room)."""
    ex, ey, ez = np.diag(size)
    sign = -1.0 if inward else 1.0
    faces = [
        (corner + ez, ex, ey, sign * np.array([0, 0, 1.0])),
        (corner, ex, ez, sign * np.array([0, -1.0, 0])), (corner + ey, ex, ez, sign * np.array([0, 1.0, 0])),
        (corner, ey, ez, sign * np.array([-1.0, 0, 0])), (corner + ex, ey, ez, sign * np.array([1.0, 0, 0])),
    ]
    if bottom:
        faces.append((corner, ex, ey, sign * np.array([0, 0, -1.0])))
    return faces


def reference_elastic(coord: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Elastic distortion as the reference implements it: ndimage.convolve blurs, RegularGridInterpolator."""
    coord = coord.copy()
    blur_x = np.ones((3, 1, 1, 1), dtype=np.float32) / 3
    blur_y = np.ones((1, 3, 1, 1), dtype=np.float32) / 3
    blur_z = np.ones((1, 1, 3, 1), dtype=np.float32) / 3
    for granularity, magnitude in ELASTIC_PARAMS:
        low = coord.min(0)
        noise_dim = ((coord - low).max(0) // granularity).astype(int) + 3
        noise = rng.standard_normal((*noise_dim, 3)).astype(np.float32)
        for _ in range(2):
            noise = convolve(noise, blur_x, mode="constant", cval=0)
            noise = convolve(noise, blur_y, mode="constant", cval=0)
            noise = convolve(noise, blur_z, mode="constant", cval=0)
        axes = [np.linspace(a, b, d) for a, b, d in
                zip(low - granularity, low + granularity * (noise_dim - 2), noise_dim)]
        interp = RegularGridInterpolator(axes, noise, bounds_error=False, fill_value=0)
        coord += interp(coord) * magnitude
    return coord


def always_applied_chain(grid_size: float, point_max: int) -> T.Compose:
    """train_transforms with every probability at 1: the most work one room can cost."""
    return T.Compose([
        T.CenterShift(apply_z=True),
        T.RandomDropout(dropout_ratio=0.2, dropout_application_ratio=1.0),
        T.RandomRotate(angle=(-1.0, 1.0), axis="z", center=(0.0, 0.0, 0.0), always_apply=True),
        T.RandomRotate(angle=(-1 / 64, 1 / 64), axis="x", always_apply=True),
        T.RandomRotate(angle=(-1 / 64, 1 / 64), axis="y", always_apply=True),
        T.RandomScale(scale=(0.9, 1.1)),
        T.RandomFlip(p=1.0),
        T.RandomJitter(sigma=0.005, clip=0.02),
        T.ElasticDistortion(distortion_params=ELASTIC_PARAMS, p=1.0),
        T.ChromaticAutoContrast(p=1.0, blend_factor=None),
        T.ChromaticTranslation(p=1.0, ratio=0.05),
        T.ChromaticJitter(p=1.0, std=0.05),
        T.GridSample(grid_size=grid_size),
        T.SphereCrop(point_max=point_max, mode="random"),
        T.CenterShift(apply_z=False),
        T.NormalizeColor(),
    ])


def time_chain(chain: T.Compose, scene: dict, repeats: int) -> tuple[list[float], list[float]]:
    """(per-step median ms, per-run total ms) over `repeats` runs with Generators seeded 0..repeats-1."""
    steps = np.zeros((repeats, len(chain.transforms)))
    for run in range(repeats):
        rng = np.random.default_rng(run)
        data = scene
        for k, transform in enumerate(chain.transforms):
            start = time.perf_counter()
            data = transform(data, rng)
            steps[run, k] = time.perf_counter() - start
    return list(1000 * np.median(steps, axis=0)), list(1000 * steps.sum(axis=1))


def time_elastic(scene: dict, repeats: int) -> dict:
    ours, ref, ours_rms, ref_rms = [], [], [], []
    elastic = T.ElasticDistortion(distortion_params=ELASTIC_PARAMS, p=1.0)
    coord = T.CenterShift(apply_z=True)(scene, np.random.default_rng(0))["coord"]
    for run in range(repeats):
        start = time.perf_counter()
        warped = elastic({"coord": coord}, np.random.default_rng(run))["coord"]
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        warped_ref = reference_elastic(coord, np.random.default_rng(run))
        ref.append(time.perf_counter() - start)
        ours_rms.append(np.sqrt(np.mean(np.sum((warped - coord) ** 2, axis=1))))
        ref_rms.append(np.sqrt(np.mean(np.sum((warped_ref - coord) ** 2, axis=1))))
    ours_ms, ref_ms = 1000 * float(np.median(ours)), 1000 * float(np.median(ref))
    return {
        "ours_ms": round(ours_ms, 1), "reference_ms": round(ref_ms, 1),
        "speedup": round(ref_ms / ours_ms, 2),
        "ours_rms_displacement_m": round(float(np.mean(ours_rms)), 4),
        "reference_rms_displacement_m": round(float(np.mean(ref_rms)), 4),
    }


def time_training_step(sample: dict, repeats: int) -> float:
    """Median ms of one forward + backward of the default SparseUNet on a transformed room."""
    from pptkit.engine.batch import FEATURE_CHANNELS, collate
    from pptkit.models.sparse_unet import SparseUNet

    torch.manual_seed(0)
    model = SparseUNet(FEATURE_CHANNELS, 20)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        batch = collate([sample], 0, torch.device("cpu"))
        out = model(batch.input)
        torch.nn.functional.cross_entropy(out.logits[batch.inverse], batch.target.clamp(min=0)).backward()
        model.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def markdown(result: dict) -> str:
    meta, el = result["meta"], result["elastic"]
    recipe, forced = result["recipe_chain"], result["all_applied_chain"]
    lines = [
        f"# Training transforms on a {meta['points']:,}-point room",
        "",
        f"Median of {meta['repeats']} runs; {meta['machine']}; numpy {meta['numpy']}, scipy {meta['scipy']}. "
        f"Grid {meta['grid_size']} m, SphereCrop {meta['point_max']:,} points.",
        "",
        "| transform | recipe chain ms | all applied ms |",
        "|---|---:|---:|",
    ]
    for name, a, b in zip(result["steps"], recipe["step_ms"], forced["step_ms"]):
        lines.append(f"| {name} | {a:.1f} | {b:.1f} |")
    lines += [
        f"| **whole chain (median of totals)** | **{recipe['total_ms']:.1f}** | **{forced['total_ms']:.1f}** |",
        "",
        f"Target: whole chain under {CHAIN_TARGET_MS:.0f} ms per room "
        f"({'met' if forced['total_ms'] < CHAIN_TARGET_MS else 'NOT met'} even with every augmentation applied).",
        "",
        "## Elastic distortion (granularity 0.2 then 0.8) vs the reference implementation",
        "",
        "| implementation | ms | RMS displacement (m) |",
        "|---|---:|---:|",
        f"| reference (ndimage.convolve + RegularGridInterpolator) | {el['reference_ms']:.1f} | "
        f"{el['reference_rms_displacement_m']:.4f} |",
        f"| pptkit (uniform_filter1d + vectorised float32 trilinear) | {el['ours_ms']:.1f} | "
        f"{el['ours_rms_displacement_m']:.4f} |",
        "",
        f"Speed-up {el['speedup']:.2f}x.",
        "",
        "## Share of a training step",
        "",
        f"One forward + backward of the default SparseUNet (39 M parameters, torch backend) on this "
        f"room after the chain ({result['step']['voxels']:,} voxels): {result['step']['ms']:.0f} ms "
        f"(median of {result['step']['repeats']}, torch {result['step']['torch']}, "
        f"{result['step']['threads']} threads). The recipe chain is "
        f"**{100 * result['step']['chain_share']:.1f}%** of chain + step (requirement: under 20%).",
    ]
    return "\n".join(lines) + "\n"



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--point-max", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--step-repeats", type=int, default=3, help="training steps to time")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")

    scene = room_scene(args.points)
    recipe = T.train_transforms(grid_size=GRID_SIZE, point_max=args.point_max)
    forced = always_applied_chain(GRID_SIZE, args.point_max)
    recipe(scene, np.random.default_rng(12345))  # warm-up
    recipe_steps, recipe_totals = time_chain(recipe, scene, args.repeats)
    forced_steps, forced_totals = time_chain(forced, scene, args.repeats)
    names = [type(t).__name__ for t in recipe.transforms]
    result = {
        "meta": {"points": args.points, "point_max": args.point_max, "repeats": args.repeats,
                 "grid_size": GRID_SIZE, "numpy": np.__version__, "scipy": scipy.__version__,
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"},
        "steps": names,
        "recipe_chain": {"step_ms": [round(x, 2) for x in recipe_steps],
                         "total_ms": round(float(np.median(recipe_totals)), 1)},
        "all_applied_chain": {"step_ms": [round(x, 2) for x in forced_steps],
                              "total_ms": round(float(np.median(forced_totals)), 1)},
        "elastic": time_elastic(scene, args.repeats),
    }
    sample = recipe(scene, np.random.default_rng(0))
    step_ms = time_training_step(sample, args.step_repeats)
    chain_ms = result["recipe_chain"]["total_ms"]
    result["step"] = {"ms": round(step_ms, 1), "voxels": int(len(sample["grid_coord"])),
                      "repeats": args.step_repeats, "torch": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "chain_share": round(chain_ms / (chain_ms + step_ms), 4)}
    table = markdown(result)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "transforms.md", table)
    write_text_atomic(RESULTS / "transforms.json", json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
