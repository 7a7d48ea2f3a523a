"""Launching: ``mfdsl train|eval --nproc-per-node N`` (one process per device on this
machine; with ``--nnodes``, one such agent per machine), and what a launched process reads
of its launcher (rank, world size).

torchrun's launcher raises (and prints the traceback of) ``ChildFailedError`` whenever a
worker exits non-zero, even when that worker already said why in one line. Starting the
same launcher in-process lets mfdsl keep the worker's message as the only one and return
its exit code.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple

# The launcher's options (each takes a value): what the agent reads and its workers must
# not see again. Their documentation: :class:`mfdsl.run_options.TrainOptions`.
LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--rdzv-endpoint", "--rdzv-id",
                  "--max-restarts")
OPTION = LAUNCH_OPTIONS[0]


# What each launcher tells its processes, in the order launchers are recognised (the names
# timm reads): (rank, world size, local rank) variables of torchrun (and this launcher),
# SLURM's srun, Open MPI's mpirun, and MPICH / Intel MPI (PMI).
LAUNCHERS = {
    "torchrun": ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    "slurm": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    "openmpi": ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    "pmi": ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
}
DEFAULT_PORT = 29500


def launcher() -> Optional[str]:
    """The launcher that started this process (a key of ``LAUNCHERS``), None without one.
    A SLURM batch script outside ``srun`` has SLURM_PROCID but is no task of a step
    (SLURM_STEP_ID unset): it counts as no launcher."""
    for name, (rank, world, _) in LAUNCHERS.items():
        if rank in os.environ and world in os.environ:
            if name == "slurm" and "SLURM_STEP_ID" not in os.environ:
                continue
            return name
    return None


def _read(which: int, default: int) -> int:
    name = launcher()
    return default if name is None else int(os.environ[LAUNCHERS[name][which]] or default)


def under_launcher() -> bool:
    """True inside a process that a launcher (torchrun, this one, srun, mpirun) started."""
    return launcher() is not None


def launched_rank() -> int:
    """This process's global rank as its launcher set it, known before any process group
    exists: the one place "is this rank 0" is read from the environment."""
    return _read(0, 0)


def launched_world_size() -> int:
    """How many processes the launcher started (1 without one)."""
    name = launcher()
    if name == "slurm" and "SLURM_STEP_NUM_TASKS" in os.environ:
        return int(os.environ["SLURM_STEP_NUM_TASKS"])  # this step's tasks, not the job's
    return _read(1, 1)


def launched_local_rank() -> int:
    """This process's rank on its machine (which device it uses); 0 without a launcher."""
    name = launcher()
    if name is None or LAUNCHERS[name][2] not in os.environ:
        return 0
    return int(os.environ[LAUNCHERS[name][2]])


def job_id() -> Optional[str]:
    """The identity of the job this process belongs to, the same in every incarnation of
    it: SLURM's job and step id (a requeued job keeps both), or torchrun's rendezvous id
    (``--rdzv-id``; kept over an elastic restart). None outside such a job."""
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        return f"slurm:{job}.{os.environ.get('SLURM_STEP_ID', 'batch')}"
    run = os.environ.get("TORCHELASTIC_RUN_ID")
    return f"torchrun:{run}" if run else None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[07-09,12],cpu1`` -> ``gpu07``."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else \
        nodelist[: nodelist.index("]") + 1]
    if "[" not in head:
        return head
    prefix, rng = head[: head.index("[")], head[head.index("[") + 1: -1]
    return prefix + rng.split(",")[0].split("-")[0]


def rendezvous() -> Tuple[str, int]:
    """Where rank 0 listens (MASTER_ADDR, MASTER_PORT), as the process group's ``env://``
    reads it: from the environment, else, under srun, the job's first node and a port
    derived from the job id (every task derives the same). RunError when neither says."""
    from .errors import RunError

    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    name = launcher()
    if name == "slurm":
        nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
        addr = addr or (first_host(nodes) if nodes else None)
        job = os.environ.get("SLURM_JOB_ID")
        port = port or (str(DEFAULT_PORT + int(job) % 20000) if job and job.isdigit() else None)
    if not addr or not port:
        missing = " and ".join(n for n, v in (("MASTER_ADDR", addr), ("MASTER_PORT", port))
                               if not v)
        raise RunError(f"{launched_world_size()} processes started by {name}, but {missing} "
                       "is not set: export MASTER_ADDR (rank 0's host name) and MASTER_PORT (a "
                       "free port there) to every process (docs/training.md)")
    return addr, int(port)


