"""``mfdsl weights list|fetch``: the released weights the zoo specs know by name."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import click

from ..errors import CommandError
from .app import main


@main.group("weights")
def weights_group() -> None:
    """Released ImageNet weights of the paper's models (Hugging Face hub, cached)."""


def _cached(release) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    from ..weights import hub_cache_dir

    p = try_to_load_from_cache(release.repo_id, release.filename, cache_dir=hub_cache_dir())
    return p if isinstance(p, str) and os.path.isfile(p) else None


@weights_group.command("list")
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
def list_cmd(model: Optional[str], as_json: bool) -> None:
    """Every release (or MODEL's: a zoo name or spec file), where it lives, its context and
    whether it is in the local cache."""
    from ..weights import RELEASES, releases_for

    if model and os.path.isfile(model):
        from ..api import load_spec

        model = load_spec(model).name
    rows = releases_for(model) if model else list(RELEASES.values())
    if model and not rows:
        raise CommandError(f"no released weights for '{model}'")
    data = [dict(name=r.name, repo_id=r.repo_id, filename=r.filename, layout=r.layout,
                 img_size=list(r.img_size), num_classes=r.num_classes, crop_pct=r.crop_pct,
                 url=r.url, cached=_cached(r)) for r in rows]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    w = max(len(d["name"]) for d in data)
    for d in data:
        click.echo(f"{d['name']:<{w}}  {d['img_size'][0]:>3}px  {d['num_classes']:>5} classes  "
                   f"{d['repo_id']}/{d['filename']}" + ("  [cached]" if d["cached"] else ""))


@weights_group.command("fetch")
@click.argument("names", nargs=-1, required=True)
def fetch_cmd(names: Sequence[str]) -> None:
    """Download (or find in the cache) and verify releases; print their paths."""
    from ..weights import fetch

    for name in names:
        click.echo(f"{name}\t{fetch(name)}")  # a WeightsError is reported by the group
