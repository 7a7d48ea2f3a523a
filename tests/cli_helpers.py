"""Running the ``mfdsl`` CLI in-process for tests: exit code and output, never a traceback."""
from __future__ import annotations

from click.testing import CliRunner

from mfdsl.cli import main


def run(*args) -> "tuple[int, str]":
    res = CliRunner().invoke(main, [str(a) for a in args])
    out = res.output
    assert "Traceback" not in out, out
    # An exception that escaped the CLI's guards would be an internal error.
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"escaped exception: {res.exception!r}\n{out}")
    assert "internal error" not in out, out
    return res.exit_code, out
