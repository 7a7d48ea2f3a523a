"""The ``mfdsl`` command line (click). Each group of commands lives in its own module."""
from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mfdsl")
def main() -> None:
    """mfdsl: write a MetaFormer as text, get exactly that model.

    \b
    Specs are .mf files (Lark grammar) or .yaml files (JSON Schema); see specs/ for the
    paper's model zoo. Typical use:
      mfdsl validate specs/*.mf
      mfdsl compile specs/caformer_s18.mf
      mfdsl train specs/randformer.yaml
    """


def _register() -> None:
    from . import analysis_cmds, bench_cmds, run_cmds, spec_cmds  # noqa: F401  (they add commands)


_register()
