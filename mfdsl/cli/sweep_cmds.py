"""``mfdsl sweep``: train every candidate spec of a folder on a short schedule, shared by
workers through one Optuna study (docs/spaces.md, "Sweeps")."""
from __future__ import annotations

from typing import Optional, Sequence

import click

from .app import main


@main.command("sweep")
@click.argument("candidates", type=click.Path(file_okay=False))
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Dataset folder (as mfdsl train --data). Default: TinyShapes.")
@click.option("-o", "--output", "sweep", required=True, type=click.Path(file_okay=False),
              help="Sweep folder: runs/<candidate>, the study, results.csv/json.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Epochs of the short schedule (the first rung's, with --halving); "
                   "warmup and cooldown scale by epochs / the recipe's epochs.")
@click.option("--inherit", multiple=True, metavar="[PARTS=]SOURCE",
              help="Passed to each run (as mfdsl train --inherit).")
@click.option("--halving", type=click.IntRange(min=2), default=None, metavar="ETA",
              help="Successive halving: all candidates for --epochs, the best 1/ETA on for "
                   "ETA times as many, and so on.")
@click.option("--check-ranking", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="K", help="Also train K held-out candidates for --check-epochs, to "
                                "measure how well the short schedule ranks them.")
@click.option("--check-epochs", type=click.IntRange(min=1), default=None, metavar="E2",
              help="Epochs of the ranking check's longer schedule.")
@click.option("--storage", default=None, metavar="URL",
              help="The study's storage: an RDB URL, or journal:PATH (a JournalStorage file "
                   "on a shared file system). Default: sqlite in the sweep folder.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run seed of every candidate; also draws the held-out candidates.")
@click.option("--device", default="auto", show_default=True)
@click.option("--data-workers", type=click.IntRange(min=0), default=None,
              help="DataLoader workers per run (mfdsl train --workers).")
@click.option("--val-samples", type=click.IntRange(min=1), default=None,
              help="Validate on this many images (mfdsl train --val-samples).")
@click.option("--dry-run", is_flag=True, help="Print each candidate's run plan; train "
                                              "nothing, write nothing.")
@click.option("--dataset-size", type=click.IntRange(min=1), default=None,
              help="With --dry-run: plan for this many training images instead of --data.")
def sweep_cmd(candidates: str, data: Optional[str], sweep: str, epochs: int,
              inherit: Sequence[str], halving: Optional[int], check_ranking: int,
              check_epochs: Optional[int], storage: Optional[str], seed: int, device: str,
              data_workers: Optional[int], val_samples: Optional[int], dry_run: bool,
              dataset_size: Optional[int]) -> None:
    """Train every candidate spec in CANDIDATES (a folder of .mf/.yaml specs, in its
    manifest.json's order if it has one) on a short schedule derived from its recipe,
    each in SWEEP/runs/<candidate>. Start it again (or on more machines, with --storage)
    to continue: trials left by a killed worker resume from their checkpoints.

    \b
    Examples:
      mfdsl sweep space/ --data /data/tiny -o sweeps/a --epochs 2 --dry-run
      mfdsl sweep space/ --data /data/tiny -o sweeps/a --epochs 2 --halving 3
      mfdsl compare sweeps/a --edf -o sweeps/a/edf
    """
    from ..sweep.candidates import read_candidates
    from ..sweep.errors import SweepError
    from ..sweep.study import Settings, Worker, open_study
    from ..sweep.results import RESULTS_CSV

    if check_ranking and not check_epochs:
        raise SweepError("--check-ranking needs --check-epochs (the longer schedule)")
    if dataset_size and not dry_run:
        raise SweepError("--dataset-size is an option of --dry-run")
    cands = read_candidates(candidates)
    settings = Settings([c.name for c in cands], epochs, halving, check_ranking,
                        check_epochs if check_ranking else None, seed, list(inherit), data)
    train_kw = dict(data=data, seed=seed, device=device, val_samples=val_samples,
                    tensorboard=False, progress=False)
    if data_workers is not None:
        train_kw["workers"] = data_workers
    if dry_run:
        _dry_run(cands, settings, train_kw, dataset_size)
        return
    study = open_study(sweep, settings, storage)
    worker = Worker(sweep, settings, cands, study, train_kw, log=click.echo)
    worker.run()
    worker.write_results()
    click.echo(f"sweep done: {len(cands)} candidates; results in {sweep}/{RESULTS_CSV}")


def _dry_run(cands, settings, train_kw, dataset_size) -> None:
    from ..runner import api
    from ..sweep.schedule import describe, short_recipe

    plan = settings.plan()
    click.echo("rungs: " + ", ".join(f"{r.keep} candidate(s) to epoch {r.epochs}"
                                     for r in plan))
    if settings.check_ranking:
        click.echo(f"ranking check: {', '.join(settings.held_out())} for "
                   f"{settings.check_epochs} epochs")
    kw = dict(train_kw)
    if dataset_size:
        kw["dataset_size"] = dataset_size
    for c in cands:
        spec = api.load(c.file)
        short = short_recipe(spec.recipe, plan[-1].epochs)
        run = api.plan_run(spec, recipe=short, inherit=tuple(settings.inherit), **kw)
        click.echo(f"\n== {c.name} ({c.file}): {describe(spec.recipe, short)}")
        click.echo(run.summary())
