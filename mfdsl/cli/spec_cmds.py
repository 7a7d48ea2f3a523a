"""Spec commands: validate, compile, convert, fmt."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Optional, Sequence, Tuple

import click

from ..errors import CommandError, SpecError
from ..ir import ModelSpec
from .app import main
from .analysis_cmds import IMG_SIZE_OPT, INPUT_OPT, load_at_size
from .checkpoint_opts import checkpoint_path_cb

_SI = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_count(text: Optional[str], option: Optional[str] = None) -> Optional[int]:
    """'2G' -> 2_000_000_000; plain integers too. ``option`` names the flag in errors."""
    if text is None:
        return None
    t = text.strip().upper()
    mult = 1
    if t and t[-1] in _SI:
        mult, t = _SI[t[-1]], t[:-1]
    try:
        value = float(t) * mult
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a count like 150M or 2G",
                                 param_hint=option) from None
    if not math.isfinite(value):  # inf, nan, 1e400: no count
        raise click.BadParameter(f"'{text}' is not a count like 150M or 2G",
                                 param_hint=option)
    if value < 1:
        raise click.BadParameter(f"'{text}' must be at least 1", param_hint=option)
    return int(value)


def _limit_options() -> list:
    """One --max-X option per size limit that declares a CLI flag (mfdsl.ir.LimitsSpec)."""
    from ..ir import LimitsSpec, settings_of

    return [click.option(meta.cli, name, metavar="N", default=None,
                         help=f"Raise the limit: {meta.doc[0].lower()}{meta.doc[1:-1]} "
                              f"(e.g. {meta.examples[0] if meta.examples else '2G'}).")
            for name, meta, _ in settings_of(LimitsSpec) if meta.cli]


limit_options = _limit_options()


def with_limits(f):
    for opt in reversed(limit_options):
        f = opt(f)
    return f


def load_checked(path: str, max_params: Optional[str] = None,
                 max_macs: Optional[str] = None, **limits: Optional[str]) -> ModelSpec:
    """Load a spec file, apply command-line limits (``max_X="2G"``), run every check and
    the size limits."""
    from ..api import check_spec, load_spec

    spec = load_spec(path)
    for name, value in parse_limits(max_params=max_params, max_macs=max_macs,
                                    **limits).items():
        if value is not None:
            setattr(spec.limits, name, value)
    return check_spec(spec)


def parse_limits(**limits: Optional[str]) -> dict:
    """``max_X="2G"`` -> ``{max_X: 2_000_000_000}`` (None kept)."""
    from ..ir import LimitsSpec, setting_of

    return {name: parse_count(text, meta.cli if meta else None)
            for name, text in limits.items()
            for meta in [setting_of(LimitsSpec, name)]}


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
@with_limits
def validate(specs: Sequence[str], quiet: bool, **limits: Optional[str]) -> None:
    """Check spec files without building them.

    Exit 0 when every SPEC is valid, 2 otherwise. Errors are printed as
    path:line:col: error: message, with the source line and a hint.
    """
    bad = 0
    for path in specs:
        try:
            spec = load_checked(path, **limits)
        except SpecError as err:
            bad += 1
            click.echo(err.render(), err=True)
            continue
        if not quiet:
            click.echo(f"{path}: ok ({spec.name}, {len(spec.stages)} stages, "
                       f"{sum(spec.depths)} blocks)")
    if bad:
        click.echo(f"{bad} of {len(specs)} spec(s) invalid", err=True)
        sys.exit(2)


@main.command("compile")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Optimise for this device (torch.compile, layouts, autocast).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              show_default=True, help="Compute dtype on the target (autocast on CUDA).")
@click.option("--mode", type=click.Choice(["default", "max-autotune", "eager"]),
              default="default", show_default=True, help="torch.compile mode ('eager': none).")
@click.option("--fold", is_flag=True, help="Apply the inference folding passes.")
@click.option("--checkpoint", type=click.Path(), callback=checkpoint_path_cb,
              default=None, help="Load weights (mfdsl, timm or official format) before "
                                 "optimising; a run folder means its last checkpoint.")
@IMG_SIZE_OPT
@INPUT_OPT
@with_limits
def compile_cmd(spec: str, as_json: bool, target: Optional[str], dtype: str, mode: str,
                fold: bool, checkpoint: Optional[str], img_size: Optional[Tuple[int, int]],
                input_size: Optional[Tuple[int, int, int]], **limits: Optional[str]) -> None:
    """Check SPEC, lower it to a PyTorch model and report what was built.

    Prints a per-stage table (mixer, depth, width, output shape, params, MACs, and of
    those attention's QK^T and attn@V part, "attn N^2"). MACs count convolutions, linear
    layers and the attention / random-mixing matrix products per image, the paper's
    convention.
    """
    from ..lower import lower
    from ..summary import format_table, summarize

    if target is None and not fold and (dtype != "fp32" or mode != "default"):
        raise click.UsageError("--dtype and --mode choose how to optimise for --target "
                               "(or --fold); give --target cpu or --target cuda")
    ir = load_at_size(spec, img_size, input_size, **parse_limits(**limits))
    if checkpoint:
        from ..runner.run_folder import check_weights_model

        check_weights_model(ir, checkpoint)  # a RunError is reported by the CLI group
    model = lower(ir, target=target or "cpu")
    if checkpoint:
        from ..runner.run_weights import load_run_weights

        load_run_weights(model, checkpoint, "--checkpoint")
    summary = summarize(ir, model)
    applied = None
    if target is not None or fold:
        from ..target import compile_for_target

        model.eval()
        result = compile_for_target(model, target=target or "cpu", dtype=dtype, mode=mode,
                                    fold=fold)
        applied = result.summary
    if as_json:
        out = summary.to_json()
        if applied is not None:
            out["optimisations"] = applied
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(format_table(summary))
    if applied is not None:
        click.echo("optimisations: " + ", ".join(f"{k}={v}" for k, v in applied.items()))


def _emit(spec: Any, fmt: str, dest_dir: str = ".",
          schema_ref: Optional[str] = None) -> str:
    """The spec or space as ``fmt`` text; a YAML file's schema comment is relative to
    ``dest_dir``."""
    from ..space.ir import Space

    space = isinstance(spec, Space)
    if fmt == "mf":
        if space:
            from ..space.emit import to_mf_space

            return to_mf_space(spec)
        from ..emit.mf import to_mf

        return to_mf(spec)
    ref = schema_ref or _schema_ref(dest_dir, space)
    if space:
        from ..space.emit import to_yaml_space

        return to_yaml_space(spec, ref)
    from ..emit.yaml import to_yaml

    return to_yaml(spec, schema_ref=ref)


def _schema_ref(dest_dir: str, space: bool = False) -> str:
    """The JSON Schema's path as seen from a YAML file in ``dest_dir`` (for editors); the
    design-space schema's for a space."""
    from ..resources import grammar_file
    from ..schema import SCHEMA_FILE, SPACE_SCHEMA_FILE

    target = str(grammar_file(SPACE_SCHEMA_FILE if space else SCHEMA_FILE))
    try:
        rel = os.path.relpath(target, os.path.abspath(dest_dir or "."))
    except ValueError:  # another drive on Windows
        rel = target
    return rel.replace(os.sep, "/")


_SPEC_EXTS = {".mf": "mf", ".yaml": "yaml", ".yml": "yaml"}


def _format_of(path: str) -> str:
    return "mf" if path.lower().endswith(".mf") else "yaml"


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--to", "to", type=click.Choice(["yaml", "mf"]), required=True,
              help="The output format.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write here instead of standard output.")
