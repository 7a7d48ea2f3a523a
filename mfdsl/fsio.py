"""Every file mfdsl writes or reads from a user-named path goes through here.

Writes are atomic: the data goes to a temporary file in the target's own folder, is
fsynced, optionally verified, and renamed over the target (then the folder is fsynced), so
a crash or a failed check leaves the old file intact and no temporary file behind. An
existing file keeps its permission bits; a new one gets 0666 minus the umask, as ``open``
would give it.

Symbolic links, two policies:

* ``OUTPUT`` (a path the user named: ``-o``, ``fmt -w``, ``--graph-out``): the link is
  the user's; the write goes through it to its target, which keeps being a link.
* ``INTERNAL`` (a file inside a run folder): a link is refused (``UnsafePathError``), so
  run data is never written outside the folder asked for.

Reads of user-named input files (specs, checkpoints) check that the path is a regular
file (a FIFO would block, ``/dev/zero`` would never end) and bound its size.
"""
from __future__ import annotations

import os
import re
import stat
import tempfile
from typing import Callable, Iterable, Optional, Union
from .errors import EXIT_WRITE, UserError

OUTPUT = "output"
INTERNAL = "internal"

# The temporary files of atomic writes lie hidden next to their target: write_atomic_with
# writes ".<name>.<8 random characters>.tmp<ext>" (mkstemp), link_atomic makes
# ".<name>.<pid>.lnk". temporary_target reads such a name back (the one parser).
TMP_MARK = ".tmp"
LINK_MARK = ".lnk"
_TEMPORARY = re.compile(r"\.(?P<base>.+)\.(?:[a-z0-9_]{8}" + re.escape(TMP_MARK)
                        + r"(?:\.[A-Za-z0-9]+)?|[0-9]+" + re.escape(LINK_MARK) + ")")


def _temporary_prefix(target_name: str) -> str:
    return f".{target_name}."


def temporary_target(name: str) -> Optional[str]:
    """The name of the file a temporary file of an atomic write was for
    (``.run.json.k2j4h_x9.tmp.json`` -> ``run.json``); None for any other name."""
    m = _TEMPORARY.fullmatch(name)
    return m.group("base") if m else None


