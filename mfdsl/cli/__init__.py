"""The ``mfdsl`` command line (click). Each group of commands lives in its own module.

The group is defined in :mod:`.app`; importing the command modules here adds their
commands to it (they import ``app``, never this package, so there is no import circle).
"""
from __future__ import annotations

from . import (analysis_cmds, bench_cmds, compare_cmds, run_cmds,  # noqa: F401 - add commands
               space_cmds, spec_cmds, sweep_cmds, weights_cmds)
from .app import main

__all__ = ["main"]
