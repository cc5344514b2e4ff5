"""Point Prompt Training ablation on the three synthetic styles (the PPT paper's pilot study).

Settings, each trained for every seed and scored on every style's validation split:

- single-<style>: one style alone (adapter=none, head=decoupled: a plain one-dataset model);
  the "single-style" row takes each style's score from the model trained on that style.
- naive joint: all three styles, one shared BatchNorm backbone and one unionized head, no prompts.
- PPT (language head): adapter=pdnorm, head=language.
- PPT (decoupled heads): adapter=pdnorm, head=decoupled.

Fairness: every run uses the same recipe (recipes/ppt-tiny.toml + the overrides below) and the
same number of epochs; the datasets interleave 1:1:1 and every style has the same number of
training rooms, so one epoch holds the same batches of each style in every setting. A joint run
thus takes three times the optimiser steps of a single run, and each style contributes exactly
the same batches (same rooms, same count) as in its single-style run: what differs between the
rows is only the model / the company of the other styles, never how much of a style was seen.
No validation during training: each model is its last checkpoint (no selection on val).

Data: `pptkit synth` + `pptkit preprocess` once per style into --work (reused while the
synthesis code and the data settings are unchanged).

Run: python benchmarks/ppt_ablation.py [--work benchmarks/.work] [--seeds 0 1 2] [--jobs 2] [--quick]
Writes benchmarks/results/ppt_ablation.md and ppt_ablation.json (atomically).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "recipes" / "ppt-tiny.toml"
STYLES = ("structured3d", "scannet", "s3dis")

# A small SparseUNet at 10 cm voxels: one training step takes a fraction of a second on one thread.
MODEL_OVERRIDES = [
    "model.base_channels=16", "model.channels=[16,32,48,64,48,32,32,32]",
    "model.layers=[1,1,1,1,1,1,1,1]", "model.context_channels=32",
    "model.norm_momentum=0.01",
    "data.batch_size=2", "data.num_workers=0", "data.point_max=40000", "data.augment=true",
    "data.ratios={structured3d=1,scannet=1,s3dis=1}",
    "train.eval_every=1000", "train.log_every=20", "train.amp=false",
    "optim.lr=0.05", "optim.scheduler=onecycle",
]


@dataclass(frozen=True)
class Setting:
    """One row of the ablation: which styles are trained together and how the model shares."""

    key: str
    label: str
    styles: tuple[str, ...]
    adapter: str
    head: str


SETTINGS: tuple[Setting, ...] = (
    *(Setting(f"single-{s}", f"single: {s}", (s,), "none", "decoupled") for s in STYLES),
    Setting("naive", "naive joint (shared BN + unionized head)", STYLES, "none", "unionized"),
    Setting("ppt-language", "PPT (PDNorm + language head)", STYLES, "pdnorm", "language"),
    Setting("ppt-decoupled", "PPT (PDNorm + decoupled heads)", STYLES, "pdnorm", "decoupled"),
)


@dataclass(frozen=True)
class DataSpec:
    scenes: int  # rooms synthesized per style (every fifth is validation)
    grid_size: float
    synth_seed: int


def _synth_fingerprint() -> str:
    """Hash of the synthesis code: cached data is rebuilt when the styles change."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "pptkit" / "data" / "synth").glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _prepare_style(style: str, data: Path, spec: DataSpec) -> None:
    """Synthesize one style's rooms and preprocess its train and val splits into `data`."""
    from pptkit.stages.preprocess import PreprocessOptions, run_preprocess
    from pptkit.stages.synth import run_synth

    raw = run_synth(style=style, out=data / "raw" / style, scenes=spec.scenes, seed=spec.synth_seed,
                    overwrite=False)
    for split in ("train", "val"):
        run_preprocess(PreprocessOptions(dataset=style, input=raw, output=data / f"{style}_{split}.h5",
                                         split=split, grid_size=spec.grid_size, workers=1))
    shutil.rmtree(raw)


