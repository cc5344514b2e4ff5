"""Point Prompt Training ablation on the three synthetic styles (the PPT paper's pilot study).

Settings, each trained for every seed and scored on every style's validation rooms:

- single-<style>: one style alone (adapter=none, head=decoupled: a plain one-dataset model),
  for as many epochs as the joint runs: it sees exactly the batches of its style that a joint
  run sees (data-matched);
- single-<style>-steps: the same, trained for as many optimiser steps as a joint run
  (step-matched: three times the epochs);
- naive joint: all three styles, one shared BatchNorm backbone and one unionized head, no prompts;
- PPT (language head): adapter=pdnorm, head=language (logit scale 100, bare class names);
- PPT (decoupled heads): adapter=pdnorm, head=decoupled.

Fairness: every run uses recipes/ppt-tiny.toml plus the overrides below. The styles interleave
1:1:1 and have the same number of training rooms, so a joint epoch holds one pass over every
style. Batch order and augmentation are keyed by (seed, epoch, dataset name, pass, room), not
by a dataset's position, so a single-style run and a joint run draw the very same batches of a
style, with the same augmentation. Norm momentum 0.1 suits these short schedules (the paper's
0.01 is for runs a hundred times longer), so the scores use the norms as trained: no post-hoc
re-estimation. Mix3D is off in every row (as in the tiny recipe: in a few hundred steps it slows
learning, and it would double each step's points). No validation during training: each model is
its last checkpoint.

Data: `pptkit synth` + `pptkit preprocess` once per style into --work (reused while the
synthesis code and the data settings are unchanged). Validation rooms: the synthesis's own val
split plus --extra-val rooms synthesized with another seed, merged into one file per style.

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
    "model.norm_momentum=0.1",
    "data.batch_size=2", "data.num_workers=0", "data.point_max=40000", "data.augment=true",
    "data.ratios={structured3d=1,scannet=1,s3dis=1}", "data.mix_prob=0.0",
    "train.eval_every=1000", "train.log_every=20", "train.amp=false",
    "optim.lr=0.05", "optim.scheduler=onecycle",
]


@dataclass(frozen=True)
class Setting:
    """One row of the ablation: which styles are trained together, how the model shares, and
    how many epochs it trains relative to the joint runs."""

    key: str
    label: str
    styles: tuple[str, ...]
    adapter: str
    head: str
    epoch_factor: int = 1


SETTINGS: tuple[Setting, ...] = (
    *(Setting(f"single-{s}", f"single: {s}", (s,), "none", "decoupled") for s in STYLES),
    *(Setting(f"single-{s}-steps", f"single: {s}, step-matched", (s,), "none", "decoupled", len(STYLES))
      for s in STYLES),
    Setting("naive", "naive joint (shared BN + unionized head)", STYLES, "none", "unionized"),
    Setting("ppt-language", "PPT (PDNorm + language head)", STYLES, "pdnorm", "language"),
    Setting("ppt-decoupled", "PPT (PDNorm + decoupled heads)", STYLES, "pdnorm", "decoupled"),
)
JOINT = [s for s in SETTINGS if len(s.styles) > 1]


@dataclass(frozen=True)
class DataSpec:
    scenes: int  # rooms synthesized per style (every fifth is validation)
    extra_val: int  # more validation rooms per style, synthesized with seed synth_seed + 1000
    grid_size: float
    synth_seed: int


def _synth_fingerprint() -> str:
    """Hash of the synthesis code: cached data is rebuilt when the styles change."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "pptkit" / "data" / "synth").glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _prepare_style(style: str, data: Path, spec: DataSpec) -> None:
    """Synthesize one style's rooms and preprocess its train and val splits into `data`; the
    extra validation rooms (every split of a second synthesis) join the val file."""
    from pptkit.stages.preprocess import PreprocessOptions, run_preprocess
    from pptkit.stages.synth import run_synth

    def convert(seed: int, scenes: int, tag: str) -> dict[str, Path]:
        raw = run_synth(style=style, out=data / "raw" / f"{style}{tag}", scenes=scenes, seed=seed, overwrite=False)
        out = {}
        for split in ("train", "val"):
            out[split] = data / f"{style}{tag}_{split}.h5"
            run_preprocess(PreprocessOptions(dataset=style, input=raw, output=out[split], split=split,
                                             grid_size=spec.grid_size, workers=1))
        shutil.rmtree(raw)
        return out

    main = convert(spec.synth_seed, spec.scenes, "")
    if spec.extra_val:
        extra = convert(spec.synth_seed + 1000, spec.extra_val, "_extra")
        _append_scenes(main["val"], [extra["train"], extra["val"]], prefix="extra_")
        for path in extra.values():
            path.unlink()


def _append_scenes(target: Path, sources: list[Path], prefix: str) -> None:
    """Copy every scene of `sources` into the store `target`, renamed with `prefix`."""
    import h5py

    from pptkit.data.store import group_name

    with h5py.File(target, "r+") as out:
        for source in sources:
            with h5py.File(source, "r") as f:
                for name, group in f.items():
                    item = prefix + str(group.attrs["name"])
                    f.copy(group, out, name=group_name(item))
                    out[group_name(item)].attrs["name"] = item


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


