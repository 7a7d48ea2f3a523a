"""``mfdsl inspect``, ``mfdsl export`` and ``mfdsl draw``: what a spec builds, as numbers,
as a deployable file, and as a picture."""
from __future__ import annotations

import os
from typing import NoReturn, Optional, Tuple

import click

from ..errors import CommandError
from .app import main, report
from .checkpoint_opts import checkpoint_path_cb
from ..pipeline import check_at_img_size
from .common import parse_img_size, parse_input
from .. import fsio
from ..errors import SpecError
from ..ir import ModelSpec

SPEC_ARG = click.argument("spec", type=click.Path(dir_okay=False))


def _fail_spec(err: SpecError) -> None:
    report(err)


def _fail(message: str, code: int = 2) -> NoReturn:
    raise CommandError(message, code)  # reported by the click group (cli.app.report)


def load_checked(path: str, img_size: Optional[Tuple[int, int]] = None) -> ModelSpec:
    """Load and check a spec file; on a bad spec print the located error and exit 2."""
    from ..api import load_spec

    try:
        return check_at_img_size(load_spec(path), img_size)
    except SpecError as err:
        _fail_spec(err)
        raise AssertionError("unreachable")


def _img_size_cb(_ctx: click.Context, _p: click.Parameter, value: Optional[str]):
    return parse_img_size(value)


IMG_SIZE_OPT = click.option("--img-size", callback=_img_size_cb, metavar="N|HxW",
                            help="Override the spec's input size.")


def _input_cb(_ctx: click.Context, _p: click.Parameter, value: Optional[str]):
    return parse_input(value)


INPUT_OPT = click.option("--input", "input_size", callback=_input_cb, metavar="CxHxW",
                         help="Input to count at, channels x height x width as the spec's "
                              "input line (e.g. 3x800x1333); the channels must be the spec's.")


def size_of(spec: ModelSpec, path: str, img_size: Optional[Tuple[int, int]],
            input_size: Optional[Tuple[int, int, int]]
            ) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    """One (H, W) override from ``--img-size`` or ``--input``, and how it was given (for
    messages); the channels of ``--input`` must be the spec's, whose stem they size."""
    if input_size is None:
        return img_size, None if img_size is None else f"--img-size {img_size[0]}x{img_size[1]}"
    if img_size is not None:
        _fail("give the size once: --input CxHxW or --img-size HxW, not both")
    c, h, w = input_size
    option = f"--input {c}x{h}x{w}"
    if c != spec.in_chans:
        # Another channel count is another stem (other weights), not the spec's model.
        _fail(f"{option}: {path} takes {spec.in_chans}-channel images (its input "
              f"{spec.in_chans}x{spec.img_size[0]}x{spec.img_size[1]}); give "
              f"{spec.in_chans}x{h}x{w}, or change the spec's input line")
    return (h, w), option


def load_at_size(path: str, img_size: Optional[Tuple[int, int]],
                 input_size: Optional[Tuple[int, int, int]], **limits: Optional[int]
                 ) -> ModelSpec:
    """Load and check a spec at the size ``--img-size`` / ``--input`` give, for counting
    its costs. A mixer sized for the spec's input (random, global_filter) is refused at
    another size: what it would build is another model, not this spec's at that size."""
    from ..api import load_spec
    from ..checks import check_any_size

    spec = load_spec(path)
    for name, value in limits.items():
        if value is not None:
            setattr(spec.limits, name, value)
    size, option = size_of(spec, path, img_size, input_size)
    checked = check_at_img_size(spec, size, option)
    if size is not None and tuple(size) != tuple(spec.img_size):
        check_any_size(spec, f"{option} asks for its costs at "
                             f"{size[0]}x{size[1]} (the spec's input is "
                             f"{spec.img_size[0]}x{spec.img_size[1]})")
    return checked


@main.command("inspect")
@SPEC_ARG
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size of the training step whose activation memory is measured.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              show_default=True, help="Dtype of weights and activations for the memory figure.")
@IMG_SIZE_OPT
@INPUT_OPT
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--graph", "show_graph", is_flag=True,
              help="Also print the traced aten graph, one node per line.")
@click.option("--graph-out", type=click.Path(dir_okay=False, writable=True),
              help="Write the traced graph: .py as readable code, anything else as a table.")
@click.option("--pre-dispatch", is_flag=True,
              help="Trace before autograd decompositions (keeps linear / sdpa whole).")
def inspect_cmd(spec: str, batch: int, dtype: str, img_size: Optional[Tuple[int, int]],
                input_size: Optional[Tuple[int, int, int]], as_json: bool, show_graph: bool,
                graph_out: Optional[str], pre_dispatch: bool) -> None:
    """Parameters, MACs, output shapes and training activation memory of SPEC, per stage.

    MACs are counted on the traced aten graph (convs, linears, attention and
    random-mixing matmuls), per image; "attn N^2" is attention's QK^T and attn@V part.
    Nothing is allocated: the model is built on the meta device.
    """
    from ..analysis.inspect import analyse, graph_code, render_graph, render_table

    model_spec = load_at_size(spec, img_size, input_size)
    try:
        report = analyse(model_spec, batch=batch, dtype=dtype, pre_dispatch=pre_dispatch,
                         keep_graph=show_graph or graph_out is not None)
    except SpecError as err:
        _fail_spec(err)
    click.echo(report.to_json() if as_json else render_table(report))
    if report.graph is not None:
        if show_graph:
            # With --json the graph would corrupt the JSON on stdout: send it to stderr.
            click.echo(render_graph(report.graph), err=as_json)
        if graph_out is not None:
            text = graph_code(report.graph) if graph_out.endswith(".py") else \
                render_graph(report.graph)
            _write_output(graph_out, [spec], lambda: fsio.write_atomic(graph_out, text + "\n"))


