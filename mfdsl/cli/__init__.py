"""The ``mfdsl`` command line (click). Each group of commands lives in its own module."""
from __future__ import annotations

import os
import sys
from typing import Any

import click

from .. import __version__
from ..errors import SpecError


class _Group(click.Group):
    """Turns the project's own errors into located messages and exit codes, never a
    traceback (set MFDSL_DEBUG=1 to see one)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpecError as err:
            click.echo(err.render(), err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("mfdsl: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if os.environ.get("MFDSL_DEBUG"):
                raise
            from ..checkpoint import CheckpointError

            if isinstance(exc, CheckpointError):
                click.echo(f"error: {exc}", err=True)
                sys.exit(2)
            if isinstance(exc, (OSError, ValueError)):
                click.echo(f"error: {exc}", err=True)
                sys.exit(2)
            click.echo(f"mfdsl: internal error: {type(exc).__name__}: {exc}\n"
                       "(set MFDSL_DEBUG=1 for the traceback)", err=True)
            sys.exit(1)


@click.group(cls=_Group,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mfdsl")
def main() -> None:
    """mfdsl: write a MetaFormer as text, get exactly that model.

    \b
    Specs are .mf files (Lark grammar) or .yaml files (JSON Schema); specs/ holds the
    paper's model zoo. Typical use:
      mfdsl validate specs/*.mf
      mfdsl compile specs/caformer_s18.mf
      mfdsl train specs/randformer.yaml
    """


def _register() -> None:
    from . import analysis_cmds, bench_cmds, run_cmds, spec_cmds  # noqa: F401  (they add commands)
    from . import compare_cmds, weights_cmds  # noqa: F401


_register()
