"""Sparse convolution speed and memory: pptkit's pure-PyTorch backend against MinkowskiEngine.

Cases, each on ~50k and ~200k voxels of a room-like scene (the surfaces of a furnished 6 x 5 m
room with 2 mm scanner noise, voxelized at the grid size giving that count: ~7 and ~3.5 cm):
  subm3   SubMConv3d(64, 64, 3)
  down    Conv3d(64, 64, 2, stride 2)
  up      Conv3d(64, 64, 2, 2) then ConvTranspose3d(64, 64, 2, 2) (the time covers both)
  unet    pptkit.models.sparse_unet.SparseUNet(6, 13), full default config (SpUNet-v1m1, 39M params)
Every timed repeat is a forward + backward on freshly collated coordinates, so each repeat also
builds its kernel maps (as training does: each batch brings new coordinates). The weights are
identical on both backends.

Each (case, size, backend) runs in its own subprocess with `torch.set_num_threads(--threads)`
(MinkowskiEngine's coordinate manager gets the same thread count; its GEMMs use OpenBLAS's own
threads, 2 on 2 cores, either way). The default is 1 thread: on 2 cores shared with other jobs,
every OpenMP-parallel op (BatchNorm, ReLU, ...) waits at a barrier for a descheduled thread; a
BatchNorm1d over 30k x 96 took 49 ms with 2 threads and 2 ms with 1, which swamps both backends
alike. ME's GEMMs still use OpenBLAS's own 2 threads. `--workers` sets the torch backend's
convolution worker threads (`set_cpu_workers`); 2 workers lost to 1 at load ~4.5 (UNet 50k:
7.5 s vs 6.4 s, more memory). Pass --threads 2 --workers 2 on an otherwise idle machine. Time = median over the repeats.
Memory = peak RSS delta: the subprocess's ru_maxrss at the end minus its RSS just before the
first timed repeat (data, model and weights already built), i.e. the most extra memory the
forward + backward needed; it includes allocator slack, and is the same measure for both.

Run: python benchmarks/bench_sparse.py [--sizes 50000 200000] [--threads 2] [--repeats 3]
Writes benchmarks/results/sparse.md and sparse.json (atomically). Without MinkowskiEngine only
the torch backend is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
VOXEL = 0.02
CASES = ("subm3", "down", "up", "unet")


def room_voxels(num_voxels: int, seed: int = 0) -> np.ndarray:
    """Unique (N, 3) int32 voxel coordinates of a furnished 6 x 5 x 2.8 m room, voxelized at the
    grid size that gives about num_voxels occupied voxels."""
    rng = np.random.default_rng(seed)
    width, depth, height = 6.0, 5.0, 2.8
    boxes = [(np.zeros(3), np.array([width, depth, height]))]
    for _ in range(8):
        size = rng.uniform([0.4, 0.4, 0.4], [2.0, 1.2, 1.8])
        boxes.append((np.append(rng.uniform(0, [width - size[0], depth - size[1]]), 0.0), size))
    points = []
    for corner, size in boxes:
        for axis in range(3):
            u, v = [np.eye(3)[a] * size[a] for a in range(3) if a != axis]
            for side in (0.0, 1.0):
                origin = corner + side * np.eye(3)[axis] * size[axis]
                n = int(np.linalg.norm(np.cross(u, v)) * 4 * num_voxels / 100)  # ~4 points per voxel
                s, t = rng.random((2, n, 1))
                points.append(origin + s * u + t * v + rng.normal(0, 0.002, (n, 3)))
    points = np.concatenate(points)

    def voxels(size: float) -> np.ndarray:
        grid = np.floor(points / size).astype(np.int64)
        return np.unique(grid - grid.min(0), axis=0).astype(np.int32)

    size = np.sqrt(100 / num_voxels)  # the surfaces hold about 100 m^2
    for _ in range(2):
        size *= np.sqrt(len(voxels(size)) / num_voxels)
    return voxels(size)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(case: str, num_voxels: int, backend: str, threads: int, workers: int, repeats: int) -> dict:
    """Time one case in this process; returns times (s), peak RSS delta (MB) and the voxel count."""
    import torch

    from pptkit.sparse import Conv3d, ConvTranspose3d, SubMConv3d, sparse_collate
    from pptkit.sparse.torch_backend import set_cpu_workers

    torch.set_num_threads(threads)
    set_cpu_workers(workers)
    grid = room_voxels(num_voxels)
    torch.manual_seed(0)
    if case == "unet":
        from pptkit.models.sparse_unet import SparseUNet

        model = SparseUNet(6, 13, backend=backend)
        channels = 6
    elif case == "subm3":
        model = SubMConv3d(64, 64, 3, backend=backend)
        channels = 64
    elif case == "down":
        model = Conv3d(64, 64, 2, 2, backend=backend)
        channels = 64
    else:
        model = torch.nn.Sequential(Conv3d(64, 64, 2, 2, backend=backend), ConvTranspose3d(64, 64, 2, 2, backend=backend))
        channels = 64
    feats = torch.randn(len(grid), channels, generator=torch.Generator().manual_seed(1))
    times = []
    base_rss = _rss_mb()
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        x, _ = sparse_collate([grid], [feats])
        x = x.replace(x.feats.requires_grad_())
        out = model(x)
        out = out.logits if case == "unet" else out.feats
        out.square().mean().backward()
        times.append(time.perf_counter() - start)
        del x, out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"times": times, "peak_rss_delta_mb": peak - base_rss, "voxels": int(len(grid))}


def _subprocess(case: str, size: int, backend: str, threads: int, workers: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--one", case, str(size), backend, str(threads), str(workers), str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} {size} {backend} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1 suits shared cores, see the docstring)")
    parser.add_argument("--workers", type=int, default=1, help="torch-backend convolution worker threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per op case")
    parser.add_argument("--unet-repeats", type=int, default=2, help="timed repeats per whole-UNet case")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--one", nargs=6, metavar=("CASE", "SIZE", "BACKEND", "THREADS", "WORKERS", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        case, size, backend, threads, workers, repeats = args.one
        print(json.dumps(run_case(case, int(size), backend, int(threads), int(workers), int(repeats))))
        return

    from pptkit.fileio import write_text_atomic
    from pptkit.sparse import available_backends

    backends = available_backends()
    rows = []
    started = time.perf_counter()
    for case in args.cases:
        for size in args.sizes:
            repeats = args.unet_repeats if case == "unet" else args.repeats
            result = {"case": case, "target_voxels": size}
            for backend in backends:
                r = _subprocess(case, size, backend, args.threads, args.workers, repeats)
                result["voxels"] = r["voxels"]
                result[backend] = {"median_s": statistics.median(r["times"]), "times_s": r["times"], "peak_rss_delta_mb": r["peak_rss_delta_mb"]}
                print(f"{case:6s} {r['voxels']:>7d} {backend:9s} median {result[backend]['median_s']:.3f}s "
                      f"peak +{r['peak_rss_delta_mb']:.0f} MB  (load {os.getloadavg()[0]:.1f})", flush=True)
            rows.append(result)
    total = time.perf_counter() - started

    header = "| case | voxels | torch s | torch peak MB | " + (
        "ME s | ME peak MB | ME / torch time |" if "minkowski" in backends else "")
    lines = [
        "# Sparse convolution: pptkit torch backend vs MinkowskiEngine 0.5.4 (CPU)",
        "",
        f"Forward + backward incl. kernel-map building; median of {args.repeats} (ops) / {args.unet_repeats} (UNet) "
        f"repeats; torch.set_num_threads({args.threads}), torch-backend conv workers {args.workers} "
        "(ME's GEMMs: OpenBLAS threads); each case in a fresh process; peak MB = peak RSS "
        "delta over the timed repeats. Written by benchmarks/bench_sparse.py.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at the end {os.getloadavg()[0]:.1f} (the cores are shared; times vary with load). "
        f"Total run {total:.0f} s.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in rows:
        t = r["torch"]
        line = f"| {r['case']} | {r['voxels']} | {t['median_s']:.3f} | {t['peak_rss_delta_mb']:.0f} |"
        if "minkowski" in r:
            m = r["minkowski"]
            line += f" {m['median_s']:.3f} | {m['peak_rss_delta_mb']:.0f} | {m['median_s'] / t['median_s']:.2f}x |"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    meta = {"threads": args.threads, "workers": args.workers, "repeats": args.repeats, "unet_repeats": args.unet_repeats,
            "cpus": os.cpu_count(), "load_end": os.getloadavg()[0], "total_s": total}
    write_text_atomic(RESULTS / "sparse.md", text)
    write_text_atomic(RESULTS / "sparse.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
