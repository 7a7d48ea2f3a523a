"""Errors the runner reports to the user as one clear message and an exit code.

``RunError`` and ``DataError`` live in :mod:`mfdsl.errors` (the data package raises them
and sits below the runner); they are named here too, for the runner's modules.
"""
from __future__ import annotations

from ..errors import EXIT_INTERRUPTED, EXIT_NONFINITE, DataError, RunError

__all__ = ["RunError", "DataError", "NonFiniteLossError", "InterruptedRun"]


class NonFiniteLossError(RunError):
    """Training produced a non-finite loss or gradient and the policy says stop; exit code 3."""

    exit_code = EXIT_NONFINITE


class InterruptedRun(RunError):
    """The user stopped training (Ctrl-C / SIGINT); exit code 130 like a shell's."""

    exit_code = EXIT_INTERRUPTED

