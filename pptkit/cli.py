"""The pptkit command line: parses options, then calls one function in `pptkit.stages`.

Heavy imports (torch, open3d, h5py) happen inside the commands so that `--help` is instant.
Exit codes: 0 success, 1 unexpected failure, 2 bad input or usage (one clear line).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from pptkit import __version__
from pptkit.errors import InputError
from pptkit.progress import console, set_quiet

app = typer.Typer(
    name="pptkit",
    help="3D representation learning on point clouds: preprocess, train and evaluate.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_verbose = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pptkit {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="More detail; tracebacks on failure.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Plain lines instead of live progress bars.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    global _verbose
    _verbose = verbose
    set_quiet(quiet)


Seed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result on CPU.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")]


@app.command()
def synth(
    style: Annotated[str, typer.Option(help="scannet | s3dis | structured3d | objects")],
    out: Annotated[Path, typer.Option(help="Folder to write the raw files into.")],
    scenes: Annotated[int, typer.Option(help="Number of scenes (or objects per class for 'objects').")] = 8,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write synthetic rooms (or objects) in a dataset's own native raw format."""
    from pptkit.stages.synth import run_synth

    run_synth(style=style, out=out, scenes=scenes, seed=seed, overwrite=overwrite)


@app.command()
def preprocess(
    dataset: Annotated[str, typer.Option(help="scannet | s3dis | structured3d | modelnet40 | scanobjectnn | ply | npy")],
    input: Annotated[Path, typer.Option("--input", help="Folder (or file) with the raw data.")],
    output: Annotated[Path, typer.Option("--output", help="HDF5 file to write.")],
    split: Annotated[Optional[str], typer.Option(help="Split to take (train, val, test, …); the dataset's default when omitted.")] = None,
    grid_size: Annotated[float, typer.Option(help="Voxel size in metres.")] = 0.02,
    workers: Annotated[int, typer.Option(help="Processes reading scenes in parallel.")] = 1,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run without redoing finished scenes.")] = False,
    strict: Annotated[bool, typer.Option(help="Treat repairable defects (e.g. corrupt S3DIS lines) as errors.")] = False,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Read raw scans and voxelize them into one HDF5 file per split."""
    from pptkit.stages.preprocess import PreprocessOptions, run_preprocess

    run_preprocess(PreprocessOptions(
        dataset=dataset, input=input, output=output, split=split, grid_size=grid_size,
        workers=workers, resume=resume, strict=strict, seed=seed, overwrite=overwrite,
        verbose=_verbose,
    ))


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="An HDF5 file written by 'pptkit preprocess'.")],
    json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of a table.")] = False,
) -> None:
    """Summarise a preprocessed HDF5 file: classes, scenes, points, voxels, class counts."""
    from pptkit.stages.info import print_info, read_info

    print_info(read_info(file), as_json=json)


Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="More detail; tracebacks on failure.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/last.pt.")]
Overrides = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe field: key.path=value.")]


@app.command("joint-train")
def joint_train(
    data: Annotated[list[str], typer.Option("--data", help="Training set as NAME=PATH.h5 (repeat per dataset).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (config, metrics, checkpoints).")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="TOML recipe from recipes/.")] = None,
    val: Annotated[Optional[list[str]], typer.Option("--val", help="Validation set as NAME=PATH.h5.")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    resume: Resume = False,
    overrides: Overrides = None,
    verbose: Verbose = False,
) -> None:
    """Point Prompt Training: one sparse UNet on several datasets with domain prompts and PDNorm."""
    global _verbose
    _verbose = _verbose or verbose
    from pptkit.stages.joint_train import JointTrainOptions, run_joint_train

    run_joint_train(JointTrainOptions(
        recipe=recipe, data=data, val=val or [], out=out, seed=seed, device=device, resume=resume,
        overrides=overrides or [], verbose=_verbose,
    ))


@app.command()
def pretrain(
    data: Annotated[list[Path], typer.Option("--data", help="Training store PATH.h5: objects, or scenes with --crop (repeatable).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (config, metrics, checkpoints).")],
    stage: Annotated[str, typer.Option("--stage", help="autoencoder (ACT stage I) | distill (ACT stage II) | mae (Point-MAE).")],
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="TOML recipe from recipes/ (act-*.toml).")] = None,
    val: Annotated[Optional[list[Path]], typer.Option("--val", help="Held-out store PATH.h5: report its loss (repeatable).")] = None,
    autoencoder: Annotated[Optional[Path], typer.Option("--autoencoder", help="distill: a finished --stage autoencoder run folder.")] = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="Image teacher: dinov2-vits14 | PATH.safetensors | timm:NAME.")] = None,
    crop: Annotated[Optional[int], typer.Option("--crop", help="Train on random N-point crops of scene stores.")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    resume: Resume = False,
    overrides: Overrides = None,
    verbose: Verbose = False,
) -> None:
    """Self-supervised pretraining of the point-patch Transformer: ACT's two stages, or Point-MAE."""
    global _verbose
    _verbose = _verbose or verbose
    from pptkit.stages.pretrain import PretrainOptions, run_pretrain

    run_pretrain(PretrainOptions(
        recipe=recipe, data=data, out=out, stage=stage, val=val or [], autoencoder=autoencoder, teacher=teacher,
        crop=crop, seed=seed, device=device, resume=resume, overrides=overrides or [], verbose=_verbose,
    ))


@app.command()
def finetune(
    data: Annotated[list[str], typer.Option("--data", help="Object store as train=PATH.h5 (required) or val=PATH.h5.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (config, metrics, checkpoints, task.safetensors).")],
    checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="Pretrained backbone: a pretrain run folder or checkpoint (default on --resume: the run's).")] = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="TOML recipe from recipes/ (gst-*.toml).")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="gst (spectral adapters + head) | full (everything) | linear (head only).")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    resume: Resume = False,
    overrides: Overrides = None,
    verbose: Verbose = False,
) -> None:
    """Fine-tune a pretrained point Transformer for object classification: PointGST, full or linear."""
    global _verbose
    _verbose = _verbose or verbose
    from pptkit.stages.finetune import FinetuneOptions, run_finetune

    run_finetune(FinetuneOptions(
        recipe=recipe, checkpoint=checkpoint, data=data, out=out, mode=mode, seed=seed, device=device,
        resume=resume, overrides=overrides or [], verbose=_verbose,
    ))


