"""Design-space commands: space (statistics), sample (candidate spec files)."""
from __future__ import annotations

import json
import os
from typing import Optional

import click

from ..errors import CommandError
from .app import main


@main.command("space")
@click.argument("space_file", metavar="SPACE")
@click.option("--samples", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Draws measured when the space is too large to measure whole.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the draws.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option("-o", "--output", default=None, metavar="PNG",
              help="Also plot the params and MACs distributions to this PNG.")
def space_cmd(space_file: str, samples: int, seed: int, as_json: bool,
              output: Optional[str]) -> None:
    """Count the distinct candidates of SPACE, the share inside its budgets and the
    distribution of params and MACs (docs/spaces.md)."""
    from ..space.read import load_space
    from ..space.sample import survey

    space = load_space(space_file)
    s = survey(space, samples=samples, seed=seed)
    quant = {m: _quantiles(v) for m, v in s.figures.items()}
    data = {"space": space_file, "choices": len(space.choices), "assignments": s.assignments,
            "distinct": s.distinct, "distinct_exact": s.distinct_exact,
            "measured": s.measured, "invalid": s.invalid,
            "inside_budgets": {"share": s.share, "low": s.share_low, "high": s.share_high,
                               "exact": s.share_exact},
            "quantiles": quant}
    if output:
        _plot(s.figures, space, output)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from ..space.budgets import show

    how = "exact" if s.distinct_exact else f"estimated from {s.measured} draws"
    click.echo(f"{space_file}: {len(space.choices)} choices, {s.assignments:,} assignments, "
               f"{s.distinct:,} distinct candidates ({how})")
    if s.share_exact:
        click.echo(f"inside the budgets: {s.share:.1%} (exact, all {s.measured} measured)")
    else:
        click.echo(f"inside the budgets: {s.share:.1%} (95% Wilson interval "
                   f"{s.share_low:.1%}..{s.share_high:.1%}, {s.measured} draws)")
    if s.invalid:
        click.echo(f"{s.invalid} of {s.measured} draws fail the checks")
    click.echo(f"{'':<14}{'min':>9}{'p10':>9}{'p50':>9}{'p90':>9}{'max':>9}")
    for metric, q in quant.items():
        if q:
            click.echo(f"{metric:<14}" + "".join(f"{show(q[k]):>9}" for k in
                                                  ("min", "p10", "p50", "p90", "max")))
    if output:
        click.echo(f"wrote {output}")


def _quantiles(values: list) -> dict:
    if not values:
        return {}
    v = sorted(values)

    def at(q: float) -> int:
        return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]

    return {"min": v[0], "p10": at(0.1), "p50": at(0.5), "p90": at(0.9), "max": v[-1]}


def _plot(figures: dict, space, output: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CommandError("-o needs matplotlib (pip install matplotlib)") from None
    from ..fsio import write_atomic_with

    metrics = [m for m, v in figures.items() if v]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3))
    for ax, m in zip(list(getattr(axes, "flat", [axes])), metrics):
        ax.hist(figures[m], bins=30)
        ax.set_title(m)
        for b in space.budgets:
            if b.metric == m:
                for edge in (b.low, b.high):
                    if edge is not None:
                        ax.axvline(edge, color="red")
    fig.tight_layout()
    write_atomic_with(output, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


@main.command("sample")
@click.argument("space_file", metavar="SPACE")
@click.option("-n", "count", required=True, type=click.IntRange(1, 1_000_000),
              help="How many distinct candidates.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed: the same seed and space give byte-identical files.")
@click.option("-o", "--output", required=True, metavar="DIR", help="Folder to write into.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier sample in DIR.")
@click.option("--max-draws", default=None, type=click.IntRange(1), metavar="N",
              help="Give up after N draws (default: max(2000, 50 n)).")
def sample_cmd(space_file: str, count: int, seed: int, output: str, overwrite: bool,
               max_draws: Optional[int]) -> None:
    """Write N canonical .mf candidates of SPACE, distinct and inside its budgets, and a
    manifest.json (docs/spaces.md)."""
    from ..space.output import write_sample
    from ..space.read import load_space
    from ..space.sample import sample

    space = load_space(space_file)
    if os.path.lexists(os.path.join(output, "manifest.json")) and not overwrite:
        raise CommandError(f"{output} already holds a sample (manifest.json): choose another "
                           "folder, or pass --overwrite")
    candidates = sample(space, count, seed, max_draws=max_draws)
    manifest = write_sample(space, candidates, seed, output, overwrite=overwrite)
    click.echo(f"wrote {len(candidates)} candidates and {manifest}")