def prepare_data(work: Path, spec: DataSpec, jobs: int) -> dict[str, dict[str, Path]]:
    """{style: {"train": h5, "val": h5}}, synthesized and preprocessed once into `work`."""
    stamp = {**asdict(spec), "synth": _synth_fingerprint()}
    data = work / "data"
    stamp_file = data / "stamp.json"
    files = {s: {split: data / f"{s}_{split}.h5" for split in ("train", "val")} for s in STYLES}
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp \
            and all(p.is_file() for f in files.values() for p in f.values()):
        return files
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(_prepare_style, STYLES, [data] * len(STYLES), [spec] * len(STYLES)))
    stamp_file.write_text(json.dumps(stamp))
    return files


def recalibrate_batchnorm(run_dir: Path, train_files: dict[str, str]) -> Path:
    """Re-estimate every BatchNorm's statistics on the run's training rooms; a new checkpoint.

    The backbone's norms use momentum 0.01 (hard-wired in pptkit.stages.ppt_model), so after a
    few hundred CPU steps their running statistics still carry the initial values and early
    training, and a norm updated more often (shared BN of a joint run: every step) is less
    stale than a per-domain one (single runs, PDNorm: a third of the steps). To compare the
    models and not their norm-update counts, every model of every setting gets the same
    treatment: statistics reset, then the cumulative average over one pass of its training
    rooms (eval transforms, weights untouched). Shared norms see every trained style's rooms;
    PDNorm's per-domain norms only their own domain's.
    """
    import torch

    from pptkit.data.dataset import SceneDataset
    from pptkit.data.transforms import eval_transforms
    from pptkit.engine.batch import collate
    from pptkit.engine.checkpoint import load_checkpoint, save_checkpoint
    from pptkit.stages.evaluate import load_trained_model

    device = torch.device("cpu")
    model, recipe, names, _, path = load_trained_model(run_dir / "last.pt", device)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    transform = eval_transforms(recipe.data.grid_size)
    model.train()
    with torch.no_grad():
        for d, name in enumerate(names):
            rooms = SceneDataset(train_files[name])
            for i in range(len(rooms)):
                batch = collate([transform(rooms[i], np.random.default_rng([d, i]))], d, device)
                model(batch.input, batch.dataset)
    ckpt = load_checkpoint(path)
    ckpt["model"] = model.state_dict()
    out = run_dir / "recalibrated.pt"
    save_checkpoint(out, ckpt)
    return out