@app.command()
def incremental(
    new_classes: Annotated[str, typer.Option("--new-classes", help="Classes to add, comma-separated (e.g. toilet,sink,bathtub).")],
    data: Annotated[str, typer.Option("--data", help="Step-t scenes as [NAME=]PATH.h5 (NAME: the base run's dataset; default the store's).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder (config, metrics, checkpoints, memory.pt).")] = None,
    base: Annotated[Optional[Path], typer.Option("--base", help="The step t-1 run: a joint-train run (label space without the new classes) or an incremental run.")] = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="TOML recipe from recipes/ (incr-*.toml).")] = None,
    tags: Annotated[Optional[Path], typer.Option("--tags", help="tags.json: scene id -> class names it contains.")] = None,
    tags_from_labels: Annotated[bool, typer.Option("--tags-from-labels", help="Derive the tags from the store's labels (benchmarks); the labels never reach training.")] = False,
    memory: Annotated[int, typer.Option("--memory", help="Old-class instances kept per class for copy-paste (0: no copy-paste).")] = 0,
    memory_data: Annotated[Optional[Path], typer.Option("--memory-data", help="Labelled store of earlier steps to cut the memory's instances from.")] = None,
    write_base_store: Annotated[Optional[Path], typer.Option("--write-base-store", help="Step 0: write --data without --new-classes (ignored) to this .h5 for joint-train, then stop.")] = None,
    encoder: Annotated[Optional[Path], typer.Option("--encoder", help="A `pptkit pretrain --crop N` run: its frozen point Transformer gives the refinement's affinity (default: the base model's features).")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    resume: Resume = False,
    overrides: Overrides = None,
    verbose: Verbose = False,
) -> None:
    """Add new classes to a trained scene model from scene-level tags alone (FMWISS carried to 3D)."""
    global _verbose
    _verbose = _verbose or verbose
    from pptkit.stages.incremental import IncrementalOptions, run_incremental

    run_incremental(IncrementalOptions(
        new_classes=new_classes, data=data, out=out, recipe=recipe, base=base, tags=tags,
        tags_from_labels=tags_from_labels, memory=memory, memory_data=memory_data,
        write_base_store=write_base_store, encoder=encoder, seed=seed, device=device, resume=resume,
        overrides=overrides or [], verbose=_verbose,
    ))


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Run folder (best.pt, else last.pt) or a .pt file; a finetune run or task file; with --task, the task's backbone.")],
    data: Annotated[list[str], typer.Option("--data", help="Dataset to score as NAME=PATH.h5 (repeatable).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="results.json path (default RUN_DIR/eval/results.json).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Test-time augmentation: rotations x scales x flip, votes per point.")] = False,
    export_ply: Annotated[Optional[Path], typer.Option("--export-ply", help="Write a coloured prediction PLY per scene here.")] = None,
    task: Annotated[Optional[Path], typer.Option("--task", help="Object task file (finetune's task.safetensors) over the backbone given as --checkpoint.")] = None,
    votes: Annotated[int, typer.Option("--votes", help="Object tasks: average the logits of N augmented views per object (0: none).")] = 0,
    export: Annotated[Optional[Path], typer.Option("--export", help="Object tasks: write the predictions here as CSV, one row per object.")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    verbose: Verbose = False,
) -> None:
    """Score a trained model per dataset: mIoU, mAcc, OA and per-class IoU on every original point
    (scene models); OA, mAcc and per-class accuracy (object tasks)."""
    global _verbose
    _verbose = _verbose or verbose
    from pptkit.stages.evaluate import EvalOptions, run_eval

    run_eval(EvalOptions(checkpoint=checkpoint, data=data, out=out, tta=tta, export_ply=export_ply, task=task,
                         votes=votes, export=export, device=device, seed=seed, verbose=_verbose))


INTERRUPTED = ("interrupted: finished work is kept (the last complete checkpoint, finished scenes); "
               "run the same command with --resume to continue")


def main() -> None:
    """Entry point: run the app and map outcomes to exit codes.

    0 success; 1 unexpected failure; 2 bad input or usage (one line); 130 Ctrl-C (one line).
    The app runs outside click's standalone mode so that Ctrl-C, usage errors and our own
    errors reach this one handler whatever the Typer version.
    """
    try:
        code = app(standalone_mode=False)
    except InputError as exc:
        console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        sys.exit(2)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # noqa: BLE001 - the one place failures are reported
        kinds = {cls.__name__ for cls in type(exc).__mro__}  # click may be Typer's vendored copy
        if "Abort" in kinds:
            code = 130
        elif "NoArgsIsHelpError" in kinds:
            exc.show()
            sys.exit(exc.exit_code)
        elif "ClickException" in kinds:  # usage errors: unknown option, missing value, ...
            console.print(Text.assemble(("error: ", "bold red"), exc.format_message()))
            sys.exit(exc.exit_code)
        else:
            if _verbose:
                console.print_exception()
            else:
                console.print(Text.assemble(("unexpected error: ", "bold red"),
                                            f"{type(exc).__name__}: {exc} (run with -v for a traceback)"))
            sys.exit(1)
    if code == 130:  # Typer turns Ctrl-C inside a command into exit code 130
        console.print(INTERRUPTED)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
