"""ACT vs Point-MAE vs random init: linear-probe accuracy of pretrained point-patch encoders.

For every seed, through `pptkit pretrain` itself (`run_pretrain`, the CLI's path):

- Point-MAE: `--stage mae` for S steps;
- ACT: `--stage autoencoder` for S_ae steps, then `--stage distill` for S steps (the student
  trains as many steps as Point-MAE's; stage I is ACT's extra cost, reported separately);
- random init: the same encoder freshly initialised with the seed.

Each encoder is then frozen and scored by a linear probe: its [cls ‖ max-pool] features of
1 farthest-point sample per object (no augmentation) -> standardised -> logistic regression
(scikit-learn; a deterministic full-batch torch softmax regression when scikit-learn is absent)
fitted on a training split, accuracy on the held-out split; and few-shot probes, the same
regression fitted on k random training objects per class (--shots, mean of --draws draws), the
regime where pretraining is expected to matter most. Pretraining sees the training splits only,
without labels, and --unlabelled-per-class more synthetic objects (other shapes, synthesis seed
1) that no probe uses.

Data (built once under --work): synthetic ModelNet-style objects (`pptkit synth --style objects`
-> `pptkit preprocess --dataset modelnet40`, --per-class shapes of each of 18 classes, every
fifth one held out) and, when ../shared/data/modelnet40-sample exists, its 87 real shapes (the
last shape of every class with two or more held out); both training splits are pooled for
pretraining, and each dataset is probed on its own.

Also measured, each in a fresh process (so peaks do not mix): the wall time (median of 3 after
a warm-up) and the peak resident memory of one optimiser step at batch 32 for every stage.

Run: python benchmarks/act_transfer.py [--seeds 0 1 2] [--steps 200] [--ae-steps 200]
         [--per-class 15] [--unlabelled-per-class 0] [--shots 1 4] [--recipe recipes/act-tiny.toml]
         [--set key=value ...] [--device cpu] [--out benchmarks/results/act_transfer.md]
Writes the report and its .json beside it (atomically); the pretrained
runs (their last.pt holds the encoder under "encoder") stay in --work/seed<S>/{act,mae}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pptkit.config import load_recipe  # noqa: E402
from pptkit.engine.object_batches import PointBatches, PointSource, ordered_batches, point_loader  # noqa: E402
from pptkit.fileio import write_text_atomic  # noqa: E402
from pptkit.models.point_transformer import PointTransformerEncoder  # noqa: E402
from pptkit.progress import set_quiet  # noqa: E402
from pptkit.stages.act_recipe import ACTRecipe  # noqa: E402
from pptkit.stages.preprocess import PreprocessOptions, run_preprocess  # noqa: E402
from pptkit.stages.pretrain import (  # noqa: E402
    PretrainOptions,
    build_autoencoder,
    build_model,
    encoder_config,
    loss_function,
    parameter_groups,
    prepare_teacher,
    run_pretrain,
    train_transform,
)
from pptkit.stages.synth import run_synth  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SHARED_MODELNET = ROOT.parent / "shared" / "data" / "modelnet40-sample"
STAGES = ("autoencoder", "distill", "mae")
ENCODERS = ("random init", "Point-MAE", "ACT")


# --- data ------------------------------------------------------------------------------------


def build_data(work: Path, per_class: int, unlabelled_per_class: int
               ) -> tuple[dict[str, dict[str, Path]], list[Path]]:
    """({dataset: {"train": h5, "test": h5}}, extra unlabelled pretraining stores), built once
    (reused when the files exist)."""
    data = work / "data"
    stores: dict[str, dict[str, Path]] = {}
    unlabelled: list[Path] = []
    if unlabelled_per_class:  # other synthetic shapes (synthesis seed 1): pretraining only, both splits
        raw = None
        for split in ("train", "test"):
            path = data / f"unlabelled-{unlabelled_per_class}_{split}.h5"
            if not path.exists():
                raw = raw or run_synth(style="objects", out=data / f"raw-unlabelled-{unlabelled_per_class}",
                                       scenes=unlabelled_per_class, seed=1, overwrite=True)
                run_preprocess(PreprocessOptions(dataset="modelnet40", input=raw, output=path, split=split,
                                                 overwrite=True))
            unlabelled.append(path)
    synthetic = {split: data / f"synthetic-{per_class}_{split}.h5" for split in ("train", "test")}
    if not all(p.exists() for p in synthetic.values()):
        raw = run_synth(style="objects", out=data / f"raw-synthetic-{per_class}", scenes=per_class, seed=0,
                        overwrite=True)
        for split, path in synthetic.items():
            run_preprocess(PreprocessOptions(dataset="modelnet40", input=raw, output=path, split=split,
                                             overwrite=True))
    stores["synthetic"] = synthetic
    if SHARED_MODELNET.is_dir():
        real = {split: data / f"modelnet40-sample_{split}.h5" for split in ("train", "test")}
        if not all(p.exists() for p in real.values()):
            raw = _modelnet_with_splits(SHARED_MODELNET, data / "raw-modelnet40-sample")
            for split, path in real.items():
                run_preprocess(PreprocessOptions(dataset="modelnet40", input=raw, output=path, split=split,
                                                 overwrite=True))
        stores["modelnet40-sample"] = real
    return stores, unlabelled


def _modelnet_with_splits(source: Path, target: Path) -> Path:
    """A view of the ModelNet40 sample (symlinked class folders) with train / test lists: the
    last shape of every class with two or more is held out."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    (target / "modelnet40_shape_names.txt").symlink_to(source / "modelnet40_shape_names.txt")
    train, test = [], []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).symlink_to(folder, target_is_directory=True)
        shapes = sorted(p.stem for p in folder.glob(f"{folder.name}_*.txt"))
        if len(shapes) >= 2:
            train += shapes[:-1]
            test.append(shapes[-1])
        else:
            train += shapes
    (target / "modelnet40_train.txt").write_text("\n".join(train) + "\n")
    (target / "modelnet40_test.txt").write_text("\n".join(test) + "\n")
    return target


