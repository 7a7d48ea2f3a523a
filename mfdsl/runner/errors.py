"""Errors the runner reports to the user as one clear message and an exit code."""
from __future__ import annotations

from ..errors import EXIT_INTERRUPTED, EXIT_NONFINITE, EXIT_USAGE, UserError


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


class NonFiniteLossError(RunError):
    """Training produced a non-finite loss or gradient and the policy says stop; exit code 3."""

    exit_code = EXIT_NONFINITE


class InterruptedRun(RunError):
    """The user stopped training (Ctrl-C / SIGINT); exit code 130 like a shell's."""

    exit_code = EXIT_INTERRUPTED

