"""Training output that never stops training: a closed stdout degrades to a log file.

``mfdsl train ... | head``, a log pipe whose reader died, or a terminal that went away make
writes to stdout fail (BrokenPipeError, EIO). Losing the console is no reason to lose the
run: the first failed write points stdout at /dev/null (so neither later prints nor the
interpreter's final flush fail) and every later line goes to ``<run>/output.log``, which the
run folder keeps. A single process also ignores SIGHUP (the terminal closing) while it
trains; under a launcher SIGHUP stops the run with a checkpoint like SIGTERM.
"""
from __future__ import annotations

import errno
import os
import sys
import time
from typing import Optional

from .. import runs

LOG_NAME = runs.LOG_FILE
_DEAD = (errno.EPIPE, errno.EIO, errno.ENXIO, errno.EBADF)


class Console:
    """Prints lines; after stdout breaks, appends them to the run folder's log file."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.log_path: Optional[str] = None

    def say(self, msg: str, write=None) -> None:
        """Print ``msg`` (through ``write``, e.g. a progress bar's, if given)."""
        if self.log_path is None:
            try:
                if write is not None:
                    write(msg)
                else:
                    print(msg, flush=True)
                return
            except (BrokenPipeError, ValueError):
                self._degrade("closed")
            except OSError as exc:
                if exc.errno not in _DEAD:
                    raise
                self._degrade(os.strerror(exc.errno))
        self._append(msg + "\n")

    def _degrade(self, why: str) -> None:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass
        self.log_path = os.path.join(self.folder, LOG_NAME)
        note = (f"note: {time.strftime('%Y-%m-%d %H:%M:%S')}: stdout {why}; training goes "
                f"on, its output continues here\n")
        self._append(note)
        try:
            print(f"note: stdout {why}; the run's output continues in {self.log_path}",
                  file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def _append(self, text: str) -> None:
        from .. import fsio

        try:
            os.makedirs(self.folder, exist_ok=True)
            fsio.append_text(self.log_path, text)
        except OSError:
            pass  # the log is a courtesy: a full disk stops the run at its next checkpoint