# --- pretraining -----------------------------------------------------------------------------


def schedule_overrides(ae_steps: int) -> list[str]:
    """Stage-I schedules at the reference's fractions of its run (~196k steps on ShapeNet-55:
    temperature and KL warm-up over 100k, KL delay 10k)."""
    return [f"autoencoder.temperature_steps={max(1, round(0.51 * ae_steps))}",
            f"autoencoder.kl_delay={round(0.05 * ae_steps)}",
            f"autoencoder.kl_steps={max(1, round(0.51 * ae_steps))}"]


def pretrain(args, stores: dict[str, dict[str, Path]], unlabelled: list[Path], seed: int, recipe: ACTRecipe
             ) -> dict[str, dict]:
    """Runs mae, autoencoder and distill for `seed`; {stage: {"run", "steps", "seconds"}}."""
    folder = args.work / f"seed{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    train = [paths["train"] for paths in stores.values()] + unlabelled
    size = len(PointSource(train, recipe.data.num_points, recipe.data.sampling))
    runs: dict[str, dict] = {}
    for stage, name, steps in (("mae", "mae", args.steps), ("autoencoder", "ae", args.ae_steps),
                               ("distill", "act", args.steps)):
        batch = getattr(recipe, stage).batch_size
        per_epoch = size // batch
        epochs = math.ceil(steps / per_epoch)
        started = time.perf_counter()
        run_pretrain(PretrainOptions(
            recipe=args.recipe, data=train, out=folder / name, stage=stage, seed=seed, device=args.device,
            autoencoder=folder / "ae" if stage == "distill" else None,
            overrides=[*schedule_overrides(args.ae_steps), *args.set, f"train.epochs={epochs}"]))
        runs[stage] = {"run": folder / name, "steps": epochs * per_epoch, "seconds": time.perf_counter() - started}
        print(f"seed {seed}: {stage} {epochs * per_epoch} steps in {runs[stage]['seconds']:.0f} s", flush=True)
    return runs


