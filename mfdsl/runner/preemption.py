"""Preemption: a scheduler's stop signal ends the run with a checkpoint, not a loss.

SLURM and Kubernetes send SIGTERM some time before they kill a preempted job (SLURM can be
asked for SIGUSR1 earlier still: ``--signal=USR1@120``); ``timeout`` sends SIGTERM too.
While training, these signals only set a flag (a handler must not write files: the signal
may arrive in the middle of a checkpoint write). At the next optimizer-step boundary every
rank sees the flag (one collective), the run writes a checkpoint there, says where it
stopped and exits with ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL``: "try again"), the code a
requeue script or a Kubernetes ``podFailurePolicy`` can match. ``--resume auto`` then
continues exactly as from any other checkpoint.

Under a launcher (``--nproc-per-node``, torchrun) SIGINT (Ctrl-C reaches every process of the
terminal's group) is handled the same way, so the ranks stop together with one message and
exit 130. A single process keeps Python's KeyboardInterrupt (it stops at once).

Limit: the checkpoint is written at the next step boundary, so the grace period between the
signal and the kill must exceed one step plus one checkpoint write (torchrun's launcher waits
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds, 30 by default, before SIGKILL).
"""
from __future__ import annotations

import os
import signal
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import fsio, runs
from ..errors import EXIT_PREEMPTED
from .errors import RunError

_STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class PreemptedRun(RunError):
    """The run stopped on a scheduler's signal after writing a checkpoint; exit code 75."""

    exit_code = EXIT_PREEMPTED


class StopWatch:
    """Signal handlers that record a stop request; ``restore`` puts the old ones back."""

    def __init__(self, distributed: bool) -> None:
        self.requested: Optional[str] = None
        self._old: Dict[int, Any] = {}
        # A terminal closing (SIGHUP) is no reason to stop a single process (its output
        # goes to the run's log then: mfdsl.runner.output); a launcher passes SIGHUP on as
        # a stop, and then the ranks stop together.
        names = list(_STOP_SIGNALS) + (["SIGINT", "SIGHUP"] if distributed else [])
        if not distributed and hasattr(signal, "SIGHUP"):
            try:
                self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
            except ValueError:
                pass
        for name in names:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (an embedding program): no handlers
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is None:
            self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old.clear()


# Ranks agree on a stop through a collective, which waits for every rank's queue: asked at
# every step it would undo the step's freedom from host reads (runner/step.py). Every 4th
# step keeps the delay to a few steps, well inside a scheduler's grace period (SLURM's
# KillWait and Kubernetes' default are 30 s).
DISTRIBUTED_CHECK_EVERY = 4


def stop_requested(watch: Optional[StopWatch], env: Any) -> Optional[str]:
    """Collective (every rank calls it at the same step boundary): the signal name if any
    rank was asked to stop, else None."""
    from .distributed import gather_objects

    if watch is None:
        return None
    if not getattr(env, "distributed", False):
        return watch.requested
    names = [n for n in gather_objects(env, watch.requested) if n]
    return names[0] if names else None


def stop_at_boundary(watch: Optional[StopWatch], env: Any, st: Any,
                     save: Callable[[], None], latest: Callable[[], Optional[str]],
                     output: str, log: Callable[[str], None]) -> None:
    """At a step boundary: if a stop was asked for, checkpoint (unless this step just was)
    and raise PreemptedRun (InterruptedRun for SIGINT) on every rank."""
    if env.distributed and st.step % DISTRIBUTED_CHECK_EVERY:
        return
    name = stop_requested(watch, env)
    if name is None:
        return
    # Imported only on a stop: this function runs at every step boundary.
    from .checkpointing import WEIGHTS_EXT
    from .errors import InterruptedRun

    if st.last_saved_step != st.step:
        save()
    stem = latest() if env.is_main else None
    where = f"{stem}{WEIGHTS_EXT}" if stem else "(none)"
    msg = (f"stopped by {name} at step {st.step} (epoch {st.epoch + 1}); checkpoint {where}; "
           f"continue with --resume auto -o {output}")
    err: RunError = InterruptedRun(msg) if name == "SIGINT" else PreemptedRun(
        msg + f" (exit code {EXIT_PREEMPTED}: requeue)")
    err.quiet = not env.is_main
    log(f"{name}: stopping at the step boundary after step {st.step}")
    raise err


# --------------------------------------------------------------------------- leftovers
# The temporary files' names are fsio's (fsio.temporary_target reads them).


def leftover_temporaries(folder: str, owned: Callable[[str, bool], bool]) -> List[str]:
    """Hidden temporary files of interrupted atomic writes in ``folder`` and its
    checkpoints/ sub-folder whose target name ``owned(name, in_checkpoints)`` says is a
    run file."""
    out = []
    for sub, in_ckpt in ((folder, False), (runs.checkpoints_dir(folder), True)):
        if not os.path.isdir(sub) or os.path.islink(sub):
            continue
        for name in os.listdir(sub):
            target = fsio.temporary_target(name)
            path = os.path.join(sub, name)
            if target is not None and owned(target, in_ckpt) and os.path.isfile(path) \
                    and not os.path.islink(path):
                out.append(path)
    return sorted(out)


def remove_leftover_temporaries(folder: str) -> Tuple[List[str], int]:
    """Remove what ``leftover_temporaries`` finds (call only while holding the run's lock:
    no other writer can have a write in flight). Returns (paths removed, bytes freed)."""
    from .run_folder import is_run_file

    removed, freed = [], 0
    for path in leftover_temporaries(folder, is_run_file):
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except OSError:
            continue
        removed.append(path)
        freed += size
    return removed, freed
