"""PointGST vs full fine-tuning vs linear probing, from one pretrained encoder.

Through `pptkit finetune` itself (`run_finetune`, the CLI's path), for every dataset and seed,
the three modes train for the same number of steps with the same recipe (--recipe,
recipes/gst-tiny.toml by default); the score is the overall accuracy (OA) and mean class
accuracy (mAcc) on the held-out split after the last epoch (no checkpoint selection on it),
mean ± std over the seeds, with the trainable parameters and their share.

The encoder: --backbone, else the act_transfer benchmark's seed-0 ACT student
(benchmarks/.work/act_transfer/seed0/act/last.pt, or its Point-MAE one), else a Point-MAE
encoder pretrained here with `pptkit pretrain --stage mae` (recipes/act-tiny.toml) on the
synthetic training split.

Data (built once under --work): synthetic ModelNet-style objects (`pptkit synth --style
objects` -> `pptkit preprocess --dataset modelnet40`, --per-class shapes of each of 18 classes,
every fifth held out) and, when ../shared/data/modelnet40-sample exists, its 87 real shapes
(the last shape of every class with two or more held out).

Also measured, each mode in a fresh process so peaks do not mix: the median wall time of one
optimiser step at batch --batch after a warm-up and the peak resident memory while stepping
(Linux VmHWM, reset through /proc/self/clear_refs), at the benchmark's scale and at paper scale
(recipes/gst-modelnet40.toml on a 12-block, 384-wide encoder, 1,024 points; random weights:
memory and time do not depend on them); and, in gst mode, the share of the step spent
computing the graph bases (global + local eigendecompositions, `spectral_basis`).

Run: python benchmarks/gst_vs_full.py [--seeds 0 1 2] [--epochs 20] [--sample-epochs 60]
         [--per-class 40] [--backbone PATH] [--recipe recipes/gst-tiny.toml] [--set key=value ...]
Writes benchmarks/results/gst_vs_full.md and gst_vs_full.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pptkit.config import load_recipe  # noqa: E402
from pptkit.engine.checkpoint import load_checkpoint  # noqa: E402
from pptkit.engine.object_batches import PointBatches, PointSource  # noqa: E402
from pptkit.fileio import write_text_atomic  # noqa: E402
from pptkit.progress import set_quiet  # noqa: E402
from pptkit.stages.finetune import (  # noqa: E402
    FinetuneOptions,
    build_classifier,
    build_encoder,
    load_backbone,
    load_encoder_state,
    parameter_groups,
    run_finetune,
    train_transform,
)
from pptkit.stages.gst_recipe import FinetuneRecipe  # noqa: E402
from pptkit.stages.preprocess import PreprocessOptions, run_preprocess  # noqa: E402
from pptkit.stages.pretrain import PretrainOptions, run_pretrain  # noqa: E402
from pptkit.stages.synth import run_synth  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SHARED_MODELNET = ROOT.parent / "shared" / "data" / "modelnet40-sample"
ACT_TRANSFER = ROOT / "benchmarks" / ".work" / "act_transfer" / "seed0"
PAPER_RECIPE = ROOT / "recipes" / "gst-modelnet40.toml"
PAPER_ENCODER = {"embed_dim": 384, "depth": 12, "num_heads": 6}  # the rest: the constructor's defaults
MODES = ("gst", "full", "linear")


# --- data and backbone -------------------------------------------------------------------------


def build_data(work: Path, per_class: int) -> dict[str, dict[str, Path]]:
    """{dataset: {"train": h5, "test": h5}}, built once (reused when the files exist)."""
    data = work / "data"
    stores = {"synthetic": {split: data / f"synthetic-{per_class}_{split}.h5" for split in ("train", "test")}}
    if not all(p.exists() for p in stores["synthetic"].values()):
        raw = run_synth(style="objects", out=data / f"raw-synthetic-{per_class}", scenes=per_class, seed=0,
                        overwrite=True)
        for split, path in stores["synthetic"].items():
            run_preprocess(PreprocessOptions(dataset="modelnet40", input=raw, output=path, split=split,
                                             overwrite=True))
    if SHARED_MODELNET.is_dir():
        real = {split: data / f"modelnet40-sample_{split}.h5" for split in ("train", "test")}
        if not all(p.exists() for p in real.values()):
            raw = modelnet_with_splits(SHARED_MODELNET, data / "raw-modelnet40-sample")
            for split, path in real.items():
                run_preprocess(PreprocessOptions(dataset="modelnet40", input=raw, output=path, split=split,
                                                 overwrite=True))
        stores["modelnet40-sample"] = real
    return stores


def modelnet_with_splits(source: Path, target: Path) -> Path:
    """The ModelNet40 sample (class folders symlinked) with train / test lists: the last shape
    of every class with two or more shapes is held out."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / "modelnet40_shape_names.txt").symlink_to(source / "modelnet40_shape_names.txt")
    train, test = [], []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).symlink_to(folder, target_is_directory=True)
        shapes = sorted(p.stem for p in folder.glob(f"{folder.name}_*.txt"))
        train += shapes[:-1] if len(shapes) >= 2 else shapes
        test += shapes[-1:] if len(shapes) >= 2 else []
    (target / "modelnet40_train.txt").write_text("\n".join(train) + "\n")
    (target / "modelnet40_test.txt").write_text("\n".join(test) + "\n")
    return target


