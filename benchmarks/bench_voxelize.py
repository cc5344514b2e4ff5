"""Voxelization speed: pptkit.data.voxelize (+ per-voxel means) against Open3D's voxel_down_sample.

Both sides produce the same thing: one point per occupied 2 cm voxel with the mean coordinate
and the mean colour of the points inside it. pptkit's time covers `voxelize` plus the two
`voxel_mean` calls; Open3D's covers `voxel_down_sample` on a PointCloud built beforehand (its
construction is not timed, which favours Open3D).

Points are "room-like": sampled uniformly by area on the surfaces of a box-shaped room (floor,
ceiling, four walls) and of box furniture standing on the floor, with 2 mm of scanner noise and
per-surface colours, listed surface by surface (as real files list them: per object in
S3DIS, per frame or mesh region elsewhere). The room's floor area grows with the point count so that the density of a
real indoor scan (2-3 points per occupied 2 cm voxel, as in S3DIS) is kept: 1M points fill a
5 x 4 m room, 10M points a hall of about 16 x 13 m.

Run: python benchmarks/bench_voxelize.py [--repeats 3] [--sizes 1000000 10000000]
Writes benchmarks/results/voxelize.md and voxelize.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pptkit.fileio import write_text_atomic
from pptkit.data.voxelize import voxel_mean, voxelize

GRID_SIZE = 0.02
RESULTS = Path(__file__).resolve().parent / "results"


def room_points(num_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(coord float32 (N, 3), colour uint8 (N, 3)) sampled on the surfaces of a furnished room."""
    rng = np.random.default_rng(seed)
    scale = np.sqrt(num_points / 1_000_000)
    width, depth, height = 5.0 * scale, 4.0 * scale, 2.8
    # Axis-aligned boxes: the room's shell (all six faces) and furniture (five faces each,
    # no bottom). A face is (origin, edge u, edge v).
    faces = _box_faces(np.zeros(3), np.array([width, depth, height]), bottom=True)
    for _ in range(int(6 * scale * scale)):
        size = rng.uniform([0.4, 0.4, 0.4], [2.0, 1.2, 1.8])
        corner = np.append(rng.uniform(0, [width - size[0], depth - size[1]]), 0.0)
        faces += _box_faces(corner, size, bottom=False)
    origin, u, v = (np.array(x) for x in zip(*faces))
    area = np.linalg.norm(np.cross(u, v), axis=1)
    # Points come surface by surface, as in S3DIS's per-object files or a scan's frames
    # (random within a surface); neither side is given a fully random memory order.
    face = np.sort(rng.choice(len(area), size=num_points, p=area / area.sum()))
    s, t = rng.random((2, num_points, 1))
    coord = origin[face] + s * u[face] + t * v[face] + rng.normal(0, 0.002, (num_points, 3))
    base_colour = rng.integers(40, 220, (len(area), 3))
    colour = np.clip(base_colour[face] + rng.normal(0, 12, (num_points, 3)), 0, 255)
    return coord.astype(np.float32), colour.astype(np.uint8)


def _box_faces(corner: np.ndarray, size: np.ndarray, bottom: bool) -> list[tuple]:
    ex, ey, ez = np.diag(size)
    faces = [(corner + ez, ex, ey),  # top
             (corner, ex, ez), (corner + ey, ex, ez),  # front, back
             (corner, ey, ez), (corner + ex, ey, ez)]  # left, right
    if bottom:
        faces.append((corner, ex, ey))
    return faces


def pptkit_downsample(coord: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vox = voxelize(coord, GRID_SIZE)
    return voxel_mean(vox, coord), voxel_mean(vox, colour)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return 1000 * (time.perf_counter() - start), result


def run(sizes: list[int], repeats: int) -> list[dict]:
    import open3d as o3d

    rows = []
    for n in sizes:
        coord, colour = room_points(n)
        cloud = o3d.geometry.PointCloud()
        cloud.points = o3d.utility.Vector3dVector(coord.astype(np.float64))
        cloud.colors = o3d.utility.Vector3dVector(colour.astype(np.float64) / 255.0)
        ours, theirs = [], []
        for _ in range(repeats):  # interleaved, so that changes in machine load hit both
            ms, (mean_coord, _) = timed(lambda: pptkit_downsample(coord, colour))
            ours.append(ms)
            ms, down = timed(lambda: cloud.voxel_down_sample(GRID_SIZE))
            theirs.append(ms)
        ours_ms, o3d_ms = float(np.median(ours)), float(np.median(theirs))
        rows.append({
            "points": n,
            "voxels": len(mean_coord),
            "open3d_voxels": len(down.points),
            "pptkit_ms": round(ours_ms, 1),
            "open3d_ms": round(o3d_ms, 1),
            "speedup": round(o3d_ms / ours_ms, 2),
            "pptkit_ms_per_mpoint": round(ours_ms / (n / 1e6), 1),
        })
        print(f"{n:>11,d} points: pptkit {ours_ms:8.1f} ms, open3d {o3d_ms:8.1f} ms", flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# Voxelization at {GRID_SIZE} m: pptkit vs Open3D voxel_down_sample",
        "",
        f"Median of {meta['repeats']} interleaved runs; {meta['machine']} (1-minute load average "
        f"{meta['load_average'][0]} before, {meta['load_average'][1]} after: other jobs share the "
        f"machine, so absolute times are noisy); numpy {meta['numpy']}, open3d {meta['open3d']}. "
        "Both compute mean coordinate and colour per voxel; Open3D's PointCloud is built "
        "outside the timing. "
        "(Open3D anchors its grid at min - size/2, so its voxel count differs slightly.)",
        "",
        "| points | voxels | pptkit ms | open3d ms | speed-up | pptkit ms / M points |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['points']:,} | {r['voxels']:,} | {r['pptkit_ms']:.1f} | "
                     f"{r['open3d_ms']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['pptkit_ms_per_mpoint']:.1f} |")
    return "\n".join(lines) + "\n"



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import open3d as o3d

    meta = {"repeats": args.repeats, "grid_size": GRID_SIZE, "numpy": np.__version__,
            "open3d": o3d.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
    load_before = os.getloadavg()[0]
    rows = run(args.sizes, args.repeats)
    meta["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    table = markdown(rows, meta)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "voxelize.md", table)
    write_text_atomic(RESULTS / "voxelize.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
