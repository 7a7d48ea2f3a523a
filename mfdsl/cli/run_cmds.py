"""Runner commands: ``mfdsl train`` and ``mfdsl eval``."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Dict, NoReturn, Optional, Tuple

import click

from ..errors import CommandError, SpecError, UserError
from .app import main, report
from ..pipeline import check_at_img_size
from .common import parse_img_size
from ..runs import STATE_EXT, WEIGHTS_EXT

# More loader processes than cores only adds contention (and a DataLoader warning).
_DEFAULT_WORKERS = min(8, os.cpu_count() or 1)

_EXIT_SPEC = 2


def _rank_prefix() -> str:
    rank = os.environ.get("RANK")
    return f"[rank {rank}] " if rank not in (None, "0") else ""


def _fail(message: str, code: int) -> NoReturn:
    report(CommandError(message, code), _rank_prefix())


def _run_guarded(fn, *args, **kw) -> Any:
    """Run ``fn``; bad input becomes one clear message and a non-zero exit, no traceback."""
    try:
        return fn(*args, **kw)
    except UserError as err:
        # Every rank of a torchrun job reads the same spec: rank 0 alone reports it; a
        # run error marked quiet is reported by another rank.
        if getattr(err, "quiet", False) or (isinstance(err, SpecError)
                                            and os.environ.get("RANK") not in (None, "0")):
            sys.exit(err.exit_code)
        report(err, "" if isinstance(err, SpecError) else _rank_prefix())
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _launch_if_asked(nproc: Optional[int]) -> None:
    """With --nproc-per-node (and not already a worker): run this command line in that many
    processes and exit with the first failure's code."""
    from ..runner.launch import launch, under_launcher

    if nproc is not None and not under_launcher():
        sys.exit(launch(sys.argv[1:], nproc))


def _parse_betas(text: Optional[str]) -> Optional[Tuple[float, float]]:
    if text is None:
        return None
    try:
        vals = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not two numbers like 0.9,0.999",
                                 param_hint="'--betas'") from None
    if len(vals) != 2:
        raise click.BadParameter(f"'{text}' is not two numbers like 0.9,0.999",
                                 param_hint="'--betas'")
    return vals  # type: ignore[return-value]


def _load_spec(path: str):
    from ..api import load_spec

    return load_spec(path)


def _recipe_overrides(kw: Dict[str, Any]) -> Dict[str, Any]:
    """Recipe fields named on the command line (None = not given). --no-X wins over X."""
    from ..ir import STR, RecipeSpec, settings_of

    o: Dict[str, Any] = {}
    for name, meta, _ in settings_of(RecipeSpec):
        if meta.cli_off and kw.get("no_" + name) and kw.get(name) is not None:
            _fail(f"--no-{meta.cli[2:]} and {meta.cli} {kw[name]} contradict each other; give "
                  "one", 2)
        if meta.cli and kw.get(name) is not None:
            o[name] = kw[name]
            if meta.optional and kw[name] in ("none", "off", ""):
                o[name] = None  # `--randaugment none`, `--ema none`: as in a spec file
            if meta.optional and meta.cli_off and meta.type != STR and kw[name] == 0:
                o[name] = None  # `--ema 0`, `--clip-grad 0`: off, as the help says
        if meta.cli_off and kw.get("no_" + name):
            o[name] = None if meta.optional else 0.0
    if kw.get("amp") is not None:  # --amp/--no-amp: a run option that also sets the recipe's
        o["amp"] = kw["amp"]
    return o


def _check_overrides(spec, overrides: Dict[str, Any]) -> None:
    """Report an invalid command-line recipe value as the command line's fault."""
    if not overrides:
        return
    from ..checks import check_recipe
    from ..ir import RecipeSpec

    base = spec.recipe if spec.recipe is not None else RecipeSpec()
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(RecipeSpec)
              if f.name != "locs"}
    values.update(overrides)
    try:
        check_recipe(RecipeSpec(**values))
    except SpecError as err:
        try:
            check_recipe(base)
        except SpecError:
            return  # the spec itself is wrong: build_model reports it with its location
        hint = err.hint
        if (hint is None and "warmup_epochs" in err.message and "epochs" in overrides
                and "warmup_epochs" not in overrides):
            hint = "lower --warmup-epochs as well"
        _fail(f"command-line recipe value: {err.message}"
              + (f" (hint: {hint})" if hint else ""), _EXIT_SPEC)