def convert(spec: str, to: str, output: Optional[str]) -> None:
    """Convert SPEC (a spec or a design space) between .mf and .yaml, losslessly (A -> B
    -> A gives the same IR, or the same space)."""
    from ..api import load_spec

    if output:
        out_fmt = _SPEC_EXTS.get(os.path.splitext(output)[1].lower())
        if out_fmt is not None and out_fmt != to:
            raise click.BadParameter(
                f"'{output}' names a .{out_fmt} file but --to is {to}; the file could not "
                f"be read back", param_hint="'-o' / '--output'")
    if output:
        from .. import fsio

        if fsio.same_file(output, spec):
            # Converting onto the input would drop what the canonical form cannot keep
            # (comments): that is `fmt -w`'s job, which refuses to lose them.
            raise CommandError(f"-o {output} is the input file {spec}; convert never "
                               "overwrites its input (use `mfdsl fmt -w` to reformat a file "
                               "in place)", 1)
    dest = os.path.dirname(output) if output else os.path.dirname(spec)
    from ..space.read import space_or_none

    text = _emit(space_or_none(spec) or load_spec(spec), to, dest)
    if output:
        _write_atomic(output, text)
    else:
        click.echo(text, nl=False)


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-w", "--write", is_flag=True, help="Rewrite the files in place.")
@click.option("--check", is_flag=True,
              help="Exit 1 if any file is not in canonical form; change nothing.")