def _run_one(job: dict) -> dict:
    """Train one setting for one seed (or reuse a finished identical run), then score it on its
    styles' validation rooms."""
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
    scores = run_eval(EvalOptions(checkpoint=out / "last.pt", data=val, out=out / "eval" / "results.json",
                                  device="cpu", seed=job["seed"]))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last_epoch = [r for r in records if r.get("split") == "train_epoch"][-1]
    return {"setting": job["setting"], "seed": job["seed"],
            "miou": {s: float(scores[s].miou) for s in job["styles"]},
            "steps": int(last_epoch["step"]), "final_epoch_loss": float(last_epoch["loss"]),
            "reused_training": done, "train_s": round(trained, 1),
            "total_s": round(time.perf_counter() - started, 1)}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(runs: list[dict], seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    """{row: {style: per-seed mIoU list}}; the single-style rows are assembled per style."""
    by = {(r["setting"], r["seed"]): r for r in runs}
    rows: dict[str, dict[str, list[float]]] = {
        "single-style": {s: [by[(f"single-{s}", k)]["miou"][s] for k in seeds] for s in STYLES},
        "single-style-steps": {s: [by[(f"single-{s}-steps", k)]["miou"][s] for k in seeds] for s in STYLES},
    }
    for setting in JOINT:
        rows[setting.key] = {s: [by[(setting.key, k)]["miou"][s] for k in seeds] for s in STYLES}
    return rows


ROW_LABELS = {"single-style": "single-style, data-matched (one model per style)",
              "single-style-steps": "single-style, step-matched (3x the epochs)",
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
        if key.startswith("single-style"):
            continue
        diffs = [_mean_std([100 * (a - b) for a, b in zip(per_style[s], base[s])]) for s in STYLES]
        deltas += f"| {ROW_LABELS[key]} | " + " | ".join(f"{m:+.1f} ± {sd:.1f}" for m, sd in diffs) + " |\n"
    return head + body + "\nPaired difference to single-style training (same seed), percentage points:\n\n" + deltas


def markdown(rows: dict[str, dict[str, list[float]]], meta: dict) -> str:
    seeds = meta["seeds"]
    d = meta["data"]
    return (
        "# Point Prompt Training ablation (synthetic styles)\n\n"
        f"mIoU (%) on each style's validation rooms, every original point scored; mean ± std over "
        f"seeds {seeds} (std with ddof=1). `mean` is the per-seed mean over the three styles.\n\n"
        + _tables(rows, len(seeds)) +
        f"\n## Settings\n\nData: {d['scenes']} rooms per style from `pptkit synth` (seed {d['synth_seed']}), "
        f"{meta['train_rooms']} train; validation: its {meta['own_val_rooms']} val rooms plus {d['extra_val']} "
        f"rooms of a second synthesis (seed {d['synth_seed'] + 1000}), {meta['val_rooms']} per style; "
        f"preprocessed at {d['grid_size']} m.\n"
        f"Training: recipes/ppt-tiny.toml with overrides `{' '.join(meta['overrides'])}`; joint and "
        f"data-matched single runs {meta['epochs']} epochs ({meta['steps_per_style']} batches of "
        f"{meta['batch_size']} rooms of each style, the same batches in every setting), step-matched single "
        f"runs {len(STYLES) * meta['epochs']} epochs (as many optimiser steps as a joint run). Last "
        "checkpoint, no model selection, no test-time augmentation, norms as trained.\n"
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
    parser.add_argument("--extra-val", type=int, default=16, help="more validation rooms per style (second synthesis)")
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
        args.seeds, args.epochs, args.scenes, args.extra_val = args.seeds[:1], 1, 10, 5

    started = time.perf_counter()
    spec = DataSpec(scenes=args.scenes, extra_val=args.extra_val, grid_size=args.grid_size, synth_seed=args.synth_seed)
    files = prepare_data(args.work, spec, args.jobs)
    data_s = time.perf_counter() - started
    overrides = MODEL_OVERRIDES + [f"data.grid_size={args.grid_size}"] + args.overrides
    jobs = [{"setting": st.key, "styles": st.styles, "adapter": st.adapter, "head": st.head, "seed": seed,
             "epochs": args.epochs * st.epoch_factor, "overrides": overrides, "files": {k: {s: str(p) for s, p in v.items()}
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
            "val_rooms": val_rooms[STYLES[0]], "own_val_rooms": val_rooms[STYLES[0]] - args.extra_val,
            "val_rooms_per_style": val_rooms, "epochs": args.epochs, "batch_size": batch_size,
            "steps_per_style": args.epochs * (train_rooms // batch_size),
            "recipe": str(RECIPE.relative_to(ROOT)), "overrides": overrides,
            "settings": [asdict(s) for s in SETTINGS], "jobs": args.jobs,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
            "data_prep_s": round(data_s, 1), "wall_s": round(wall, 1), "note": args.note,
            "runs_reused": sum(r["reused_training"] for r in runs)}
    rows = summarize(runs, args.seeds)
    table = markdown(rows, meta)
    print(table)
    if not args.no_write:
        from pptkit.fileio import write_text_atomic

        RESULTS.mkdir(parents=True, exist_ok=True)
        write_text_atomic(RESULTS / "ppt_ablation.md", table)
        write_text_atomic(RESULTS / "ppt_ablation.json", json.dumps(
            {"meta": meta, "rows": rows, "runs": sorted(runs, key=lambda r: (r["setting"], r["seed"]))}, indent=1))


if __name__ == "__main__":
    main()