def _output_for_resume(resume: Optional[str]) -> Optional[str]:
    """The run folder a ``--resume PATH`` belongs to (used when --output is not given)."""
    if resume in (None, "auto"):
        return None
    from ..runs import run_folder_of_path

    return run_folder_of_path(resume)


class _OrNone(click.ParamType):
    """A number, or ``none`` (``off``) for an optional setting, as a spec file writes it."""

    def __init__(self, number: type) -> None:
        self.number = number
        self.name = f"{number.__name__}|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("none", "off"):
            return "none"
        try:
            return self.number(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number or none", param, ctx)


def _recipe_options(f):
    """One option per recipe setting that declares a flag (mfdsl.ir.RecipeSpec metadata),
    plus --no-X where ``cli_off``: a new recipe field needs no edit here."""
    from ..ir import BOOL, FLOAT, FLOATS, INT, STR, RecipeSpec, settings_of

    opts = []
    for name, meta, default in settings_of(RecipeSpec):
        if not meta.cli:
            continue
        shown = "none" if default is None else (",".join(map(str, default))
                                                 if isinstance(default, tuple) else default)
        help_text = f"{meta.doc} Recipe {name}; default {shown}."
        if meta.optional and meta.cli_off and meta.type != STR:
            help_text += " 0 or none: off."
        if meta.choices:
            kind: Any = click.Choice(list(meta.choices))
        elif meta.type in (INT, FLOAT):
            number = int if meta.type == INT else float
            kind = _OrNone(number) if meta.optional else number
        elif meta.type == BOOL:  # pragma: no cover - no recipe bool has a generated flag
            kind = bool
        else:
            kind = str
        if meta.type == FLOATS:
            help_text += " Write it as numbers separated by commas, e.g. 0.9,0.999."
        opts.append(click.option(meta.cli, name, type=kind, default=None, help=help_text))
        if meta.cli_off:
            off = "none" if meta.optional else "0"
            opts.append(click.option("--no-" + meta.cli[2:], "no_" + name, is_flag=True,
                                     help=f"Set recipe {name} to {off}."))
    for opt in reversed(opts):
        f = opt(f)
    return f


@main.command("train")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(), default=None,
              help="Dataset folder: an ImageFolder tree (train/<class>/*, val/<class>/*), a "
                   "Hugging Face parquet folder (data/train-*.parquet, data/validation-*) or "
                   "WebDataset shards (*-train-NNNN.tar, *-validation-NNNN.tar). Default: the "
                   "built-in TinyShapes dataset (generated offline).")
@click.option("--train-split", default="train", show_default=True)
@click.option("--val-split", default="val", show_default=True)
@click.option("--val-samples", type=click.IntRange(min=1), default=None,
              help="Validate on this many images spread evenly over the val split (quick "
                   "runs; the score is not the full split's). Default: all.")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Run folder. Default: runs/<model name>.")
@_recipe_options
@click.option("--per-device-batch", type=int, help="Micro-batch per process.")
@click.option("--accum", type=int, help="Gradient accumulation steps.")
@click.option("--img-size", help="Training/eval image size, e.g. 224 or 256x192 "
                                 "(default: the spec's input size).")
@click.option("--no-flip", is_flag=True, help="No random horizontal flip.")
@click.option("--crop-scale-min", type=float, help="Smallest RandomResizedCrop area fraction "
                                                   "(default 0.08; 0.35 on the embedded data).")
@click.option("--init-from", help="Start from these weights: a checkpoint file (mfdsl, timm or "
                                  "official) or a release name, e.g. "
                                  "caformer_s18.sail_in22k_ft_in1k (fetched via the HF cache).")
@click.option("--inherit", multiple=True, metavar="[PARTS=]SOURCE",
              help="Copy trained parts from SOURCE (release name, run folder or checkpoint) "
                   "where role, kind and shape match; PARTS like stage0-1,head. Repeatable; "
                   "see docs/training.md.")
