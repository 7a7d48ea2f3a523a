"""``--checkpoint`` values shared by the commands that load weights."""
from __future__ import annotations

import os
from typing import Optional

import click


def checkpoint_path_cb(ctx: click.Context, param: click.Parameter,
                       value: Optional[str]) -> Optional[str]:
    """``--checkpoint``: a run folder (or its checkpoints/) means its last weights, as in
    ``mfdsl eval``; a file passes through."""
    if value is None or not os.path.isdir(value):
        return value
    from ..runs import LAST_WEIGHTS
    from ..runner.errors import RunError
    from ..runner.eval_run import resolve_checkpoint_path

    try:
        return resolve_checkpoint_path(value)
    except RunError:
        raise click.BadParameter(f"{value} is a directory with no {LAST_WEIGHTS} (give a run "
                                 "folder or a weights file)") from None
