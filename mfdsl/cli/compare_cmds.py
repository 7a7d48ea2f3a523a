"""``mfdsl compare``: top-1 against MACs, parameters and measured throughput."""
from __future__ import annotations

from typing import Optional, Sequence

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
@click.option("--edf", is_flag=True, help="ITEMS is one sweep folder (mfdsl sweep): its error "
              "EDF with a bootstrap band, Pareto fronts and rank correlations, as edf.png, "
              "edf.csv, edf.json.")
@click.option("--normalize", type=click.Choice(["params", "macs"]), default=None,
              help="With --edf: weigh candidates so each complexity range counts alike.")
@click.option("--bootstrap", type=click.IntRange(min=10), default=1000, show_default=True,
              help="With --edf: resamples of the bootstrap band.")
def compare_cmd(items: Sequence[str], output: str, paper: bool, throughput: bool, batch: int,
                seconds: float, rounds: int, device: str, force: bool, edf: bool,
                normalize: Optional[str], bootstrap: int) -> None:
    """Compare SPEC files, zoo model names and RUN folders: one table, a PNG of top-1
    against MACs / parameters / throughput with the Pareto front per dataset, and the data
    as CSV and JSON.

    \b
    Examples:
      mfdsl compare runs/demo_tiny runs/hybrid_scratch runs/hybrid_inherit
      mfdsl compare specs/hybrid_conv_attn_interleave.mf caformer_s18 --paper --batch 2
    """
    from ..compare import check_outputs, compare, plot, table, to_csv, to_json, write_outputs

    if edf:
        return _edf(items, output, force, normalize, bootstrap)
    if normalize:
        raise click.UsageError("--normalize is an option of --edf")
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


def _edf(items: Sequence[str], output: str, force: bool, normalize: Optional[str],
         bootstrap: int) -> None:
    from ..compare import check_outputs, write_outputs
    from ..sweep import edf, results

    if len(items) != 1:
        raise click.UsageError("--edf takes one SWEEP folder (written by mfdsl sweep)")
    check_outputs(output, ("edf.csv", "edf.json", "edf.png"), overwrite=force)
    report = edf.analyse(results.read(items[0]), normalize, bootstrap)
    click.echo(edf.table(report))
    files = {"edf.csv": edf.to_csv(report).encode(), "edf.json": edf.to_json(report).encode(),
             "edf.png": edf.plot(report)}
    click.echo("wrote " + ", ".join(write_outputs(output, files, overwrite=force)))