def finished(path: Path) -> bool:
    """A pretrain checkpoint holding an encoder whose run reached its last epoch."""
    if not path.is_file():
        return False
    checkpoint = load_checkpoint(path)
    return "encoder" in checkpoint and checkpoint["epoch"] == checkpoint["config"]["train"]["epochs"]


def find_backbone(args, stores) -> tuple[Path, str]:
    """(checkpoint, what it is): --backbone, the act_transfer benchmark's encoder, or one
    pretrained here."""
    if args.backbone is not None:
        return args.backbone, f"given: {args.backbone}"
    for name, label in (("act", "ACT student"), ("mae", "Point-MAE encoder")):
        path = ACT_TRANSFER / name / "last.pt"
        if finished(path):  # copied: a rerun of act_transfer replaces its runs
            copy = args.work / f"act_transfer-seed0-{name}.pt"
            shutil.copyfile(path, copy)
            return copy, f"{label} of the act_transfer benchmark (seed 0, {path.relative_to(ROOT)}, copied)"
    run = args.work / "pretrain-mae"
    if not finished(run / "last.pt"):
        shutil.rmtree(run, ignore_errors=True)
        run_pretrain(PretrainOptions(recipe=ROOT / "recipes" / "act-tiny.toml", data=[stores["synthetic"]["train"]],
                                     out=run, stage="mae", seed=0, device=args.device,
                                     overrides=[f"train.epochs={args.pretrain_epochs}"]))
    return run / "last.pt", (f"Point-MAE encoder pretrained here ({args.pretrain_epochs} epochs of "
                             "recipes/act-tiny.toml --stage mae on the synthetic training split; "
                             "the act_transfer benchmark's encoder was absent)")


# --- fine-tuning runs ---------------------------------------------------------------------------


def finetune(args, dataset: str, store: dict[str, Path], backbone: Path, mode: str, seed: int, epochs: int) -> dict:
    """One run; its final held-out scores, parameter counts, steps and wall time."""
    out = args.work / "runs" / dataset / f"{mode}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    run_finetune(FinetuneOptions(
        recipe=args.recipe, checkpoint=backbone, out=out, mode=mode, seed=seed, device=args.device,
        data=[f"train={store['train']}", f"val={store['test']}"],
        overrides=[f"train.epochs={epochs}", f"train.eval_every={epochs}", *args.set]))
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"][-1]
    counts = next(r for r in records if r["split"] == "parameters")
    result = {"dataset": dataset, "mode": mode, "seed": seed, "acc": val["acc"], "macc": val["macc"],
              "steps": val["step"], "seconds": seconds, "trainable": counts["trainable"], "total": counts["total"],
              "percent": counts["percent"]}
    print(f"{dataset} {mode} seed {seed}: OA {100 * val['acc']:.1f}% after {val['step']} steps ({seconds:.0f} s)",
          flush=True)
    return result


