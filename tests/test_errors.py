"""User errors: one base with an exit code, turned into a message and an exit code in one
place (mfdsl.cli.app.report), for every command."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from mfdsl.ckptformats.weights import CheckpointError
from mfdsl.cli.app import _Group
from mfdsl.compare import CompareError
from mfdsl.data.tinyshapes import CacheError
from mfdsl.errors import Loc, SpecError, UserError
from mfdsl.fsio import UnsafePathError, WriteError
from mfdsl.target.export import ExportError
from mfdsl.target.prepare import TargetError
from mfdsl.runner.errors import DataError, InterruptedRun, NonFiniteLossError, RunError
from mfdsl.weights import WeightsError
from mfdsl.weights.inherit import InheritError

CASES = [
    (SpecError("unknown mixer 'x'", Loc("s.mf", 3, 9), hint="did you mean 'y'?"), 2,
     "s.mf:3:9: error: unknown mixer 'x'"),
    (RunError("--data d: no such folder"), 2, "error: --data d: no such folder"),
    (DataError("no images"), 2, "error: no images"),
    (NonFiniteLossError("non-finite loss at step 3"), 3, "error: non-finite loss at step 3"),
    (InterruptedRun("interrupted at step 5"), 130, "error: interrupted at step 5"),
    (RunError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most "
              "recent call last):\n  ...\nOSError: disk gone"), 2, "error: disk gone"),
    (CheckpointError("w.pt: truncated"), 2, "error: checkpoint: w.pt: truncated"),
    (WeightsError("no release named"), 2, "error: weights: no release named"),
    (InheritError("bad mapping"), 2, "error: inherit: bad mapping"),
    (ExportError("onnx is not installed"), 2, "error: onnx is not installed"),
    (CompareError("would overwrite x.csv"), 2, "error: would overwrite x.csv"),
    (TargetError("unknown target 'tpu'"), 2, "error: unknown target 'tpu'"),
    (UnsafePathError("r/x.json is a symbolic link"), 2, "error: r/x.json is a symbolic link"),
    (CacheError("cannot make the embedded dataset in /c: Permission denied"), 2,
     "error: cannot make the embedded dataset in /c: Permission denied"),
    (WriteError("r/last.pt: no space left on device"), 74,
     "error: r/last.pt: no space left on device"),
]


@pytest.mark.parametrize("err, code, first_line", CASES, ids=lambda v: type(v).__name__
                         if isinstance(v, Exception) else None)
def test_every_user_error_reaches_the_user_as_its_message_and_code(err, code, first_line):
    assert isinstance(err, UserError) and err.exit_code == code

    @click.group(cls=_Group)
    def cli() -> None:
        pass

    @cli.command()
    def fail() -> None:
        raise err

    res = CliRunner().invoke(cli, ["fail"])
    assert res.exit_code == code
    assert res.stderr.splitlines()[0] == first_line, res.stderr
    assert "Traceback" not in res.output


def test_errors_from_below_the_cli_keep_their_python_kinds():
    # Library callers catching ValueError keep working.
    assert issubclass(TargetError, ValueError) and issubclass(WeightsError, CheckpointError)
    # File-system refusals stay OSErrors for code that catches those.
    assert all(issubclass(e, OSError) for e in (UnsafePathError, CacheError, WriteError))