@click.option("--inherit-depth", type=click.Choice(["first", "repeat"]), default="first",
              show_default=True, help="Deeper target stages: extra blocks new, or the "
                                      "source's blocks repeated cyclically.")
@click.option("--workers", type=int, default=_DEFAULT_WORKERS, show_default=True,
              help="DataLoader worker processes per training process (default: CPU cores, "
                   "at most 8).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--resume", help=f"Continue from a checkpoint: a {WEIGHTS_EXT}/{STATE_EXT} "
                               "file, a run folder, or 'auto' (the latest in --output).")
@click.option("--overwrite", is_flag=True,
              help="Start a new run in an --output folder that holds an earlier run: its run "
                   "files (checkpoints, metrics, run.json ...) are removed first.")
@click.option("--allow-recipe-change", is_flag=True,
              help="With --resume: let recipe values differ from the run's (refused "
                   "otherwise); each change is recorded with its step in "
                   "recipe_changes.jsonl.")
@click.option("--wait-for-lock", type=click.FloatRange(min=0), default=0, metavar="SECONDS",
              help="If another run holds the --output folder, wait up to this long for it "
                   "to end (a requeued job) instead of stopping at once.")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (the "
                                            "schedule is compressed to fit).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--compile/--no-compile", default=None, help="torch.compile (default: on CUDA).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="channels_last memory format (default: on CUDA).")
@click.option("--amp/--no-amp", default=None,
              help="Autocast (default: the recipe's amp, on CUDA only).")
@click.option("--amp-dtype", type=click.Choice(["bfloat16", "float16"]), default="bfloat16",
              show_default=True)
@click.option("--nan-policy", type=click.Choice(["skip", "stop"]), default="skip",
              show_default=True, help="On a non-finite loss: skip the step, or stop (exit 3).")
@click.option("--nan-max-consecutive", type=click.IntRange(min=1), default=5, show_default=True,
              help="With skip: stop after this many non-finite steps in a row.")
@click.option("--keep-recent", type=click.IntRange(min=0), default=3, show_default=True,
              help="Periodic checkpoints kept besides last and best.")
@click.option("--ckpt-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also checkpoint every N optimizer steps (0: at epoch ends only).")
@click.option("--log-every", type=click.IntRange(min=1), default=50, show_default=True,
              help="Optimizer steps between log lines / metric records.")
@click.option("--eval-every", type=click.IntRange(min=1), default=1, show_default=True, help="Epochs between "
                                                                            "validations.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
              help="Start this many processes (one per device) on this machine, like "
                   "torchrun --standalone; a failing process's message is the only one.")
@click.option("--tensorboard/--no-tensorboard", default=True, show_default=True)
@click.option("--progress/--no-progress", default=None,
              help="tqdm progress bar (default: when stderr is a terminal).")
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=False, show_default=True,
              help="Recompute each block's activations in backward instead of keeping them: "
                   "the same gradients, less activation memory, ~1/3 more compute.")
@click.option("--from-scratch", is_flag=True,
              help="Start from random weights although the recipe names finetune_from.")
