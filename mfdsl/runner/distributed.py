"""One process per device under torchrun: process-group setup and small collective helpers."""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, List, Optional

import torch
import torch.distributed as dist

from .errors import RunError
from .launch import launched_local_rank, launched_rank, launched_world_size, rendezvous

TIMEOUT = timedelta(minutes=30)  # of the process group's collectives and its store
_joined = False  # whether this process ever joined a process group (see leave_process)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else CPU. Each launched process gets cuda:<its local rank>."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"--device {name}: CUDA is not available on this machine")
        if name == "cuda":  # a task that sees one device (srun --gpu-bind) uses it
            name = f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise RunError(f"bad --device '{name}': {exc}") from None


def setup(device_name: str) -> DistEnv:
    """Join the process group when a launcher (torchrun, srun, mpirun) started more than
    one process (nccl on CUDA, gloo on CPU); rank 0's address: :func:`.launch.rendezvous`."""
    world, rank = launched_world_size(), launched_rank()
    local_rank = launched_local_rank()
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, store=_attempt_store(rank, world), rank=rank,
                                world_size=world, timeout=TIMEOUT)
        global _joined
        _joined = True
    return DistEnv(rank, world, local_rank, device)


def _attempt_store(rank: int, world: int) -> "dist.Store":
    """The store the process group meets in, private to this attempt of the job.

    torchrun's agent keeps one store over the restarts of ``--max-restarts`` (torch 2.14,
    standalone and c10d rendezvous), so a restarted rank reads the addresses its dead
    predecessors published there and cannot connect (gloo: "Connection refused"): each
    attempt gets its own key prefix. Where no agent serves a store (srun, mpirun), rank 0
    hosts it, as ``env://`` would.
    """
    addr, port = rendezvous()
    agent_serves = (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                    and os.environ.get("MASTER_ADDR") == addr
                    and os.environ.get("MASTER_PORT") == str(port))
    store = dist.TCPStore(addr, port, world, is_master=rank == 0 and not agent_serves,
                          timeout=TIMEOUT, multi_tenant=True)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"mfdsl/attempt_{attempt}", store)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave_process(code: int) -> None:
    """End a process that joined a process group with ``code``, skipping the interpreter's
    finalization; return (doing nothing) in any other process.

    Why: DDP's reducer keeps the process group, and its worker threads, alive after
    ``destroy_process_group`` (torch 2.14: both ``pt_gloo_runloop`` threads outlive it and a
    ``gc.collect()``). A worker that drops the last reference to a tensor Python has seen
    must take the GIL; during finalization that ends the thread inside C++ and aborts the
    process ("terminate called without an active exception", exit -6) after a run that
    succeeded. Exit handlers run and streams are flushed first, so nothing is lost.
    """
    if not _joined:
        return
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: there is nothing left to say there
    os._exit(code)


def all_sum(env: DistEnv, values: List[float]) -> List[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(env: DistEnv, flag: bool) -> bool:
    return all_sum(env, [1.0 if flag else 0.0])[0] > 0


def gather_objects(env: DistEnv, obj: Any) -> List[Any]:
    if not env.distributed:
        return [obj]
    out: List[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def agree_on_failure(env: DistEnv, failure: Optional[BaseException]) -> None:
    """Collective: if any rank failed, every rank raises and exactly one message is shown.

    The lowest failing rank re-raises its own error (the CLI prints it); every other rank
    raises a quiet RunError with the same exit code, so the launcher sees one failure
    cause and no rank is left waiting in a collective.
    """
    if not env.distributed:
        if failure is not None:
            raise failure
        return
    mine = None if failure is None else (str(getattr(failure, "message", failure)),
                                         int(getattr(failure, "exit_code", 2)))
    reports = gather_objects(env, mine)
    failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
    if not failed:
        return
    first, (message, code) = failed[0]
    if env.rank == first and failure is not None:
        raise failure
    quiet = RunError(message)
    quiet.exit_code = code
    quiet.quiet = True
    raise quiet


@contextlib.contextmanager
def checked_alike_on_every_rank() -> Iterator[None]:
    """Around checks every rank makes on the same inputs before the process group exists
    (files, folders, options): a RunError there is raised by every rank, so only rank 0
    prints it; the others exit with the same code, silently."""
    try:
        yield
    except RunError as exc:
        if launched_rank() != 0:
            exc.quiet = True
        raise