def _run_one(job: dict) -> dict:
    """Train one setting for one seed (or reuse a finished identical run), then score it on its
    styles' validation splits, with the trained norms and with recalibrated ones."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from pptkit.config import load_recipe, to_toml
    from pptkit.stages.evaluate import EvalOptions, run_eval
    from pptkit.stages.joint_train import JointTrainOptions, run_joint_train
    from pptkit.stages.ppt_recipe import PPTRecipe

    out = Path(job["out"])
    overrides = job["overrides"] + [f"model.adapter={job['adapter']}", f"model.head={job['head']}",
                                    f"train.epochs={job['epochs']}"]
    data = [f"{s}={job['files'][s]['train']}" for s in job["styles"]]
    started = time.perf_counter()
    done = (out / "last.pt").is_file() and (out / "config.toml").is_file() and (out / "data.json").is_file() \
        and (out / "config.toml").read_text() == to_toml(load_recipe(RECIPE, PPTRecipe, overrides)) \
        and json.loads((out / "data.json").read_text()) == {"data": data, "seed": job["seed"]}
    if done:
        done = torch.load(out / "last.pt", weights_only=True)["epoch"] == job["epochs"]
    if not done:
        if out.exists():
            shutil.rmtree(out)
        run_joint_train(JointTrainOptions(recipe=RECIPE, data=data, out=out, seed=job["seed"], device="cpu",
                                          overrides=overrides))
        (out / "data.json").write_text(json.dumps({"data": data, "seed": job["seed"]}))
    trained = time.perf_counter() - started
    val = [f"{s}={job['files'][s]['val']}" for s in job["styles"]]
    raw = run_eval(EvalOptions(checkpoint=out / "last.pt", data=val, out=out / "eval" / "results.json",
                               device="cpu", seed=job["seed"]))
    recalibrated = recalibrate_batchnorm(out, {s: job["files"][s]["train"] for s in job["styles"]})
    recal = run_eval(EvalOptions(checkpoint=recalibrated, data=val, out=out / "eval_recalibrated" / "results.json",
                                 device="cpu", seed=job["seed"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last_epoch = [r for r in records if r.get("split") == "train_epoch"][-1]
    return {"setting": job["setting"], "seed": job["seed"],
            "miou": {s: float(recal[s].miou) for s in job["styles"]},
            "miou_trained_norms": {s: float(raw[s].miou) for s in job["styles"]},
            "steps": int(last_epoch["step"]), "final_epoch_loss": float(last_epoch["loss"]),
            "reused_training": done, "train_s": round(trained, 1),
            "total_s": round(time.perf_counter() - started, 1)}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(runs: list[dict], seeds: list[int], key: str = "miou") -> dict[str, dict[str, list[float]]]:
    """{row: {style: per-seed mIoU list}} with the single-style row assembled per style."""
    by = {(r["setting"], r["seed"]): r for r in runs}
    rows: dict[str, dict[str, list[float]]] = {"single-style": {s: [by[(f"single-{s}", k)][key][s] for k in seeds]
                                                                for s in STYLES}}
    for setting in SETTINGS[len(STYLES):]:
        rows[setting.key] = {s: [by[(setting.key, k)][key][s] for k in seeds] for s in STYLES}
    return rows


ROW_LABELS = {"single-style": "single-style (one model per style)",
              **{s.key: s.label for s in SETTINGS}}


def _tables(rows: dict[str, dict[str, list[float]]], n_seeds: int) -> str:
    """mean ± std table, then the paired (same seed) differences to single-style training."""
    head = "| setting | " + " | ".join(STYLES) + " | mean |\n|---|" + "---:|" * (len(STYLES) + 1) + "\n"
    body = ""
    for key, per_style in rows.items():
        cells = [_mean_std([100 * v for v in per_style[s]]) for s in STYLES]
        per_seed_mean = [100 * float(np.mean([per_style[s][i] for s in STYLES])) for i in range(n_seeds)]
        cells.append(_mean_std(per_seed_mean))
        body += f"| {ROW_LABELS[key]} | " + " | ".join(f"{m:.1f} ± {sd:.1f}" for m, sd in cells) + " |\n"
    base = rows["single-style"]
    deltas = "| vs single-style | " + " | ".join(STYLES) + " |\n|---|" + "---:|" * len(STYLES) + "\n"
    for key, per_style in rows.items():
        if key == "single-style":
            continue
        diffs = [_mean_std([100 * (a - b) for a, b in zip(per_style[s], base[s])]) for s in STYLES]
        deltas += f"| {ROW_LABELS[key]} | " + " | ".join(f"{m:+.1f} ± {sd:.1f}" for m, sd in diffs) + " |\n"
    return head + body + "\nPaired difference to single-style training (same seed), percentage points:\n\n" + deltas


def markdown(rows: dict[str, dict[str, list[float]]], raw_rows: dict[str, dict[str, list[float]]], meta: dict) -> str:
    seeds = meta["seeds"]
    d = meta["data"]
    return (
        "# Point Prompt Training ablation (synthetic styles)\n\n"
        f"mIoU (%) on each style's validation split, every original point scored; mean ± std over "
        f"seeds {seeds} (std with ddof=1). `mean` is the per-seed mean over the three styles.\n\n"
        "## With BatchNorm statistics re-estimated on the training rooms (all settings alike)\n\n"
        + _tables(rows, len(seeds)) +
        "\n## With the norms' running statistics as trained (momentum 0.01, see notes)\n\n"
        + _tables(raw_rows, len(seeds)) +
        f"\n## Settings\n\nData: {d['scenes']} rooms per style from `pptkit synth` (seed {d['synth_seed']}), "
        f"{meta['train_rooms']} train / {meta['val_rooms']} val each, preprocessed at {d['grid_size']} m.\n"
        f"Training: recipes/ppt-tiny.toml with overrides `{' '.join(meta['overrides'])}`, "
        f"{meta['epochs']} epochs for every run (ratios 1:1:1, so each style contributes the same "
        f"{meta['steps_per_style']} batches of {meta['batch_size']} rooms in every setting; a joint run "
        f"takes {len(STYLES)}x the optimiser steps of a single run). Last checkpoint, no model selection, "
        "no test-time augmentation.\n"
        "Norm recalibration: the backbone's norms use momentum 0.01 (the paper's value, pinned by this benchmark's overrides; recipe field model.norm_momentum); "
        "after this short schedule their running statistics are stale, and more so for per-domain norms "
        "(single runs, PDNorm: one third of a joint run's updates) than for a joint run's shared BN. The first "
        "table resets every BatchNorm and takes the cumulative average over one pass of the model's own "
        "training rooms (weights unchanged), identically for every setting.\n"
        f"Machine: {meta['machine']}; {meta['jobs']} runs in parallel, one torch thread each; "
        f"wall time of this invocation {meta['wall_s'] / 60:.1f} min ({meta['runs_reused']} of "
        f"{len(meta['seeds']) * len(SETTINGS)} runs reused finished training from an earlier invocation).\n"
        + (f"\nNote: {meta['note']}\n" if meta["note"] else "")
    )



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenes", type=int, default=40, help="rooms per style (every fifth is validation)")
    parser.add_argument("--grid-size", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--synth-seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra recipe override KEY=VALUE (applied to every run)")
    parser.add_argument("--quick", action="store_true", help="smoke run: seed 0, 2 epochs, 10 rooms per style")
    parser.add_argument("--note", default="", help="free text added to the report (e.g. how runs were reused)")
    parser.add_argument("--no-write", action="store_true", help="print the table, keep results/ untouched")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.scenes = args.seeds[:1], 2, 10

    started = time.perf_counter()
    spec = DataSpec(scenes=args.scenes, grid_size=args.grid_size, synth_seed=args.synth_seed)
    files = prepare_data(args.work, spec, args.jobs)
    data_s = time.perf_counter() - started
    overrides = MODEL_OVERRIDES + [f"data.grid_size={args.grid_size}"] + args.overrides
    jobs = [{"setting": st.key, "styles": st.styles, "adapter": st.adapter, "head": st.head, "seed": seed,
             "epochs": args.epochs, "overrides": overrides, "files": {k: {s: str(p) for s, p in v.items()}
                                                                    for k, v in files.items()},
             "out": str(args.work / "runs" / f"{st.key}-seed{seed}")}
            for seed in args.seeds for st in SETTINGS]
    jobs.sort(key=lambda j: -len(j["styles"]))  # long (joint) runs first: better packing
    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(_run_one, jobs):
            runs.append(result)
            print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {result['setting']} seed {result['seed']}: "
                  + " ".join(f"{s}={100 * v:.1f}" for s, v in result["miou"].items())
                  + f" ({result['steps']} steps, {result['total_s']:.0f} s)", flush=True)
    wall = time.perf_counter() - started

    from pptkit.data.dataset import SceneDataset
    train_rooms = len(SceneDataset(files[STYLES[0]]["train"]))
    val_rooms = {s: len(SceneDataset(files[s]["val"])) for s in STYLES}
    batch_size = 2
    meta = {"seeds": args.seeds, "data": asdict(spec), "train_rooms": train_rooms,
            "val_rooms": val_rooms[STYLES[0]], "val_rooms_per_style": val_rooms,
            "epochs": args.epochs, "batch_size": batch_size,
            "steps_per_style": args.epochs * (train_rooms // batch_size),
            "recipe": str(RECIPE.relative_to(ROOT)), "overrides": overrides,
            "settings": [asdict(s) for s in SETTINGS], "jobs": args.jobs,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
            "data_prep_s": round(data_s, 1), "wall_s": round(wall, 1), "note": args.note,
            "runs_reused": sum(r["reused_training"] for r in runs)}
    rows = summarize(runs, args.seeds)
    raw_rows = summarize(runs, args.seeds, "miou_trained_norms")
    table = markdown(rows, raw_rows, meta)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_text_atomic(RESULTS / "ppt_ablation.md", table)
        write_text_atomic(RESULTS / "ppt_ablation.json", json.dumps(
            {"meta": meta, "rows": rows, "rows_trained_norms": raw_rows, "runs": sorted(runs, key=lambda r: (r["setting"], r["seed"]))}, indent=1))


if __name__ == "__main__":
    main()