@click.option("--dry-run", is_flag=True,
              help="Print the run plan (batch plan, lr at every step, optimizer, "
                   "augmentation, EMA, precision, init, deviations from the official recipe) "
                   "without training or writing anything.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
@click.option("--dataset-size", type=int, default=None,
              help="With --dry-run: plan for this many training images instead of --data.")
@click.option("--world-size", type=int, default=None,
              help="With --dry-run: plan for this many processes (default: --nproc-per-node,"
                   " else 1).")
def train_cmd(spec: str, **kw: Any) -> None:
    """Train SPEC on an ImageFolder dataset (or the built-in one), single process or
    under torchrun (one process per device).

    \b
    Examples:
      mfdsl train specs/demo_tiny.mf
      mfdsl train specs/caformer_s18.mf --data /datasets/imagenet --per-device-batch 128
      torchrun --nproc_per_node 8 -m mfdsl.runner train specs/caformer_s18.mf --data ...
    Exit codes: 0 done, 2 bad spec/options/data/checkpoint, 3 stopped on non-finite loss.
    """
    from ..runner.options import TrainOptions

    dry = kw.pop("dry_run")
    nproc = kw.pop("nproc_per_node")
    dry_only = [f"--{n.replace('_', '-')}" for n in ("as_json", "dataset_size", "world_size")
                if kw.get(n) not in (None, False)]
    if dry_only and not dry:
        _fail(f"{', '.join(dry_only).replace('--as-json', '--json')} only go(es) with "
              "--dry-run", 2)
    if not dry:
        _launch_if_asked(nproc)
    kw["betas"] = _parse_betas(kw.get("betas"))
    try:
        img_size = parse_img_size(kw.get("img_size"), minimum=8)
    except click.BadParameter as err:
        err.param_hint = "'--img-size'"  # parse_img_size does not know the option's name
        raise
    parsed = _run_guarded(_load_spec, spec)
    if img_size is not None:
        # Only the size's own errors are reported here; the spec's others come, located,
        # from build_model.
        try:
            check_at_img_size(parsed, img_size)
        except SpecError as err:
            if err.line is None:
                raise
    if kw["amp"] is False and click.get_current_context().get_parameter_source(
            "amp_dtype") == click.core.ParameterSource.COMMANDLINE:
        _fail(f"--no-amp and --amp-dtype {kw['amp_dtype']} contradict each other; give one", 2)
    overrides = _recipe_overrides(kw)
    _check_overrides(parsed, overrides)
    opts = TrainOptions(
        data=kw["data"], train_split=kw["train_split"], val_split=kw["val_split"],
        output=kw["output"] or _output_for_resume(kw["resume"]),
        batch_size=kw["batch_size"], per_device_batch=kw["per_device_batch"],
        accum=kw["accum"], img_size=img_size, workers=kw["workers"], seed=kw["seed"],
        resume=kw["resume"], overwrite=kw["overwrite"], max_steps=kw["max_steps"],
        device=kw["device"],
        compile=kw["compile"], channels_last=kw["channels_last"], amp=kw["amp"],
        amp_dtype=kw["amp_dtype"], hflip=0.0 if kw["no_flip"] else 0.5,
        crop_scale_min=kw["crop_scale_min"],
        nan_policy=kw["nan_policy"], nan_max_consecutive=kw["nan_max_consecutive"],
        keep_recent=kw["keep_recent"], ckpt_every=kw["ckpt_every"],
        log_every=kw["log_every"], eval_every=kw["eval_every"],
        tensorboard=kw["tensorboard"], progress=kw["progress"], argv=tuple(sys.argv),
        val_samples=kw["val_samples"],
        recipe_overrides=overrides, init_from=kw["init_from"],
        inherit=tuple(kw["inherit"]), inherit_depth=kw["inherit_depth"],
        grad_checkpointing=kw["grad_checkpointing"],
        allow_recipe_change=kw["allow_recipe_change"], wait_for_lock=kw["wait_for_lock"],
        from_scratch=kw["from_scratch"],
    )
    if opts.workers < 0:
        _fail("--workers must be >= 0", 2)
    if dry:
        _dry_run(parsed, opts, kw["dataset_size"], kw["world_size"] or nproc, kw["as_json"])
        return
    from ..runner.train import run_training

    _run_guarded(run_training, parsed, opts)


def _dry_run(spec, opts, dataset_size: Optional[int], world_size: Optional[int],
             as_json: bool) -> None:
    from ..runner.plan import dry_run

    plan = _run_guarded(dry_run, spec, opts, dataset_size, world_size)
    if as_json:
        click.echo(json.dumps(plan.to_json()))
    else:
        click.echo(plan.summary())


@main.command("eval")
@click.argument("spec", type=click.Path(dir_okay=False), required=False)
@click.option("--checkpoint", "-c", type=click.Path(),
              help=f"Weights: a run folder (its last checkpoint), an mfdsl {WEIGHTS_EXT}, or a "
                   "timm/official checkpoint (then SPEC is needed).")
@click.option("--pretrained", is_flag=False, flag_value="default", default=None,
              metavar="[TAG|NAME]",
              help="SPEC's released ImageNet weights (default tag for its size), or a tag "
                   "(sail_in22k_ft_in1k) or release name; fetched via the Hugging Face cache.")
@click.option("--data", type=click.Path(), default=None,
              help="ImageFolder root (its --split sub-folder is used if present), or a "
                   "parquet or tar shard folder (its --split shards). Default: "
                   "the built-in TinyShapes val split.")
@click.option("--split", default="val", show_default=True)
@click.option("--img-size", help="Evaluate at this size instead of the run's (e.g. 224 or "
                                 "256x192).")
@click.option("--crop-pct", type=float, help="Centre-crop fraction instead of the run's.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=_DEFAULT_WORKERS, show_default=True,
              help="DataLoader worker processes.")
@click.option("--device", default="auto", show_default=True)
@click.option("--amp/--no-amp", default=None, help="bf16 autocast (default: on CUDA).")
@click.option("--channels-last/--no-channels-last", default=None)
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
              help="Start this many processes (one per device) on this machine, like "
                   "torchrun --standalone; a failing process's message is the only one.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--val-samples", type=click.IntRange(min=1), default=None,
              help="Evaluate only this many images, spread evenly over the split.")