# --- linear probe --------------------------------------------------------------------------


def features(encoder: PointTransformerEncoder, store: Path, recipe: ACTRecipe, device: torch.device
             ) -> tuple[np.ndarray, np.ndarray]:
    """[cls ‖ max] features (N, 2C) and labels of every object, one FPS sample each."""
    source = PointSource([store], recipe.data.num_points, "fps")
    encoder.eval().to(device)
    rows, labels = [], []
    with torch.no_grad():
        for batch in point_loader(PointBatches(source, ordered_batches(len(source), 32), None, 0, 0), 0):
            rows.append(encoder.features(batch.points.to(device)).float().cpu().numpy())
            labels.append(batch.labels.numpy())
    return np.concatenate(rows), np.concatenate(labels)


def probe_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """Held-out accuracy (%) of a logistic regression on standardised frozen features."""
    (x_train, y_train), (x_test, y_test) = train, test
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        predict = _torch_softmax_regression(x_train, y_train)
    else:
        with warnings.catch_warnings():  # a few classes of the real sample have a single training shape
            warnings.simplefilter("ignore", UserWarning)
            model = LogisticRegression(max_iter=5000).fit(x_train, y_train)
        predict = model.predict
    return float((predict(x_test) == y_test).mean() * 100)


def few_shot_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], shots: int,
                      draws: int, seed: int) -> float:
    """Mean held-out accuracy (%) of probes fitted on `shots` random training objects per class
    (classes with fewer keep all of theirs), over `draws` draws."""
    x, y = train
    rng = np.random.default_rng([seed, shots])
    scores = []
    for _ in range(draws):
        chosen = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:shots] for c in np.unique(y)])
        scores.append(probe_accuracy((x[chosen], y[chosen]), test))
    return float(np.mean(scores))


def _torch_softmax_regression(x: np.ndarray, y: np.ndarray, l2: float = 1e-3):
    """A linear softmax classifier fitted by full-batch L-BFGS from zeros (deterministic)."""
    classes = np.unique(y)
    target = torch.from_numpy(np.searchsorted(classes, y))
    inputs = torch.from_numpy(x).double()
    weight = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(inputs @ weight + bias, target) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda data: classes[(torch.from_numpy(data).double() @ weight + bias).argmax(1).numpy()]


def encoders_of(seed: int, runs: dict[str, dict], recipe: ACTRecipe) -> dict[str, PointTransformerEncoder]:
    torch.manual_seed(seed)
    encoders = {"random init": PointTransformerEncoder(**encoder_config(recipe))}
    for name, stage in (("Point-MAE", "mae"), ("ACT", "distill")):
        saved = torch.load(runs[stage]["run"] / "last.pt", map_location="cpu", weights_only=True)
        encoder = PointTransformerEncoder(**saved["encoder_config"])
        encoder.load_state_dict(saved["encoder"])
        encoders[name] = encoder
    return encoders