def _tolerance_cb(_ctx: click.Context, _p: click.Parameter, value: float) -> float:
    if not value >= 0 or value == float("inf"):  # also refuses NaN
        raise click.BadParameter(f"must be a finite number >= 0, got {value}")
    return value


_EXPORT_EXT = {"pt2": ".pt2", "onnx": ".onnx"}


@main.command("export")
@SPEC_ARG
@click.option("--format", "fmt", type=click.Choice(["pt2", "onnx"]), required=True,
              help="pt2: torch.export program; onnx: ONNX via the dynamo exporter.")
@click.option("--checkpoint", type=click.Path(), callback=checkpoint_path_cb,
              help="Weights to load (mfdsl, timm or official layout), or a run "
                   "folder (its last checkpoint).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="File to write.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size of the example input the model is traced and checked with.")
@click.option("--dynamic-batch", is_flag=True, help="Make the batch dimension symbolic.")
@IMG_SIZE_OPT
@click.option("--atol", type=float, default=1e-4, show_default=True, callback=_tolerance_cb,
              help="Absolute tolerance of the exported-vs-eager check.")
@click.option("--rtol", type=float, default=1e-3, show_default=True, callback=_tolerance_cb,
              help="Relative tolerance of the exported-vs-eager check.")
def export_cmd(spec: str, fmt: str, checkpoint: Optional[str], output: str, batch: int,
               dynamic_batch: bool, img_size: Optional[Tuple[int, int]], atol: float,
               rtol: float) -> None:
    """Export SPEC to a PT2 or ONNX file, then run the file and compare with eager.

    Exits 1 if the export fails or the outputs differ beyond tolerance.
    """
    from ..target.export import ExportError, export_model
    from ..lower import lower

    if not output.lower().endswith(_EXPORT_EXT[fmt]):
        # torch.export.load and ONNX tools recognise the files by this suffix.
        raise click.BadParameter(f"a {fmt} file must end in {_EXPORT_EXT[fmt]}, got "
                                 f"'{output}'", param_hint="'-o' / '--output'")
    _refuse_inputs(output, [spec, checkpoint])
    if checkpoint is not None:
        ctx = _weights_context(spec, checkpoint)
        if ctx is not None and img_size is None:
            img_size = tuple(ctx.img_size)  # the size the run was trained at
            if img_size != tuple(_spec_size(spec)):
                click.echo(f"note: exporting at the run's input size "
                           f"{img_size[0]}x{img_size[1]} (--img-size overrides it)", err=True)
    model_spec = load_checked(spec, img_size)
    try:
        model = lower(model_spec)
    except SpecError as err:
        _fail_spec(err)
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    try:
        result = export_model(model, output, fmt,
                              input_shape=(model_spec.in_chans, *model_spec.img_size),
                              batch=batch, dynamic_batch=dynamic_batch, atol=atol, rtol=rtol)
    except ExportError as exc:
        _fail(str(exc), 1)
    click.echo(result.summary())
    if not result.ok:
        _fail(f"exported model differs from eager beyond atol={atol}, rtol={rtol}; {output} "
              "was not written" + (" (the previous file is intact)" if os.path.exists(output)
                                   else ""), 1)


def _spec_size(spec_path: str):
    from ..api import load_spec

    return load_spec(spec_path).img_size


def _weights_context(spec_path: str, weights: str):
    """The run context of ``weights`` after checking that the spec builds that model."""
    from ..api import load_spec
    from ..runner.run_folder import check_weights_model

    # SpecError and RunError are reported by the CLI group.
    return check_weights_model(load_spec(spec_path), weights)


def _load_weights(model: object, path: str) -> None:
    if not os.path.exists(path):
        _fail(f"no such checkpoint file: {path}")
    try:
        from ..runner.run_weights import load_run_weights
    except ImportError as exc:
        _fail(f"checkpoint loading is unavailable: {exc}", 1)
    try:
        load_run_weights(model, path, "--checkpoint")
    except Exception as exc:  # CheckpointError and friends: located, no traceback
        _fail(f"{path}: {exc}" if path not in str(exc) else str(exc))


@main.command("draw")
@SPEC_ARG
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file, .svg (no dependencies) or .png (matplotlib).")
@IMG_SIZE_OPT
def draw_cmd(spec: str, output: str, img_size: Optional[Tuple[int, int]]) -> None:
    """Draw SPEC like the paper's Figure 2: stem, stages with mixers, depth, width and
    resolution, downsampling on the arrows, head."""
    from ..draw import draw

    ext = os.path.splitext(output)[1].lower()
    if ext not in (".svg", ".png"):
        _fail(f"cannot draw to '{output}': use a .svg or .png file name")
    model_spec = load_checked(spec, img_size)
    _write_output(output, [spec], lambda: draw(model_spec, output))
    click.echo(f"wrote {output}")


def _refuse_inputs(output: str, inputs: list) -> None:
    try:
        fsio.refuse_inputs(output, inputs, "output")
    except fsio.UnsafePathError as exc:
        _fail(str(exc), 1)


def _write_output(output: str, inputs: list, write) -> None:
    """Run ``write`` for a user-named output: never onto an input; errors exit 1."""
    _refuse_inputs(output, inputs)
    try:
        write()
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}", 1)
