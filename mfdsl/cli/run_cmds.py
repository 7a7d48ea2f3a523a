"""Runner commands: ``mfdsl train`` and ``mfdsl eval``."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Dict, NoReturn, Optional

import click

from ..errors import EXIT_INTERRUPTED, EXIT_USAGE, CommandError, SpecError, UserError
from ..run_options import EvalOptions, TrainOptions, options_of
from ..runner.launch import launched_rank
from .app import main, report
from ..pipeline import check_at_img_size
from .generated_options import _options_from, _parse_betas, _recipe_options, _run_options

_EXIT_SPEC = EXIT_USAGE


def _rank_prefix() -> str:
    rank = launched_rank()
    return f"[rank {rank}] " if rank else ""


def _fail(message: str, code: int) -> NoReturn:
    report(CommandError(message, code), _rank_prefix())


def _run_guarded(fn, *args, **kw) -> Any:
    """Run ``fn``; bad input becomes one clear message and a non-zero exit, no traceback."""
    try:
        return fn(*args, **kw)
    except UserError as err:
        # Every rank of a torchrun job reads the same spec: rank 0 alone reports it; a
        # run error marked quiet is reported by another rank.
        if getattr(err, "quiet", False) or (isinstance(err, SpecError) and launched_rank()):
            sys.exit(err.exit_code)
        report(err, "" if isinstance(err, SpecError) else _rank_prefix())
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)


def _launch_if_asked(options: Dict[str, Any]) -> None:
    """With --nproc-per-node / --nnodes (and not already a worker): run this command line in
    the processes the launch options ask for and exit with the first failure's code."""
    from ..runner.launch import launch, launch_plan, under_launcher

    if under_launcher():
        return
    plan = launch_plan(options)
    if plan is not None:
        sys.exit(launch(sys.argv[1:], plan))


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


def _help(doc: str, command: str) -> str:
    """A run command's help: its text, then its exit codes from the one table."""
    import inspect

    from ..errors import exit_codes_help

    return inspect.cleandoc(doc) + "\n\n" + exit_codes_help(command)


_TRAIN_HELP = """Train SPEC on an ImageFolder dataset (or the built-in one), single process or
    under torchrun (one process per device).

    \b
    Examples:
      mfdsl train specs/demo_tiny.mf
      mfdsl train specs/caformer_s18.mf --data /datasets/imagenet --per-device-batch 128
      torchrun --nproc_per_node 8 -m mfdsl.runner train specs/caformer_s18.mf --data ...
    """


@main.command("train", help=_help(_TRAIN_HELP, "train"))
@click.argument("spec", type=click.Path(dir_okay=False))
@_run_options(TrainOptions, after="output", insert=_recipe_options)
def train_cmd(spec: str, **kw: Any) -> None:
    dry_only = [meta.name_flag for name, meta, _ in options_of(TrainOptions)
                if meta.dry_run_only and kw[name] not in (None, False)]
    if dry_only and not kw["dry_run"]:
        _fail(f"{', '.join(dry_only)} only go(es) with --dry-run", 2)
    if not kw["dry_run"]:
        _launch_if_asked(kw)
    kw["betas"] = _parse_betas(kw.get("betas"))
    parsed = _run_guarded(_load_spec, spec)
    if kw["img_size"] is not None:
        # Only the size's own errors are reported here; the spec's others come, located,
        # from build_model.
        try:
            check_at_img_size(parsed, kw["img_size"])
        except SpecError as err:
            if err.line is None:
                raise
    if kw["amp"] is False and click.get_current_context().get_parameter_source(
            "amp_dtype") == click.core.ParameterSource.COMMANDLINE:
        _fail(f"--no-amp and --amp-dtype {kw['amp_dtype']} contradict each other; give one", 2)
    overrides = _recipe_overrides(kw)
    _check_overrides(parsed, overrides)
    opts = _options_from(TrainOptions, kw, batch_size=kw["batch_size"], argv=tuple(sys.argv),
                         recipe_overrides=overrides)
    opts.output = opts.output or _output_for_resume(opts.resume)
    if opts.dry_run:
        _dry_run(parsed, opts)
        return
    from ..runner.train import run_training

    _run_guarded(run_training, parsed, opts)


def _dry_run(spec, opts) -> None:
    from ..runner.plan import dry_run

    plan = _run_guarded(dry_run, spec, opts)
    if opts.as_json:
        click.echo(json.dumps(_run_guarded(plan.to_json, opts.lr_per_step)))
    else:
        click.echo(plan.summary())


_EVAL_HELP = """Evaluate CHECKPOINT (or SPEC's released weights, --pretrained): top-1, top-5, loss
    and images/s.

    A checkpoint from an mfdsl run knows its model, input size, eval transform and class
    list: SPEC may be left out, and if given must build the same model. The eval
    transform is resize, centre crop (crop_pct), interpolation, mean/std (with
    --pretrained, the release's).
    """


@main.command("eval", help=_help(_EVAL_HELP, "eval"))
@click.argument("spec", type=click.Path(dir_okay=False), required=False)
@_run_options(EvalOptions)
def eval_cmd(spec: Optional[str], **kw: Any) -> None:
    from ..runner.eval_run import run_evaluation

    o = _options_from(EvalOptions, kw)
    _launch_if_asked(vars(o))
    if (o.checkpoint is None) == (o.pretrained is None):
        _fail("give one of --checkpoint and --pretrained", 2)
    if o.pretrained is not None and spec is None:
        _fail("--pretrained needs SPEC (the zoo spec whose released weights to use)", 2)
    parsed = _run_guarded(_load_spec, spec) if spec else None
    checkpoint = o.checkpoint
    if o.pretrained is not None:
        parsed, checkpoint = _run_guarded(_pretrained_source, parsed, o.pretrained)
    quiet = o.as_json or launched_rank() != 0
    progress = (sys.stderr.isatty() and not o.as_json) if o.progress is None else o.progress
    res = _run_guarded(run_evaluation, parsed, checkpoint, o,
                       None if quiet else (lambda m: click.echo(m, err=True)), progress)
    as_json = o.as_json
    if launched_rank() != 0:
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
