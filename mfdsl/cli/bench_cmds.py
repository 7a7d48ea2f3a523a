"""``mfdsl bench``: throughput and memory of a spec's model against timm's same model."""
from __future__ import annotations

import json
import os
from typing import Optional

import click

from ..errors import CommandError
from .app import main


@main.command("bench")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: cuda when available, else cpu.")
@click.option("--batch", type=click.IntRange(1, 4096), default=8, show_default=True)
@click.option("--tasks", type=click.Choice(["both", "infer", "train"]), default="both",
              show_default=True, help="Inference, training step (fwd+bwd+AdamW), or both.")
@click.option("--eager/--no-eager", default=True, show_default=True,
              help="Measure the eager models.")
@click.option("--compile", "compiled", is_flag=True,
              help="Also measure torch.compile'd models (slow to warm up on CPU).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Compute dtype (autocast). Default: bf16 on cuda, fp32 on cpu.")
@click.option("--rounds", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Interleaved measurement rounds; the median is reported.")
@click.option("--iters", type=click.IntRange(1, 10000), default=2, show_default=True,
              help="Steps per round and case.")
@click.option("--warmup", type=click.IntRange(1, 1000), default=2, show_default=True,
              help="Untimed steps per case first (includes compilation).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="torch CPU threads (default: torch's choice).")
@click.option("--no-timm", is_flag=True, help="Measure mfdsl's model only.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory step.")
@click.option("--peak-tflops", type=click.FloatRange(0, min_open=True), default=None,
              help="Peak TFLOP/s for MFU (default: a GPU's bf16 data sheet by "
              "its name, else matrix products measured here in the compute dtype).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the full report (all rounds, machine) as JSON here.")
def bench(spec: str, device: str, batch: int, tasks: str, eager: bool, compiled: bool,
          dtype: Optional[str], rounds: int, iters: int, warmup: int, threads: Optional[int],
          no_timm: bool, no_memory: bool, peak_tflops: Optional[float],
          json_path: Optional[str]) -> None:
    """Images/s (median of interleaved rounds) and peak memory of SPEC's model against
    timm's model of the same name, eager and/or compiled, with ratio columns, MFU and the
    warm-up (compile) time. Prints a markdown table.
    """
    import torch

    from ..analysis.counting import count_macs_meta
    from ..api import check_spec
    from ..lower import lower
    from ..bench.throughput import markdown_table, report_header, run_benchmark

    if threads is not None:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda but no CUDA device is available")
    if not eager and not compiled:
        raise CommandError("nothing to measure (--no-eager without --compile)")
    if json_path:
        # Refuse before the measurement, not after minutes of it.
        folder = os.path.dirname(os.path.abspath(json_path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise CommandError(f"--json {json_path}: folder {folder} does not exist or is "
                               "not writable")
        from .. import fsio

        try:
            fsio.refuse_inputs(json_path, [spec], "--json")
        except fsio.UnsafePathError as exc:
            raise CommandError(str(exc)) from None
    dtype = dtype or ("bf16" if device == "cuda" else "fp32")
    ir = check_spec(spec)  # the checks and the size limits; a SpecError goes to the group
    macs = count_macs_meta(ir)
    report = run_benchmark(
        lambda: lower(ir, target=device), ir.name, img_size=ir.img_size,
        num_classes=ir.num_classes, in_chans=ir.in_chans, device=device, batch=batch,
        tasks=("infer", "train") if tasks == "both" else (tasks,), compile=compiled,
        eager=eager, dtype=dtype, with_timm=not no_timm, rounds=rounds, iters=iters,
        warmup=warmup, memory=not no_memory, macs=macs, peak_tflops=peak_tflops,
        drop_path_rate=ir.drop_path_rate, head_dropout=ir.head_dropout,
        log=lambda s: click.echo(s, err=True),
    )
    click.echo(report_header(report))
    click.echo("")
    click.echo(markdown_table(report))
    if json_path:
        from .. import fsio

        try:
            fsio.write_atomic(json_path, json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise CommandError(f"cannot write {json_path}: {exc.strerror or exc}", 1) from None
