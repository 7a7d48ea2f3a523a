"""``mfdsl compare``: top-1 against MACs, parameters and measured throughput."""
from __future__ import annotations

from typing import Sequence

import click

from .app import main


@main.command("compare")
@click.argument("items", nargs=-1)
@click.option("-o", "--output", type=click.Path(file_okay=False), default="comparison",
              show_default=True, help="Folder for compare.png, compare.csv, compare.json.")
@click.option("--paper", is_flag=True, help="Add the paper's ImageNet-1K table as a "
                                            "reference series.")
@click.option("--throughput/--no-throughput", default=True, show_default=True,
              help="Measure images/s of each spec/run here (eval forward, fp32).")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Batch of the timed forward.")
@click.option("--seconds", type=click.FloatRange(min=0.0), default=2.0, show_default=True,
              help="Minimum timed seconds per model.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Models are timed side by side in this many rounds (median kept).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite earlier output files.")
def compare_cmd(items: Sequence[str], output: str, paper: bool, throughput: bool, batch: int,
                seconds: float, rounds: int, device: str, force: bool) -> None:
    """Compare SPEC files, zoo model names and RUN folders: one table, a PNG of top-1
    against MACs / parameters / throughput with the Pareto front per dataset, and the data
    as CSV and JSON.

    \b
    Examples:
      mfdsl compare runs/demo_tiny runs/hybrid_scratch runs/hybrid_inherit
      mfdsl compare specs/hybrid_conv_attn_interleave.mf caformer_s18 --paper --batch 2
    """
    from ..compare import check_outputs, compare, plot, table, to_csv, to_json, write_outputs

    if not items and not paper:
        raise click.UsageError("name at least one SPEC or RUN (or --paper)")
    # A CompareError is reported by the click group (cli.app.report).
    check_outputs(output, overwrite=force)  # before minutes of measuring
    entries, context = compare(items, paper=paper, throughput=throughput, batch=batch,
                               seconds=seconds, device=device, rounds=rounds)
    click.echo(table(entries))
    files = {"compare.csv": to_csv(entries).encode(),
             "compare.json": to_json(entries, context).encode(),
             "compare.png": plot(entries, context)}
    written = write_outputs(output, files, overwrite=force)
    if throughput:
        click.echo(f"throughput: eval forward, batch {batch}, fp32, {device}, "
                   f"{context['machine']['torch_threads']} threads, median of {rounds} "
                   "side-by-side rounds")
    datasets = sorted({e.dataset for e in entries if e.top1 is not None and e.dataset})
    if len(datasets) > 1:
        click.echo(f"note: accuracies come from {len(datasets)} datasets "
                   f"({', '.join(datasets)}); each has its own Pareto front")
    click.echo("wrote " + ", ".join(written))
