"""Point ops of the point-patch Transformer: pptkit's batched PyTorch ops against the alternatives.

Clouds are training batches of 32 synthetic objects (pptkit.data.synth's shape classes, points
on their surfaces, inside the unit sphere as ModelNet stores them), float32.

- FPS: `farthest_point_sample` on the whole batch (32 x 2,048 -> 128 and 32 x 1,024 -> 64
  centres) against a Python loop over the batch calling the `fpsample` package: its vanilla
  `fps_sampling` and its bucket (QuickFPS) `bucket_fps_kdline_sampling` at the fastest tree
  height of 3, 4, 5 and 7 (timed per workload; the best is reported). All start at index 0;
  "same picks" says whether fpsample's vanilla FPS chose the same indices.
- kNN: `knn` of the FPS centres into their cloud (k = 32, the patch grouping of
  `group_patches`) against scipy's cKDTree, build + query, looped over the batch (query with
  as many workers as torch threads).
- Chamfer: `chamfer_distance` (L2, chunked at the default 2^24 pairs) against a naive
  reference that builds the full (B, N, M) distance tensor (`torch.cdist`, then min over both
  axes); forward + backward, on Point-MAE's loss shape (32 x 38 masked patches of 32 points)
  and on 8 pairs of 2,048-point clouds. "largest distance block" is the size of the pairwise
  tensor each side holds at once (computed, not measured).

Every case runs at 1 and at 2 torch threads; timings are the median of interleaved rounds
after a warm-up. "speed-up" is the alternative's time over pptkit's (> 1: pptkit is faster).

Run: python benchmarks/bench_point_ops.py [--rounds 7] [--threads 1 2]
Writes benchmarks/results/point_ops.md (atomically).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from pptkit.data.synth.objects import SHAPES, make_object
from pptkit.fileio import write_text_atomic
from pptkit.models.point_ops import (
    DEFAULT_MAX_PAIRS,
    chamfer_distance,
    farthest_point_sample,
    knn,
)

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 32
BUCKET_HEIGHTS = (3, 4, 5, 7)


def object_batch(num_points: int, batch: int = BATCH, seed: int = 0) -> np.ndarray:
    """(batch, num_points, 3) float32: one synthetic object per row, shape classes in turn."""
    rng = np.random.default_rng(seed)
    names = sorted(SHAPES)
    return np.stack([make_object(names[i % len(names)], rng, num_points)[0]
                     for i in range(batch)]).astype(np.float32)


def median_ms(fns: dict[str, callable], rounds: int) -> dict[str, float]:
    """Median wall time (ms) of each function over interleaved rounds, after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def bench_fps(threads: int, rounds: int) -> list[dict]:
    import fpsample

    rows = []
    for num_points, k in ((2048, 128), (1024, 64)):
        clouds = object_batch(num_points)
        points = torch.from_numpy(clouds)
        fns = {"pptkit": lambda: farthest_point_sample(points, k),
               "vanilla": lambda: [fpsample.fps_sampling(c, k, start_idx=0) for c in clouds]}
        for h in BUCKET_HEIGHTS:
            fns[f"bucket h={h}"] = lambda h=h: [fpsample.bucket_fps_kdline_sampling(c, k, h, start_idx=0)
                                                for c in clouds]
        ms = median_ms(fns, rounds)
        best_bucket = min((name for name in ms if name.startswith("bucket")), key=ms.get)
        ours = farthest_point_sample(points, k).numpy()
        same = all(np.array_equal(ours[b], fpsample.fps_sampling(clouds[b], k, start_idx=0).astype(np.int64))
                   for b in range(BATCH))
        rows.append({"case": f"{BATCH} x {num_points:,} -> {k}", "threads": threads,
                     "pptkit_ms": ms["pptkit"], "vanilla_ms": ms["vanilla"],
                     "bucket_ms": ms[best_bucket], "bucket": best_bucket, "same_picks": same})
        print(f"FPS {rows[-1]['case']} threads={threads}: pptkit {ms['pptkit']:.2f} ms, vanilla "
              f"{ms['vanilla']:.2f} ms, {best_bucket} {ms[best_bucket]:.2f} ms", flush=True)
    return rows


def bench_knn(threads: int, rounds: int) -> list[dict]:
    rows = []
    for num_points, groups in ((2048, 128), (1024, 64)):
        clouds = object_batch(num_points)
        points = torch.from_numpy(clouds)
        centres_t = points.gather(1, farthest_point_sample(points, groups)[..., None].expand(-1, -1, 3))
        centres = centres_t.numpy()

        def kdtree():
            return [cKDTree(clouds[b]).query(centres[b], 32, workers=threads) for b in range(BATCH)]

        ms = median_ms({"pptkit": lambda: knn(centres_t, points, 32), "cKDTree": kdtree}, rounds)
        dist2, _ = knn(centres_t, points, 32)
        ref = np.stack([d for d, _ in kdtree()]) ** 2
        max_err = float(np.abs(dist2.numpy() - ref).max())
        rows.append({"case": f"{BATCH} x {groups} centres in {num_points:,}, k=32", "threads": threads,
                     "pptkit_ms": ms["pptkit"], "other_ms": ms["cKDTree"], "max_err": max_err})
        print(f"kNN {rows[-1]['case']} threads={threads}: pptkit {ms['pptkit']:.2f} ms, "
              f"cKDTree {ms['cKDTree']:.2f} ms", flush=True)
    return rows