# --- one step: time, memory, graph-basis share (run in a fresh process) ------------------------


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure_step(args) -> dict:
    """In this (fresh) process: median time of an optimiser step at batch --batch, peak resident
    memory while stepping, and (gst) the time of the graph bases of the same batch."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mode, scale = args.measure, args.scale
    device = torch.device(args.device)
    if scale == "paper":
        recipe = load_recipe(PAPER_RECIPE, FinetuneRecipe, [f"model.mode={mode}"])
        encoder = build_encoder(PAPER_ENCODER, recipe, PAPER_RECIPE)
    else:
        recipe = load_recipe(args.recipe, FinetuneRecipe, [f"model.mode={mode}", *args.set])
        backbone = load_backbone(args.backbone)
        encoder = build_encoder(backbone.config, recipe, backbone.path)
        load_encoder_state(encoder, backbone)
    model = build_classifier(encoder, recipe, 40).to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe.optim.weight_decay), lr=recipe.optim.lr)
    d = recipe.data
    source = PointSource([args.train_store], d.fps_pool or d.num_points, "fps")
    points, labels, _ = PointBatches(source, [np.arange(args.batch)], train_transform(d), 0, 0)[0]
    points, labels = torch.from_numpy(points).to(device), torch.from_numpy(labels).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(points), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, recipe.train.clip_grad)
        optimizer.step()
        sync()

    step()  # warm-up: allocates the optimiser state
    resident_kb = _memory_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current resident set
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    result = {"mode": mode, "scale": scale, "seconds": float(np.median(times)),
              "peak_rss_mb": _memory_kb("VmHWM") / 1024, "resident_before_mb": resident_kb / 1024,
              "trainable": sum(p.numel() for p in trainable), "total": sum(p.numel() for p in model.parameters()),
              "batch": args.batch, "points": d.num_points}
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if mode == "gst":
        with torch.no_grad():
            _, centres = model.encoder.group(points)
            basis_times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                model.spectral_basis(centres)
                sync()
                basis_times.append(time.perf_counter() - started)
        result["basis_seconds"] = float(np.median(basis_times))
    return result


def measure_steps(args, backbone: Path, train_store: Path) -> list[dict]:
    results = []
    for scale in ("benchmark", "paper"):
        for mode in MODES:
            cmd = [sys.executable, __file__, "--measure", mode, "--scale", scale, "--backbone", str(backbone),
                   "--train-store", str(train_store), "--recipe", str(args.recipe), "--batch", str(args.batch),
                   "--repeats", str(args.repeats), "--device", args.device, "--threads", str(args.threads),
                   *[a for item in args.set for a in ("--set", item)]]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            print(f"step {scale} {mode}: {r['seconds']:.3f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    return results


# --- report ---------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def report(args, stores, backbone_text: str, runs: list[dict], steps: list[dict], wall: float) -> str:
    lines = ["# PointGST vs full fine-tuning vs linear probing", "",
             f"Backbone: {backbone_text}. Recipe `{Path(args.recipe).relative_to(ROOT)}`"
             + (f" with {' '.join(args.set)}" if args.set else "") + f"; seeds {', '.join(map(str, args.seeds))}; "
             f"device {args.device}, {args.threads} torch thread(s); {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores (shared); whole run {wall / 60:.1f} min.", "",
             "OA / mAcc: held-out split after the last epoch (no checkpoint chosen on it), mean ± std over the "
             "seeds. Every mode trains the same number of steps.", ""]
    for dataset in stores:
        sizes = {split: len(PointSource([stores[dataset][split]], 1, "fps")) for split in ("train", "test")}
        rows = [r for r in runs if r["dataset"] == dataset]
        lines += [f"## {dataset} ({sizes['train']} training / {sizes['test']} held-out objects, "
                  f"{rows[0]['steps']} steps per run)", "",
                  "| mode | trainable parameters | share | OA (%) | mAcc (%) | s / run |",
                  "|---|---:|---:|---:|---:|---:|"]
        for mode in MODES:
            of = [r for r in rows if r["mode"] == mode]
            lines.append(f"| {mode} | {of[0]['trainable']:,} of {of[0]['total']:,} | {of[0]['percent']:.2f}% | "
                         f"{mean_std([r['acc'] for r in of])} | {mean_std([r['macc'] for r in of])} | "
                         f"{np.mean([r['seconds'] for r in of]):.0f} |")
        lines.append("")
    lines += ["## One optimiser step", "",
              f"Batch {args.batch}, median of {args.repeats} steps after a warm-up, each mode in a fresh process. "
              "Peak RSS: the process's peak resident memory while stepping (model, optimiser state, activations). "
              "Benchmark scale = the models above; paper scale = recipes/gst-modelnet40.toml on a 12-block, "
              "384-wide encoder (random weights), 1,024 points.", "",
              "| scale | mode | trainable | share | peak RSS (MB) | vs full | step (s) | vs full |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for scale in ("benchmark", "paper"):
        full = next(s for s in steps if s["scale"] == scale and s["mode"] == "full")
        for s in (s for s in steps if s["scale"] == scale):
            lines.append(f"| {scale} | {s['mode']} | {s['trainable']:,} | {100 * s['trainable'] / s['total']:.2f}% | "
                         f"{s['peak_rss_mb']:.0f} | {s['peak_rss_mb'] / full['peak_rss_mb']:.2f}x | "
                         f"{s['seconds']:.3f} | {s['seconds'] / full['seconds']:.2f}x |")
    lines.append("")
    gst_steps = {s["scale"]: s for s in steps if s["mode"] == "gst"}
    lines += ["Graph bases (global and local Laplacian eigendecompositions, once per sample per step) in a gst "
              "step: " + "; ".join(f"{scale} scale {1000 * s['basis_seconds']:.1f} ms of {1000 * s['seconds']:.0f} ms "
                                  f"({100 * s['basis_seconds'] / s['seconds']:.1f}%)" for scale, s in gst_steps.items())
              + ".", ""]
    lines += ["## Goals", ""]
    for dataset in stores:
        acc = {m: np.mean([r["acc"] for r in runs if r["dataset"] == dataset and r["mode"] == m]) for m in MODES}
        gap = 100 * (acc["full"] - acc["gst"])
        verdict = "met" if gap <= 1.0 else "NOT met"
        lines.append(f"- {dataset}: gst within 1 point of full: {verdict} (gst {100 * acc['gst']:.1f}%, full "
                     f"{100 * acc['full']:.1f}%, gap {gap:+.1f} points; linear {100 * acc['linear']:.1f}%).")
    for scale in ("benchmark", "paper"):
        gst = gst_steps[scale]
        full = next(s for s in steps if s["scale"] == scale and s["mode"] == "full")
        share = 100 * gst["trainable"] / gst["total"]
        lines.append(f"- {scale} scale: under 3% trainable: {'met' if share < 3 else 'NOT met'} ({share:.2f}%); "
                     f"less peak training memory than full: {'met' if gst['peak_rss_mb'] < full['peak_rss_mb'] else 'NOT met'}"
                     f" ({gst['peak_rss_mb']:.0f} vs {full['peak_rss_mb']:.0f} MB).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "gst_vs_full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs on the synthetic objects")
    parser.add_argument("--sample-epochs", type=int, default=60, help="fine-tuning epochs on the ModelNet40 sample")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--backbone", type=Path, default=None)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "gst-tiny.toml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch", type=int, default=32, help="batch of the step measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--scale", choices=("benchmark", "paper"), help=argparse.SUPPRESS)
    parser.add_argument("--train-store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure_step(args)))
        return

    set_quiet(True)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    stores = build_data(args.work, args.per_class)
    backbone, backbone_text = find_backbone(args, stores)
    print(f"backbone: {backbone_text}", flush=True)
    runs = []
    for dataset, store in stores.items():
        epochs = args.epochs if dataset == "synthetic" else args.sample_epochs
        for seed in args.seeds:
            for mode in MODES:
                runs.append(finetune(args, dataset, store, backbone, mode, seed, epochs))
    steps = measure_steps(args, backbone, stores["synthetic"]["train"])
    wall = time.perf_counter() - started
    text = report(args, stores, backbone_text, runs, steps, wall)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "gst_vs_full.md", text)
    write_text_atomic(RESULTS / "gst_vs_full.json", json.dumps({"runs": runs, "steps": steps}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