class UnsafePathError(UserError, OSError):
    """A path mfdsl refuses to write or read; ``str()`` is the whole message. Exit code 2:
    a refused input, as every other bad path."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror


class WriteError(UserError, OSError):
    """A write failed on the file system's side (full disk, quota, read-only, I/O error);
    ``str()`` is the whole message: the file, the reason, and what was kept."""

    exit_code = EXIT_WRITE  # EX_IOERR: distinct from a refused input (2), so scripts can tell

    def __init__(self, message: str, errno_: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = errno_
        self.strerror = message

    def __str__(self) -> str:
        return self.strerror


# Writers that do their own I/O in C++ (torch's zip writer) report a failed write like this,
# with the OSError (if any) only in the exception's context.
_NATIVE_WRITE_FAILURES = ("basic_ios::clear", "inline_container.cc", "PytorchStreamWriter",
                          "file write failed", "unexpected pos")


def _os_error_in(exc: BaseException) -> Optional[OSError]:
    seen = 0
    e: Optional[BaseException] = exc
    while e is not None and seen < 8:
        if isinstance(e, OSError) and not isinstance(e, (UnsafePathError, WriteError)):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _interrupt_in(exc: BaseException) -> Optional[BaseException]:
    """A KeyboardInterrupt (or other non-Exception) behind ``exc``: torch's native writer
    turns one raised inside its Python file callback into a RuntimeError that looks like a
    failed write."""
    seen = 0
    e: Optional[BaseException] = exc
    while e is not None and seen < 8:
        if not isinstance(e, Exception):
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _free_space(folder: str) -> str:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return ""
    return f"; {st.f_bavail * st.f_frsize / 1e6:.1f} MB free there"


def write_failure(exc: BaseException, target: str, existed: bool) -> Optional[WriteError]:
    """The WriteError ``exc`` amounts to when writing ``target`` (None: not an I/O failure,
    e.g. the writer's own bug or a refused path, which keep their own type)."""
    import errno as E

    if isinstance(exc, WriteError):
        return exc
    if isinstance(exc, UnsafePathError):
        return None
    os_err = _os_error_in(exc)
    if os_err is None and not any(m in str(exc) for m in _NATIVE_WRITE_FAILURES):
        return None
    code = os_err.errno if os_err is not None else None
    folder = os.path.dirname(os.path.abspath(target))
    if code in (E.ENOSPC, E.EDQUOT):
        why = os.strerror(code) + _free_space(folder)
    elif code is not None:
        why = os_err.strerror or os.strerror(code)
    else:  # the native writer gave no errno: say what the disk says
        why = "the write failed (full disk or I/O error?)" + _free_space(folder)
    kept = ("the previous file is kept unchanged" if existed
            else "nothing was left there (the partial temporary file was removed)")
    return WriteError(f"cannot write {target}: {why}; {kept}", code)


# --------------------------------------------------------------------------- helpers
def fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    # Linux reports it without changing it; setting and restoring it is a (brief) race
    # with other threads creating files.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_target(path: str, links: str) -> str:
    """The path a write of ``path`` actually replaces, after the symlink policy."""
    if not os.path.islink(path):
        return path
    if links == INTERNAL:
        raise UnsafePathError(f"{path} is a symbolic link; a run folder's files must be its "
                              "own (remove the link)")
    return os.path.realpath(path)


def same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one file (through symlinks and hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs(output: str, inputs: Iterable[Optional[str]], what: str) -> None:
    """Raise if writing ``output`` would overwrite one of the command's input files."""
    for src in inputs:
        if src and same_file(output, src):
            raise UnsafePathError(f"{what} {output} is the input file {src}; mfdsl never "
                                  "overwrites its input (choose another output path)")


# --------------------------------------------------------------------------- writes
def write_atomic_with(path: str, write: Callable[[str], None], *, links: str = OUTPUT,
                      verify: Optional[Callable[[str], None]] = None) -> str:
    """Run ``write(tmp)`` (and ``verify(tmp)``) then rename ``tmp`` onto ``path``'s target.

    Any exception leaves the previous file untouched and removes the temporary one.
    Returns the path written (the link's target for a followed link).
    """
    target = write_target(path, links)
    folder = os.path.dirname(os.path.abspath(target))
    base = os.path.basename(target)
    ext = os.path.splitext(base)[1]
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    else:
        if not os.access(target, os.W_OK):
            # A rename would replace it anyway; a read-only file says "do not".
            raise PermissionError(13, "Permission denied (the file is read-only)", target)
    existed = os.path.lexists(target)
    # The real extension last: writers that pick a format from the name still work.
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(base), suffix=TMP_MARK + ext,
                                   dir=folder)
    except OSError as exc:
        raise (write_failure(exc, target, existed) or exc) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # after the writer, which may have re-created the file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        interrupt = _interrupt_in(exc)
        if interrupt is not None:  # Ctrl-C inside a native writer: still an interrupt
            raise interrupt from None
        failure = write_failure(exc, target, existed)
        if failure is not None:
            raise failure from None
        raise
    fsync_dir(folder)
    return target


def write_atomic(path: str, data: Union[bytes, str], *, links: str = OUTPUT) -> str:
    """Atomically replace ``path`` with ``data`` (str is written as UTF-8)."""
    blob = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(blob)

    return write_atomic_with(path, write, links=links)


def link_atomic(src: str, dst: str) -> None:
    """Make ``dst`` name the same file as ``src`` (a hard link, or else a copy), atomically.
    ``dst`` is internal: a symlink there is refused."""
    import shutil

    write_target(dst, INTERNAL)
    folder = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(folder, f"{_temporary_prefix(os.path.basename(dst))}{os.getpid()}"
                               f"{LINK_MARK}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
        fsync_dir(folder)
    except OSError:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        write_atomic_with(dst, lambda t: shutil.copyfile(src, t), links=INTERNAL)


def append_text(path: str, text: str) -> None:
    """Append to a log file inside a run folder; a symlink there is refused (O_NOFOLLOW).

    Appends are not atomic: readers of these logs skip a line cut short by a crash.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePathError(f"{path} is a symbolic link; a run folder's files must be "
                                  "its own (remove the link)") from None
        raise (write_failure(exc, path, existed) or exc) from None
    try:
        with os.fdopen(fd, "a", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as exc:
        failure = write_failure(exc, path, existed)
        if failure is None:
            raise
        raise WriteError(str(failure).rsplit("; ", 1)[0] + "; the lines before this one are "
                         "kept (a last line may be cut short)", failure.errno) from None


def ensure_folder(path: str) -> None:
    """``os.makedirs`` for a folder inside a run folder: an existing symlink is refused."""
    if os.path.islink(path):
        raise UnsafePathError(f"{path} is a symbolic link; a run folder's sub-folders must be "
                              "its own (remove the link)")
    os.makedirs(path, exist_ok=True)


# --------------------------------------------------------------------------- reads
def check_regular(path: str, what: str = "file") -> os.stat_result:
    """Stat ``path`` (following links) and refuse anything but a regular file."""
    return _require_regular(os.stat(path), path, what)


def _require_regular(st: os.stat_result, path: str, what: str) -> os.stat_result:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"not a regular file (a FIFO, device or socket); a {what} must "
                              "be a regular file")
    return st


def read_regular(path: str, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Opened without blocking, then checked on the open descriptor, so a FIFO or device
    swapped in after a check cannot hang or flood the read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        st = _require_regular(os.fstat(fd), path, what)
        if st.st_size > limit:
            raise UnsafePathError(f"{st.st_size} bytes: larger than the {limit // 1024} KiB a "
                                  f"{what} may have")
        chunks = []
        size = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # the file grew after fstat
                raise UnsafePathError(f"larger than the {limit // 1024} KiB a {what} may have")
    finally:
        os.close(fd)
    return b"".join(chunks)