def naive_chamfer_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dist = torch.cdist(a, b) ** 2
    return dist.min(dim=2).values.mean() + dist.min(dim=1).values.mean()


def bench_chamfer(threads: int, rounds: int) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for label, batch, n in (("Point-MAE loss: 1,216 patch pairs x 32 points", BATCH * 38, 32),
                            ("8 pairs of 2,048-point clouds", 8, 2048)):
        if n >= 1024:
            a = torch.from_numpy(object_batch(n, batch, seed=1))
            b = a + 0.01 * torch.randn(a.shape, generator=gen)
        else:
            a, b = torch.rand(batch, n, 3, generator=gen) - 0.5, torch.rand(batch, n, 3, generator=gen) - 0.5
        a.requires_grad_(True)

        def step(loss_fn):
            a.grad = None
            loss = loss_fn(a, b)
            loss.backward()
            return loss

        ms = median_ms({"pptkit": lambda: step(lambda x, y: chamfer_distance(x, y, "l2")),
                        "naive": lambda: step(naive_chamfer_l2)}, max(3, rounds // 2))
        ours, ours_grad = step(lambda x, y: chamfer_distance(x, y, "l2")).item(), a.grad.clone()
        naive, naive_grad = step(naive_chamfer_l2).item(), a.grad.clone()
        pair_rows = max(1, DEFAULT_MAX_PAIRS // n)  # nearest_neighbour's chunking: rows of n pairs
        block = min(batch, pair_rows // n) * n * n if n <= pair_rows else pair_rows * n
        rows.append({"case": label, "threads": threads, "pptkit_ms": ms["pptkit"], "other_ms": ms["naive"],
                     "rel_diff": abs(ours - naive) / naive,
                     "grad_diff": float((ours_grad - naive_grad).abs().max()),
                     "pptkit_mib": 4 * block / 2**20, "naive_mib": 4 * batch * n * n / 2**20})
        print(f"Chamfer {label} threads={threads}: pptkit {ms['pptkit']:.1f} ms, naive {ms['naive']:.1f} ms",
              flush=True)
    return rows


def markdown(fps: list[dict], knn_rows: list[dict], chamfer: list[dict], meta: dict) -> str:
    lines = [
        "# Point ops: pptkit (batched PyTorch) vs fpsample, scipy cKDTree and a naive Chamfer",
        "",
        f"Median of {meta['rounds']} interleaved rounds (Chamfer: {max(3, meta['rounds'] // 2)}) after a "
        f"warm-up; {meta['machine']} (1-minute load average {meta['load_average'][0]} before, "
        f"{meta['load_average'][1]} after: other jobs share the machine, so absolute times, and "
        f"2-thread times most, are noisy); torch {meta['torch']}, fpsample {meta['fpsample']}, "
        f"scipy {meta['scipy']}. Batches of {BATCH} synthetic objects, float32. Speed-up = the "
        "alternative's time / pptkit's (> 1: pptkit faster).",
        "",
        "## Farthest point sampling (one batched call vs fpsample looped over the batch)",
        "",
        "| case | torch threads | pptkit ms | fpsample vanilla ms | speed-up | fpsample bucket ms "
        "(fastest height) | speed-up | same picks as vanilla |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in fps:
        lines.append(f"| {r['case']} | {r['threads']} | {r['pptkit_ms']:.2f} | {r['vanilla_ms']:.2f} | "
                     f"{r['vanilla_ms'] / r['pptkit_ms']:.2f}x | {r['bucket_ms']:.2f} ({r['bucket']}) | "
                     f"{r['bucket_ms'] / r['pptkit_ms']:.2f}x | {'yes' if r['same_picks'] else 'no'} |")
    lines += [
        "",
        "## kNN of the patch centres (group_patches' search) vs cKDTree build + query per cloud",
        "",
        "| case | torch threads / cKDTree workers | pptkit ms | cKDTree ms | speed-up | max abs diff of d² |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in knn_rows:
        lines.append(f"| {r['case']} | {r['threads']} | {r['pptkit_ms']:.2f} | {r['other_ms']:.2f} | "
                     f"{r['other_ms'] / r['pptkit_ms']:.2f}x | {r['max_err']:.1e} |")
    lines += [
        "",
        "## Chamfer-L2, forward + backward, vs the full (B, N, M) distance tensor",
        "",
        "| case | torch threads | pptkit ms | naive ms | speed-up | largest distance block MiB "
        "(pptkit / naive) | relative diff of loss | max abs diff of gradient |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in chamfer:
        lines.append(f"| {r['case']} | {r['threads']} | {r['pptkit_ms']:.1f} | {r['other_ms']:.1f} | "
                     f"{r['other_ms'] / r['pptkit_ms']:.2f}x | {r['pptkit_mib']:.0f} / {r['naive_mib']:.0f} | "
                     f"{r['rel_diff']:.1e} | {r['grad_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    meta = {"rounds": args.rounds, "torch": torch.__version__, "fpsample": version("fpsample"),
            "scipy": version("scipy"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
    load_before = os.getloadavg()[0]
    fps, knn_rows, chamfer = [], [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        fps += bench_fps(threads, args.rounds)
        knn_rows += bench_knn(threads, args.rounds)
        chamfer += bench_chamfer(threads, args.rounds)
    meta["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    table = markdown(fps, knn_rows, chamfer, meta)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "point_ops.md", table)


if __name__ == "__main__":
    main()