def without_option(argv: Sequence[str], options: Sequence[str] = LAUNCH_OPTIONS) -> List[str]:
    """``argv`` less ``option N`` / ``option=N`` for each of ``options`` (the workers must
    not launch again)."""
    out: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(o + "=" for o in options)):
            out.append(arg)
    return out


@dataclass(frozen=True)
class LaunchPlan:
    """How this machine's agent starts the job: ``nproc`` workers, on ``min_nodes`` to
    ``max_nodes`` machines meeting at ``endpoint`` (None: this machine alone)."""

    nproc: int = 1
    min_nodes: int = 1
    max_nodes: int = 1
    endpoint: Optional[str] = None
    job: Optional[str] = None
    max_restarts: int = 0

    @property
    def world_size(self) -> int:
        """The processes of the job at its full size."""
        return self.nproc * self.max_nodes

    def torchrun_args(self) -> List[str]:
        if self.endpoint is None:
            where = ["--standalone"]
        else:
            where = ["--nnodes", f"{self.min_nodes}:{self.max_nodes}", "--rdzv-backend", "c10d",
                     "--rdzv-endpoint", self.endpoint, "--rdzv-id", str(self.job)]
        return [*where, "--nproc-per-node", str(self.nproc),
                "--max-restarts", str(self.max_restarts)]


def launch_plan(options: Mapping[str, Any]) -> Optional[LaunchPlan]:
    """The launch the options ask for (None: run in this process), or RunError naming the
    option at fault. ``options``: TrainOptions / EvalOptions fields by name."""
    from .errors import RunError

    nproc = options.get("nproc_per_node")
    nnodes, endpoint = options.get("nnodes"), options.get("rdzv_endpoint")
    job, restarts = options.get("rdzv_id"), options.get("max_restarts") or 0
    if nproc is None and nnodes is None and endpoint is None and not restarts:
        return None
    if nproc is not None and nproc < 1:
        raise RunError(f"--nproc-per-node must be >= 1, got {nproc}")
    if restarts < 0:
        raise RunError(f"--max-restarts must be >= 0, got {restarts}")
    low = high = 1
    if nnodes is not None:
        m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", str(nnodes))
        low, high = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
        if not m or low < 1 or high < low:
            raise RunError(f"--nnodes must be N or MIN:MAX with 1 <= MIN <= MAX, got '{nnodes}'")
    if high > 1 and endpoint is None:
        raise RunError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, where the "
                       "machines meet (one of them, a free port there), the same on each")
    if endpoint is not None:
        host, _, port = str(endpoint).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RunError(f"--rdzv-endpoint must be HOST:PORT (a port 1-65535), got "
                           f"'{endpoint}'")
        if not job:
            raise RunError("--rdzv-endpoint needs --rdzv-id NAME: the job's name, the same "
                           "on every machine and kept over restarts (e.g. $SLURM_JOB_ID); the "
                           "run lock knows a restarted job from a second writer by it")
    if restarts and options.get("resume") != "auto":
        raise RunError(f"--max-restarts {restarts} restarts the workers with this same "
                       "command line: add --resume auto, so that a restart continues the run "
                       "from its last checkpoint instead of being refused its run folder")
    return LaunchPlan(nproc or 1, low, high, endpoint, job, restarts)


def launch(argv: Sequence[str], plan: LaunchPlan) -> int:
    """Run ``python -m mfdsl.runner ARGV`` as ``plan`` says; the first failed worker's
    exit code, or 0."""
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
    args = torchrun.parse_args([*plan.torchrun_args(), "-m", "mfdsl.runner",
                                *without_option(argv)])
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
