"""Sparse convolution speed and memory: pptkit's pure-PyTorch backend against MinkowskiEngine.

Cases, each on ~50k and ~200k voxels of a room-like scene (the surfaces of a furnished 6 x 5 m
room with 2 mm scanner noise, voxelized at the grid size giving that count: ~7 and ~3.5 cm):
  subm3   SubMConv3d(64, 64, 3)
  down    Conv3d(64, 64, 2, stride 2)
  up      Conv3d(64, 64, 2, 2) then ConvTranspose3d(64, 64, 2, 2) (the time covers both)
  unet    pptkit.models.sparse_unet.SparseUNet(6, 13), full default config (SpUNet-v1m1, 39M params)
Every pass is a forward + backward on freshly collated coordinates, so each pass also builds its
kernel maps (as training does: each batch brings new coordinates). The weights are identical on
both backends.

Configurations: each backend runs with torch.set_num_threads(t) for every t in --threads.
MinkowskiEngine's coordinate manager gets t threads and its GEMMs use OpenBLAS's own threads,
one per core, whatever t is; likewise the torch backend's convolutions use --workers worker
threads (default: one per core) whatever t is. So with t = 1 both run every other op on one
thread and their convolutions on all cores; with t = 2 everything may use both cores. On 2
shared cores t = 1 is often the faster of the two for both backends (an OpenMP barrier waits
for a thread descheduled by the convolution threads), so the ratio is taken between each
backend's *faster* configuration, per size.

Protocol: each (case, size, backend, threads) runs in its own subprocess: one untimed warm-up
pass, then --repeats timed passes (--unet-repeats for the UNet). The subprocesses of one case
and size run in --rounds interleaved rounds (every configuration once per round), so a change
in the machine's load falls on all of them alike; time = median over all timed passes.
Memory = peak RSS delta: the subprocess's ru_maxrss at the end minus its RSS just before the
warm-up (data, model and weights already built), i.e. the most extra memory a forward +
backward needed; it includes allocator slack and is the same measure for both backends.

Run: python benchmarks/bench_sparse.py [--sizes 50000 200000] [--threads 1 2] [--rounds 3] [--workers 2]
Writes benchmarks/results/sparse.md and sparse.json (atomically). Without MinkowskiEngine only
the torch backend is timed.

`--device cuda` times both backends on the GPU (MinkowskiEngine only if its build has CUDA),
synchronising around every timed pass; memory is then the peak of torch's CUDA allocator above
what was allocated before the warm-up. Writes sparse_cuda.md / sparse_cuda.json.
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


def run_case(case: str, num_voxels: int, backend: str, threads: int, workers: int, repeats: int,
             device: str = "cpu") -> dict:
    """Time one case in this process: a warm-up pass, then `repeats` timed passes.
    Returns times (s), peak memory delta (MB: RSS on CPU, CUDA allocator on a GPU) and the voxel count."""
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
    model = model.to(device)
    feats = torch.randn(len(grid), channels, generator=torch.Generator().manual_seed(1))
    cuda = device.startswith("cuda")

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        x, _ = sparse_collate([grid], [feats], device=torch.device(device))
        x = x.replace(x.feats.requires_grad_())
        out = model(x)
        out = out.logits if case == "unet" else out.feats
        out.square().mean().backward()
        if cuda:
            torch.cuda.synchronize()

    base_rss = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    forward_backward()  # warm-up: first-call set-up (thread pools, BLAS buffers) is not timed
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward_backward()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"times": times, "peak_rss_delta_mb": peak - base_rss, "voxels": int(len(grid))}


def _subprocess(case: str, size: int, backend: str, threads: int, workers: int, repeats: int,
                device: str) -> dict:
    cmd = [sys.executable, __file__, "--one", case, str(size), backend, str(threads), str(workers), str(repeats),
           "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{case} {size} {backend} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(case: str, size: int, configs: list[tuple[str, int]], workers: int, rounds: int, repeats: int,
            device: str) -> dict:
    """Interleaved rounds of every (backend, threads) config; per config the median time over all
    timed passes and the largest peak-RSS delta seen."""
    runs: dict[tuple[str, int], list[dict]] = {config: [] for config in configs}
    for _ in range(rounds):
        for backend, threads in configs:
            runs[backend, threads].append(_subprocess(case, size, backend, threads, workers, repeats, device))
    result = {"case": case, "target_voxels": size, "voxels": runs[configs[0]][0]["voxels"], "configs": []}
    for (backend, threads), found in runs.items():
        times = [t for r in found for t in r["times"]]
        peak = max(r["peak_rss_delta_mb"] for r in found)
        result["configs"].append(
            {"backend": backend, "threads": threads, "median_s": statistics.median(times), "times_s": times, "peak_rss_delta_mb": peak}
        )
        print(f"{case:6s} {result['voxels']:>7d} {backend:9s} threads {threads}  median {statistics.median(times):.3f}s "
              f"peak +{peak:.0f} MB  (load {os.getloadavg()[0]:.1f})", flush=True)
    return result


def _best(result: dict, backend: str, key: str) -> dict:
    return min((c for c in result["configs"] if c["backend"] == backend), key=lambda c: c[key])


def table(rows: list[dict], threads: list[int], have_me: bool) -> list[str]:
    """Markdown: per config time and peak, then the ratio of ME's faster config to torch's faster one."""
    names = [f"{b} {t}t" for b in (["torch", "ME"] if have_me else ["torch"]) for t in threads]
    header = "| case | voxels | " + " | ".join(f"{n} s | {n} MB" for n in names) + " |"
    if have_me:
        header += " fastest ME / fastest torch time | torch peak ≤ smallest ME peak |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        cells = [f"{c['median_s']:.3f} | {c['peak_rss_delta_mb']:.0f}" for c in r["configs"]]
        line = f"| {r['case']} | {r['voxels']} | " + " | ".join(cells) + " |"
        if have_me:
            torch_best, me_best = _best(r, "torch", "median_s"), _best(r, "minkowski", "median_s")
            me_small = _best(r, "minkowski", "peak_rss_delta_mb")["peak_rss_delta_mb"]
            ok = "yes" if torch_best["peak_rss_delta_mb"] <= me_small else "no"
            line += f" {me_best['median_s'] / torch_best['median_s']:.2f}x | {ok} |"
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch.set_num_threads values to run each backend with")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="torch-backend convolution worker threads")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per case and size")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per op subprocess")
    parser.add_argument("--unet-repeats", type=int, default=1, help="timed passes per whole-UNet subprocess")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--one", nargs=6, metavar=("CASE", "SIZE", "BACKEND", "THREADS", "WORKERS", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        case, size, backend, threads, workers, repeats = args.one
        print(json.dumps(run_case(case, int(size), backend, int(threads), int(workers), int(repeats), args.device)))
        return

    from pptkit.fileio import write_text_atomic
    from pptkit.sparse import available_backends

    backends = available_backends()
    cuda = args.device.startswith("cuda")
    if cuda:
        args.threads = args.threads[:1]  # torch threads only drive the CPU side; one setting suffices
    if cuda and "minkowski" in backends and not _minkowski_has_cuda():
        backends = [b for b in backends if b != "minkowski"]
    configs = [(backend, threads) for backend in backends for threads in args.threads]
    rows = []
    started = time.perf_counter()
    for case in args.cases:
        for size in args.sizes:
            repeats = args.unet_repeats if case == "unet" else args.repeats
            rows.append(measure(case, size, configs, args.workers, args.rounds, repeats, args.device))
    total = time.perf_counter() - started

    lines = [
        f"# Sparse convolution: pptkit torch backend vs MinkowskiEngine 0.5.4 ({args.device})",
        "",
        f"Forward + backward incl. kernel-map building. Each configuration (backend, torch threads `Nt`) "
        f"in fresh subprocesses: 1 warm-up pass + {args.repeats} (ops) / {args.unet_repeats} (UNet) timed passes, "
        f"{args.rounds} interleaved rounds; time = median of all timed passes; MB = largest peak RSS delta. "
        f"Torch-backend conv workers: {args.workers} at every thread count; ME's GEMMs: OpenBLAS's own threads. Ratio: ME's faster "
        "configuration over torch's faster one. Written by benchmarks/bench_sparse.py.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at the end {os.getloadavg()[0]:.1f} (the cores are shared; times vary with load). "
        f"Total run {total:.0f} s.",
        "",
        *table(rows, args.threads, "minkowski" in backends),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    meta = {"threads": args.threads, "workers": args.workers, "rounds": args.rounds, "repeats": args.repeats, "unet_repeats": args.unet_repeats,
            "cpus": os.cpu_count(), "load_end": os.getloadavg()[0], "total_s": total}
    stem = "sparse_cuda" if cuda else "sparse"
    if cuda:
        import torch

        meta["gpu"] = torch.cuda.get_device_name()
    write_text_atomic(RESULTS / f"{stem}.md", text)
    write_text_atomic(RESULTS / f"{stem}.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


def _minkowski_has_cuda() -> bool:
    from pptkit.sparse.minkowski_backend import require_minkowski

    return bool(require_minkowski().is_cuda_available())


if __name__ == "__main__":
    main()