@click.option("--drop-comments", is_flag=True,
              help="With -w, allow dropping comments that the canonical form cannot keep.")
def fmt(specs: Sequence[str], write: bool, check: bool, drop_comments: bool) -> None:
    """Print each SPEC in its one canonical form (same format as the input).

    Comment lines above `model` in .mf files are kept; other comments are not part of
    the spec and -w refuses to drop them unless --drop-comments is given. Exit 2 if a
    SPEC is invalid or was not rewritten.
    """
    if check and write:
        raise click.UsageError("--check changes nothing; it cannot be used with -w")
    changed = 0
    refused = 0
    for path in specs:
        try:
            original, text = _canonical(path)
        except SpecError as err:  # report it and go on with the other files
            refused += 1
            click.echo(err.render(), err=True)
            continue
        same = original == text
        if check:
            if not same:
                changed += 1
                click.echo(f"{path}: not in canonical form", err=True)
        elif write:
            lost = [c for c in _comments(original) if c not in _comments(text)]
            if lost and not drop_comments:
                refused += 1
                click.echo(f"{path}: not rewritten: formatting would drop {len(lost)} "
                           f"comment(s), first {lost[0]!r} (use --drop-comments)", err=True)
            elif not same:
                _write_atomic(path, text)
                click.echo(f"formatted {path}", err=True)
        else:
            click.echo(text, nl=False)
    if refused:  # an invalid file outranks a merely unformatted one
        sys.exit(2)
    if check and changed:
        sys.exit(1)


def _canonical(path: str) -> "tuple[str, str]":
    """(file text, its canonical form); loading first gives located errors."""
    from ..api import load_spec

    from ..api import MAX_SPEC_BYTES
    from ..fsio import read_regular

    from ..space.read import space_or_none

    space = space_or_none(path)
    spec = space or load_spec(path)  # a non-regular or oversized file is refused here
    original = read_regular(path, MAX_SPEC_BYTES, "spec file").decode("utf-8")
    if _format_of(path) == "mf":
        from ..emit.mf import format_mf, with_header

        if space is not None:
            return original, with_header(original, _emit(space, "mf"))
        # load_spec accepts a byte-order mark; the canonical form has none.
        return original, format_mf(original.lstrip("\ufeff"), path)
    first = original.lstrip("\ufeff").split("\n", 1)[0]
    ref = None
    if first.startswith("# yaml-language-server:") and "$schema=" in first:
        ref = first.split("$schema=", 1)[1].strip()  # keep the user's own schema reference
    return original, _emit(spec, "yaml", os.path.dirname(path), schema_ref=ref)


def _comments(text: str) -> list:
    """Comment texts, ignoring '#' inside quoted strings."""
    import re

    out = []
    for line in text.splitlines():
        bare = re.sub(r'"([^"\\]|\\.)*"|\'([^\'\\]|\\.)*\'', '""', line)
        if "#" in bare:
            out.append(bare[bare.index("#"):].strip())
    return out


def _write_atomic(path: str, text: str) -> None:
    """Write a user-named file atomically (``mfdsl.fsio``: permissions kept, a symlink
    written through to its target); a write that fails (missing folder, read-only
    place) exits 1 naming ``path``."""
    from .. import fsio

    try:
        fsio.write_atomic(path, text)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}", 1) from None
