"""One writer per run folder: an exclusive lock held for the life of a training run.

The lock is the file ``<run folder>/.mfdsl-lock``. The holder keeps an exclusive
``flock`` on it and records who it is (host, pid, the process's start time, when it took
the lock, its command line), and touches the file every ``HEARTBEAT_S`` seconds.

A second writer is refused at once, with the holder named. Two layers, because a shared
file system may not make ``flock`` work across hosts:

* ``flock``: exact on one host and on file systems that implement it across hosts (NFSv4,
  Lustre mounted with ``-o flock``, GPFS, CephFS). The kernel drops it when the holder dies,
  however it dies, so a lock left by a dead process on this host never blocks.
* the record: a lock whose ``flock`` was free is still respected when the record names a
  process that is alive on this host (same pid and start time), or one on another host
  whose heartbeat is younger than ``STALE_AFTER_S`` (where ``flock`` is local-only, as on
  Lustre with ``localflock``, or unsupported: then ``flock`` errors are tolerated and the
  record alone decides).

Limits: where ``flock`` is not shared between hosts, two jobs on different hosts starting
within the same instant can both take the lock (each sees no record yet), and a holder on
another host that died is known dead only when its heartbeat is ``STALE_AFTER_S`` old.
A stale lock (its holder gone) is taken over with a note naming it.

A restarted job is not a second writer: a record naming the same job
(:func:`~.launch.job_id`: SLURM job and step id, torchrun's rendezvous id) is taken over
with a note, even when its holder still looks alive (a requeued job, an elastic restart, a
rank 0 moved to another host, whose predecessor's flock the file system has not yet
released). A record of another job, or of none, is refused as before.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

from .. import runs
from .errors import RunError
from .launch import job_id

LOCK_NAME = runs.LOCK_FILE
HEARTBEAT_S = 30.0
# A record on another host older than this is a dead holder's (well over the heartbeat).
STALE_AFTER_S = 300.0

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the record alone decides
    fcntl = None  # type: ignore[assignment]


class RunLocked(RunError):
    """Another live process writes to the run folder; exit code 2 (nothing was changed)."""


def _proc_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (clock ticks since boot), None if unknown/not alive.

    With the pid it identifies a process: a pid reused after the holder died has another
    start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
        # Field 22; the command name (field 2) may contain spaces, so split after ')'.
        return raw.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive_here(pid: int, start: Optional[str]) -> bool:
    if pid <= 0:
        return False
    now = _proc_start(pid)
    if now is not None:
        return start is None or now == start
    try:
        os.kill(pid, 0)  # no /proc (macOS): existence only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Holder:
    """Who holds (or held) a run folder's lock, as its record says."""

    host: str
    pid: int
    start: Optional[str]
    since: float
    command: str
    heartbeat: float  # mtime of the lock file
    job: Optional[str] = None  # launch.job_id() of the holder

    def same_job(self) -> bool:
        """Whether the holder is an earlier incarnation of this process's job."""
        mine = job_id()
        return mine is not None and self.job == mine

    @classmethod
    def parse(cls, raw: bytes, mtime: float) -> Optional["Holder"]:
        try:
            d: Dict[str, Any] = json.loads(raw.decode("utf-8"))
            return cls(host=str(d["host"]), pid=int(d["pid"]), start=d.get("start"),
                       since=float(d.get("since", 0.0)), command=str(d.get("command", "")),
                       heartbeat=mtime, job=d.get("job"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        cmd = f", command: {self.command[:200]}" if self.command else ""
        job = f", job {self.job}" if self.job else ""
        return f"host {self.host}, pid {self.pid}{job}, since {when}{cmd}"

    def alive(self, now: float) -> bool:
        """Whether the holder still runs, as far as this host can tell."""
        if self.host == socket.gethostname():
            return _alive_here(self.pid, self.start)
        return now - self.heartbeat < STALE_AFTER_S


class RunLock:
    """The exclusive lock of one run folder; ``acquire`` creates the folder if needed."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd: Optional[int] = None
        self.created_folder = False
        self.notes: list = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ acquire
    def acquire(self, command: Optional[str] = None, wait: float = 0.0) -> "RunLock":
        """Take the lock or raise RunLocked naming the holder (nothing is changed then).
        With ``wait`` > 0, retry for up to that many seconds first (a requeued job whose
        predecessor is still writing its last checkpoint)."""
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                return self._acquire_once(command)
            except RunLocked as exc:
                if time.monotonic() >= deadline:
                    if wait > 0:
                        exc.message = exc.message.replace(
                            "; nothing was changed", f"; waited {wait:g} s; nothing was changed")
                        exc.args = (exc.message,)
                    raise
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def _acquire_once(self, command: Optional[str]) -> "RunLock":
        try:
            return self._try(command)
        except RunError:
            raise
        except OSError as exc:
            # Say which option is at fault: a bare "[Errno 20] Not a directory" does not.
            raise RunError(f"--output {self.folder}: cannot write the run folder: "
                           f"{exc.strerror or exc}") from None

    def _try(self, command: Optional[str]) -> "RunLock":
        if not os.path.isdir(self.folder):
            if os.path.lexists(self.folder):
                return self  # not a folder: the run-folder checks refuse it with its reason
            try:
                os.makedirs(self.folder)
                self.created_folder = True
            except FileExistsError:
                pass  # made by a concurrent start: the lock below decides
        if os.path.islink(self.path):
            raise RunError(f"{self.path} is a symbolic link; a run folder's files must be its "
                           "own (remove the link)")
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                flock_ok = self._flock(fd)
            except BaseException:
                os.close(fd)
                raise
            # The file may have been removed (by a holder releasing it) between our open and
            # flock: then we hold a lock on a name nobody else opens; start again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                self._check_record(fd, flock_ok)
                self._write_record(fd, command)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            self._start_heartbeat()
            return self
        raise RunError(f"{self.path}: the lock file keeps being replaced; is another mfdsl "
                       "process starting in this folder?")

    def _flock(self, fd: int) -> bool:
        """True if the flock was taken, False where the file system has none; raise
        RunLocked if another process holds it."""
        if fcntl is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = self._read(fd)
                if holder is not None and holder.same_job():
                    return False  # taken over by the record check, which notes it
                raise RunLocked(self._busy_message(holder)) from None
            if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                self.notes.append(f"note: {self.folder}: the file system has no flock "
                                  f"({os.strerror(exc.errno)}); the run's lock relies on its "
                                  "record (host, pid, heartbeat) alone")
                return False
            raise

    def _read(self, fd: int) -> Optional[Holder]:
        try:
            st = os.fstat(fd)
            raw = os.pread(fd, 64 * 1024, 0)
        except OSError:
            return None
        return Holder.parse(raw, st.st_mtime) if raw else None

    def _busy_message(self, holder: Optional[Holder]) -> str:
        who = holder.describe() if holder else "a process that has not written its record yet"
        if holder is not None and holder.host != socket.gethostname():
            age = time.time() - holder.heartbeat
            who += (f"; its last heartbeat was {age:.0f} s ago, and a lock without one for "
                    f"{STALE_AFTER_S:.0f} s counts as stale")
        return (f"--output {self.folder} is being written by another mfdsl run ({who}); "
                "nothing was changed. Wait for it to end (a requeued `--resume auto` job "
                f"can simply be started again), or choose another --output. The lock file "
                f"is {self.path}")

    def _check_record(self, fd: int, flock_ok: bool) -> None:
        holder = self._read(fd)
        if holder is None:
            return
        me = (socket.gethostname(), os.getpid())
        if (holder.host, holder.pid) == me:
            return
        now = time.time()
        # With flock taken, a holder on this host is dead (the kernel would hold it for a
        # live one): only a record from another host can still be live (flock not shared).
        live = holder.alive(now) if (not flock_ok or holder.host != me[0]) else False
        if live and holder.same_job():
            self.notes.append(f"note: {self.path}: the lock of an earlier incarnation of this "
                              f"job ({holder.describe()}) was taken over")
            return
        if live:
            raise RunLocked(self._busy_message(holder))
        self.notes.append(f"note: {self.path}: a stale lock of a process no longer running "
                          f"({holder.describe()}) was taken over")

    def _write_record(self, fd: int, command: Optional[str]) -> None:
        rec = {"host": socket.gethostname(), "pid": os.getpid(),
               "start": _proc_start(os.getpid()), "since": time.time(),
               "command": command if command is not None else " ".join(sys.argv),
               "job": job_id()}
        blob = (json.dumps(rec, sort_keys=True) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, blob, 0)
        os.fsync(fd)

    # ------------------------------------------------------------------ heartbeat
    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # a missed beat only makes the lock look older

        self._thread = threading.Thread(target=beat, name="mfdsl-run-lock", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ release
    def release(self) -> None:
        """Remove the lock file and drop the lock (an empty folder this lock made goes too)."""
        self._stop.set()
        if self.fd is None:
            return
        try:
            # Unlink while still holding it: a waiting opener then sees another inode. Not
            # when a later incarnation of the job has taken the lock over (its record).
            holder = self._read(self.fd)
            mine = holder is None or (holder.host, holder.pid) == (socket.gethostname(),
                                                                    os.getpid())
            if mine and os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None
        if self.created_folder:
            try:
                os.rmdir(self.folder)  # only when empty: the run was refused before writing
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
