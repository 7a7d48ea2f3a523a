"""Launching: ``mfdsl train|eval --nproc-per-node N`` (one process per device on this
machine), and what a launched process reads of its launcher (rank, world size).

torchrun's launcher raises (and prints the traceback of) ``ChildFailedError`` whenever a
worker exits non-zero, even when that worker already said why in one line. Starting the
same launcher in-process lets mfdsl keep the worker's message as the only one and return
its exit code. Multi-node runs still use torchrun itself (docs/training.md).
"""
from __future__ import annotations

import os
from typing import List, Sequence

OPTION = "--nproc-per-node"


def under_launcher() -> bool:
    """True inside a process that torchrun (or this launcher) started."""
    return "WORLD_SIZE" in os.environ


def launched_rank() -> int:
    """This process's global rank as its launcher (torchrun) set it, known before any
    process group exists: the one place "is this rank 0" is read from the environment."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    """How many processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def without_option(argv: Sequence[str], option: str = OPTION) -> List[str]:
    """``argv`` less ``option N`` / ``option=N`` (the workers must not launch again)."""
    out: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``python -m mfdsl.runner ARGV`` in ``nproc`` processes; the first failed
    worker's exit code, or 0."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from ..errors import EXIT_PREEMPTED

    # SLURM's early warning (SIGUSR1) must reach the workers like SIGTERM does: the
    # launcher forwards the signals it handles, and dies of the others.
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE",
                          "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    # The workers say what happened, once (rank 0); the launcher's own log lines about
    # shutting them down would only repeat it.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    args = torchrun.parse_args(["--standalone", "--nproc-per-node", str(nproc),
                                "-m", "mfdsl.runner", *without_option(argv)])
    try:
        torchrun.run(args)
    except SignalException as exc:
        # The launcher passed the signal on and waited for the workers (up to
        # TORCH_ELASTIC_SHUTDOWN_TIMEOUT s): they checkpointed and reported.
        import signal

        if exc.sigval in (signal.SIGTERM, signal.SIGUSR1):
            return EXIT_PREEMPTED
        return 130 if exc.sigval == signal.SIGINT else 128 + int(exc.sigval)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        # A worker killed by a signal reports a negative code; keep the exit status non-zero.
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