# --- one step: time and memory ----------------------------------------------------------------


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def time_one_step(stage: str, args, recipe: ACTRecipe, stores: dict[str, dict[str, Path]]) -> dict:
    """In this (fresh) process: median wall time of an optimiser step at batch --batch, and the
    peak resident memory while stepping (Linux /proc; VmHWM reset through clear_refs)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    teacher = None
    autoencoder = None
    if stage != "mae":
        teacher = prepare_teacher(recipe.autoencoder.teacher, recipe.autoencoder.teacher_depth).model
    if stage == "distill":
        autoencoder = (recipe, build_autoencoder(recipe, teacher).state_dict())  # untrained: timing only
    model = build_model(stage, recipe, teacher, autoencoder).to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-4)
    source = PointSource([paths["train"] for paths in stores.values()], recipe.data.num_points, recipe.data.sampling)
    batch = next(iter(point_loader(PointBatches(source, [np.arange(args.batch)], train_transform(recipe, stage),
                                                0, 0), 0))).to(device)
    loss_fn = loss_function(stage, recipe)

    def step():
        result = loss_fn(model, batch, 0)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up
    resident_kb = _memory_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current resident set
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    result = {"stage": stage, "seconds": float(np.median(times)), "peak_rss_mb": _memory_kb("VmHWM") / 1024,
              "resident_before_mb": resident_kb / 1024, "trainable": trainable, "frozen": frozen}
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def measure_steps(args) -> list[dict]:
    results = []
    for stage in STAGES:
        cmd = [sys.executable, __file__, "--time-step", stage, "--work", str(args.work), "--recipe", str(args.recipe),
               "--per-class", str(args.per_class), "--unlabelled-per-class", str(args.unlabelled_per_class),
               "--batch", str(args.batch), "--device", args.device,
               "--threads", str(args.threads), *[a for item in args.set for a in ("--set", item)]]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"step {stage}: {results[-1]['seconds']:.3f} s, peak RSS {results[-1]['peak_rss_mb']:.0f} MB",
              flush=True)
    return results


# --- report ---------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def probe_columns(stores: dict[str, dict[str, Path]], recipe: ACTRecipe, shots: list[int]
                  ) -> dict[str, tuple[str, int | None]]:
    """{column title: (dataset, shots or None for every label)}: a few-shot column only where
    every class of the dataset has more training objects than the shots."""
    columns: dict[str, tuple[str, int | None]] = {}
    for dataset, paths in stores.items():
        labels = PointSource([paths["train"]], recipe.data.num_points, "fps").labels  # no points loaded
        test = len(PointSource([paths["test"]], recipe.data.num_points, "fps"))
        columns[f"{dataset} ({len(labels)} train / {test} test)"] = (dataset, None)
        fewest = np.bincount(labels)[np.unique(labels)].min()
        for k in shots:
            if k < fewest:
                columns[f"{dataset}, {k}-shot"] = (dataset, k)
    return columns


def report(args, recipe: ACTRecipe, stores, unlabelled, columns, accuracy, runs, steps, wall: float) -> str:
    datasets = list(stores)
    sizes = {d: {s: len(PointSource([stores[d][s]], recipe.data.num_points, "fps")) for s in ("train", "test")}
             for d in datasets}
    extra = len(PointSource(unlabelled, recipe.data.num_points, "fps")) if unlabelled else 0
    seeds = ", ".join(map(str, args.seeds))
    first = runs[args.seeds[0]]
    lines = [
        "# ACT transfer: linear probes of pretrained point-patch encoders",
        "",
        f"`python benchmarks/act_transfer.py {' '.join(sys.argv[1:])}`".replace("`python benchmarks/act_transfer.py `",
                                                                            "`python benchmarks/act_transfer.py`"),
        "",
        f"Recipe `{args.recipe.relative_to(ROOT) if args.recipe.is_relative_to(ROOT) else args.recipe}`"
        + (f" with `{' '.join(args.set)}`" if args.set else "")
        + f": {recipe.data.num_points} points, {recipe.patches.num_groups} patches of {recipe.patches.group_size}, "
        f"student {recipe.encoder.depth} blocks x {recipe.encoder.embed_dim}, teacher `{recipe.autoencoder.teacher}`"
        f" ({recipe.autoencoder.teacher_depth or 'all'} blocks), {recipe.autoencoder.num_prompts} prompts. "
        f"Pretraining on the pooled training splits"
        + (f" and {extra} more synthetic objects" if extra else "")
        + f" ({sum(sizes[d]['train'] for d in datasets) + extra} objects, no labels): "
        f"Point-MAE {first['mae']['steps']} steps; ACT stage I {first['autoencoder']['steps']} + "
        f"stage II {first['distill']['steps']} steps; batch {recipe.mae.batch_size}; seeds {seeds}; "
        f"device {args.device}. Whole benchmark: {wall / 60:.1f} min on {platform.machine()} "
        f"({os.cpu_count()} cores, shared).",
        "",
        "## Linear-probe accuracy (%), mean ± std over seeds",
        "",
        f"k-shot: the probe fitted on k random training objects per class, mean of {args.draws} draws per seed.",
        "",
        "| encoder | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in ENCODERS:
        lines.append(f"| {name} | " + " | ".join(mean_std(accuracy[c][name]) for c in columns) + " |")
    lines += ["", f"Per seed ({seeds}): " + "; ".join(
        f"{c}: " + ", ".join(f"{name} " + "/".join(f"{v:.1f}" for v in accuracy[c][name]) for name in ENCODERS)
        for c in columns) + ".", ""]
    mae_time = next(s["seconds"] for s in steps if s["stage"] == "mae")
    lines += [
        f"## One optimiser step at batch {args.batch} ({args.device}, {args.threads} thread(s)), fresh process per stage",
        "",
        "| stage | time (s) | time / Point-MAE step | peak RSS while stepping (MB) | RSS before the step (MB) | trainable params | frozen params |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(f"| {s['stage']} | {s['seconds']:.3f} | {s['seconds'] / mae_time:.2f} | {s['peak_rss_mb']:.0f} | "
                     f"{s['resident_before_mb']:.0f} | {s['trainable']:,} | {s['frozen']:,} |")
    lines += ["", "Pretrained encoder checkpoints (key \"encoder\", constructor arguments under \"encoder_config\"):", ""]
    for seed in args.seeds:
        for stage, name in (("distill", "ACT"), ("mae", "Point-MAE")):
            path = runs[seed][stage]["run"] / "last.pt"
            lines.append(f"- seed {seed}, {name}: `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "act_transfer")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "act-tiny.toml")
    parser.add_argument("--set", action="append", default=[], help="recipe override key=value (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="Point-MAE and ACT stage-II steps")
    parser.add_argument("--ae-steps", type=int, default=200, help="ACT stage-I steps")
    parser.add_argument("--per-class", type=int, default=15, help="synthetic objects per class (18 classes)")
    parser.add_argument("--unlabelled-per-class", type=int, default=0,
                        help="extra synthetic objects per class, pretraining only (synthesis seed 1)")
    parser.add_argument("--shots", type=int, nargs="*", default=[1, 4],
                        help="few-shot probes: labelled training objects per class (datasets with more per class)")
    parser.add_argument("--draws", type=int, default=10, help="random draws per few-shot probe")
    parser.add_argument("--batch", type=int, default=32, help="batch of the one-step measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "act_transfer.md",
                        help="report (and its .json beside)")
    parser.add_argument("--time-step", choices=STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.recipe = args.recipe.resolve()
    recipe = load_recipe(args.recipe, ACTRecipe, args.set)
    set_quiet(True)
    stores, unlabelled = build_data(args.work, args.per_class, args.unlabelled_per_class)
    if args.time_step:
        print(json.dumps(time_one_step(args.time_step, args, recipe, stores)))
        return

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    columns = probe_columns(stores, recipe, args.shots)
    accuracy = {column: {name: [] for name in ENCODERS} for column in columns}
    runs = {}
    for seed in args.seeds:
        runs[seed] = pretrain(args, stores, unlabelled, seed, recipe)
        for name, encoder in encoders_of(seed, runs[seed], recipe).items():
            for dataset, paths in stores.items():
                train = features(encoder, paths["train"], recipe, torch.device(args.device))
                test = features(encoder, paths["test"], recipe, torch.device(args.device))
                for column, (of, shots) in columns.items():
                    if of == dataset:
                        accuracy[column][name].append(probe_accuracy(train, test) if shots is None
                                                      else few_shot_accuracy(train, test, shots, args.draws, seed))
        print(f"seed {seed}: " + "; ".join(f"{c} " + ", ".join(f"{n} {accuracy[c][n][-1]:.1f}" for n in ENCODERS)
                                           for c in columns), flush=True)
    steps = measure_steps(args)
    text = report(args, recipe, stores, unlabelled, columns, accuracy, runs, steps, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, text)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps({
        "argv": sys.argv[1:], "accuracy": accuracy, "steps": steps,
        "runs": {str(s): {k: {**v, "run": str(v["run"])} for k, v in r.items()} for s, r in runs.items()},
    }, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
