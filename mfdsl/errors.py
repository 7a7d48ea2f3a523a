"""The errors mfdsl reports to the user (one `UserError` base with an exit code): an invalid
spec with its source location, a command's refusal, and a run's bad inputs (`RunError`,
`DataError`: raised by the data package and the runner alike)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

# The exit codes of the commands, one table: the error classes take their code from these
# names, and ``--help`` and the docs list the table (:func:`exit_codes_help`).
EXIT_DONE = 0
EXIT_COMPILER = 1  # torch.compile (inductor, Triton) failed, or an internal error: cli.app
EXIT_USAGE = 2  # bad input: UserError, click's usage errors
EXIT_NONFINITE = 3  # runner.errors.NonFiniteLossError
EXIT_WRITE = 74  # EX_IOERR: fsio.WriteError
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: runner.preemption.PreemptedRun
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell's: runner.errors.InterruptedRun


@dataclass(frozen=True)
class ExitCode:
    """One exit code: what it means and the run commands that may end with it."""

    code: int
    meaning: str
    commands: Tuple[str, ...]


_RUN = ("train", "eval")
EXIT_CODES: Tuple[ExitCode, ...] = (
    ExitCode(EXIT_DONE, "done", _RUN),
    ExitCode(EXIT_COMPILER, "torch.compile failed (--no-compile runs eagerly), or a bug in mfdsl",
             _RUN),
    ExitCode(EXIT_USAGE, "bad spec, option, data or checkpoint; run folder locked by another "
             "run", _RUN),
    ExitCode(EXIT_NONFINITE, "stopped on a non-finite loss", ("train",)),
    ExitCode(EXIT_WRITE, "a write failed (disk full, quota, read-only, I/O error)", _RUN),
    ExitCode(EXIT_PREEMPTED, "stopped by SIGTERM/SIGUSR1 after a checkpoint (requeue; --resume "
             "auto)", ("train",)),
    ExitCode(EXIT_INTERRUPTED, "interrupted (Ctrl-C)", _RUN),
)


def exit_codes_of(command: str) -> Tuple[ExitCode, ...]:
    return tuple(e for e in EXIT_CODES if command in e.commands)


def exit_codes_help(command: str) -> str:
    """The exit codes of ``command`` as a block of a click help text (kept as written)."""
    rows = [f"  {e.code:<4} {e.meaning}" for e in exit_codes_of(command)]
    return "\b\nExit codes:\n" + "\n".join(rows)


@dataclass(frozen=True)
class Loc:
    """A position in a spec file; line and column are 1-based."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class UserError(Exception):
    """Bad input from the user: one clear message and an exit code, never a traceback.

    The base of every error mfdsl reports this way (specs, runs, checkpoints, export,
    compare, targets); :func:`mfdsl.cli.app.report` is the one place that turns one into
    its message and exit code.
    """

    exit_code = EXIT_USAGE

    def render(self) -> str:
        """The message shown to the user."""
        return f"error: {self}"


class CommandError(UserError):
    """A command's own refusal of its arguments: options that contradict each other,
    nothing to do, an output it may not or cannot write. ``exit_code`` is the one the
    command documents (2 for bad arguments, 1 for a failed write or check)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunError(UserError):
    """A problem with the run's inputs (data folder, options, checkpoint); exit code 2."""

    exit_code = EXIT_USAGE
    # True on the ranks of a distributed run that stay silent because another rank
    # reports the same failure.
    quiet = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def render(self) -> str:
        message = self.message
        # An error raised inside a DataLoader worker comes back with the worker's traceback
        # in its text: keep the error's own last line.
        if "Original Traceback" in message:
            last = message.strip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        return f"error: {message}"


class DataError(RunError):
    """The dataset cannot be used (missing, empty, or no decodable image nearby)."""


class SpecError(UserError):
    """An invalid spec, located in the user's file.

    ``path``, ``line`` and ``column`` say where; ``hint`` is an optional suggestion
    (the nearest valid name, the allowed range).
    """

    def __init__(
        self,
        message: str,
        loc: Optional[Loc] = None,
        *,
        hint: Optional[str] = None,
        path: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.path = loc.path if loc else (path or "<spec>")
        self.line = loc.line if loc else None
        self.column = loc.column if loc else None

    @property
    def loc(self) -> Optional[Loc]:
        if self.line is None:
            return None
        return Loc(self.path, self.line, self.column or 1)

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}:{self.column}"
        text = f"{where}: error: {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def render(self, source: Optional[str] = None) -> str:
        """``path:line:col: error: message``, the source line with a caret, and the hint."""
        where = self.path
        if self.line is not None:
            where += f":{self.line}:{self.column}"
        out = [f"{where}: error: {self.message}"]
        if self.line is not None:
            if source is None:
                source = _read_quietly(self.path)
            lines = source.splitlines() if source is not None else []
            if 1 <= self.line <= len(lines):
                text = lines[self.line - 1].expandtabs(1)
                out.append(f"  {text}")
                out.append("  " + " " * max(0, (self.column or 1) - 1) + "^")
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


def _read_quietly(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def nearest(name: str, choices) -> Optional[str]:
    """The closest valid name to a misspelt one, for 'did you mean' hints."""
    import difflib

    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None