@click.option("--progress/--no-progress", default=None,
              help="tqdm progress bar (default: when stderr is a terminal and not --json).")
def eval_cmd(spec: Optional[str], checkpoint: Optional[str], pretrained: Optional[str],
             data: Optional[str], split: str,
             img_size: Optional[str], crop_pct: Optional[float], batch_size: int,
             workers: int, device: str, amp: Optional[bool], channels_last: Optional[bool],
             nproc_per_node: Optional[int], as_json: bool, val_samples: Optional[int],
             progress: Optional[bool]) -> None:
    """Evaluate CHECKPOINT (or SPEC's released weights, --pretrained): top-1, top-5, loss
    and images/s.

    A checkpoint from an mfdsl run knows its model, input size, eval transform and class
    list: SPEC may be left out, and if given must build the same model. The eval
    transform is resize, centre crop (crop_pct), interpolation, mean/std (with
    --pretrained, the release's).
    """
    from ..runner.evaluate import run_evaluation

    _launch_if_asked(nproc_per_node)
    if (checkpoint is None) == (pretrained is None):
        _fail("give one of --checkpoint and --pretrained", 2)
    if pretrained is not None and spec is None:
        _fail("--pretrained needs SPEC (the zoo spec whose released weights to use)", 2)
    try:
        size = parse_img_size(img_size, minimum=8)
    except click.BadParameter as err:
        err.param_hint = "'--img-size'"
        raise
    parsed = _run_guarded(_load_spec, spec) if spec else None
    if pretrained is not None:
        parsed, checkpoint = _run_guarded(_pretrained_source, parsed, pretrained)
    quiet = as_json or os.environ.get("RANK") not in (None, "0")
    res = _run_guarded(run_evaluation, parsed, checkpoint, data, split, batch_size, workers,
                       device, amp, "bfloat16", channels_last, size, crop_pct,
                       None if quiet else (lambda m: click.echo(m, err=True)), val_samples,
                       (sys.stderr.isatty() and not as_json) if progress is None else progress)
    if os.environ.get("RANK") not in (None, "0"):
        return
    paths = res.pop("skipped_paths")
    if as_json:
        res["skipped_paths"] = paths[:100]
        click.echo(json.dumps(res, sort_keys=True))
        return
    click.echo(f"{os.path.basename(res['checkpoint'])} on {res['data']} "
               f"({res['images']} images, {res['classes']} classes, {res['device']}):")
    from ..runner.metrics import pct

    click.echo(f"  top-1 {res['top1']:.2f}%   top-5 {pct(res['top5'])}   loss {res['loss']:.4f}"
               f"   {res['img_s']:.1f} img/s")
    if res["skipped_images"]:
        from ..data.dataset import show_path

        click.echo(f"  skipped {res['skipped_images']} unreadable image(s): "
                   + ", ".join(show_path(p) for p in paths[:5]))


def _pretrained_source(spec, which: str):
    """(spec with the release's eval context, path of the verified weights file)."""
    from ..api import check_spec
    from ..weights import apply_release_context, fetch, resolve_release

    check_spec(spec)
    release = resolve_release(spec, True if which == "default" else which, purpose="eval")
    spec, notes = apply_release_context(spec, release)
    for n in notes:
        click.echo(f"note: {n}", err=True)
    return spec, fetch(release)
