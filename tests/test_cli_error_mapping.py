"""Error -> message and exit code has one place, mfdsl.cli.app.report: the commands raise
UserErrors (a CommandError for their own refusals) instead of printing and exiting."""
from __future__ import annotations

import ast
from pathlib import Path

from click.testing import CliRunner

from mfdsl.cli import main
from mfdsl.errors import CommandError, UserError

CLI = Path(__file__).resolve().parent.parent / "mfdsl" / "cli"

# The exits that are not an error's mapping: app.py holds report and the last line of
# defence for non-user exceptions; run_cmds passes a launcher's code through and exits
# quietly with the error's own code on the ranks that do not report it; spec_cmds exits
# with a multi-file command's tally after each file's error was reported.
ALLOWED = {"app.py": 5, "run_cmds.py": 2, "spec_cmds.py": 3}


def _exits(path: Path) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sum(1 for n in ast.walk(tree) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Attribute) and n.func.attr == "exit"
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "sys")


def test_no_second_mapping_in_the_commands() -> None:
    found = {p.name: _exits(p) for p in CLI.glob("*.py") if _exits(p)}
    assert found == ALLOWED


def test_command_error_carries_its_code() -> None:
    err = CommandError("cannot write x", 1)
    assert isinstance(err, UserError) and err.exit_code == 1 and err.render() == \
        "error: cannot write x"
    assert CommandError("bad").exit_code == 2


def test_a_commands_refusal_goes_through_report(tmp_path: Path) -> None:
    spec = tmp_path / "s.mf"
    spec.write_text("model x\n")
    res = CliRunner().invoke(main, ["draw", str(spec), "-o", str(tmp_path / "x.pdf")])
    assert res.exit_code == 2
    assert res.stderr.splitlines()[0] == f"error: cannot draw to '{tmp_path / 'x.pdf'}': use " \
        "a .svg or .png file name"
    res = CliRunner().invoke(main, ["bench", str(spec), "--no-eager"])
    assert res.exit_code == 2
    assert "error: nothing to measure (--no-eager without --compile)" in res.stderr
