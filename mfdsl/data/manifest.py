"""Cached indexes ("manifests"): numpy arrays + JSON metadata in one ``.npz``, written
atomically, built under a file lock so that the ranks of one machine scan a dataset once
(the first builds, the others wait and read it), and reused by later runs while their
validation (the caller's: folder times, shard sizes and modification times) holds."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np


def cache_path(kind: str, *key: str) -> str:
    """``$MFDSL_CACHE/<kind>/<hash of key>.npz``."""
    from ..resources import default_cache_dir

    digest = hashlib.sha1("\0".join(key).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return os.path.join(str(default_cache_dir()), kind, f"{digest}.npz")


@contextlib.contextmanager
def build_lock(path: str) -> Iterator[None]:
    """An exclusive lock on ``path + '.lock'`` (none if it cannot be made: then every
    process builds its own, which is only slower). The lock file is removed on release, so
    that the cache does not keep one per dataset ever indexed."""
    lock = path + ".lock"
    fd = _acquire(lock)
    try:
        yield
    finally:
        if fd is not None:
            # Removed while still held: a process waiting on this file gets it once it is
            # unlinked, sees that the path no longer names it and takes the lock again.
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)  # closing releases the lock


def _acquire(lock: str) -> Optional[int]:
    """A descriptor holding ``flock`` on the file that ``lock`` names now, or None."""
    try:
        import fcntl

        os.makedirs(os.path.dirname(lock) or ".", exist_ok=True)
    except (OSError, ImportError):
        return None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock
            os.close(fd)
            return None
        try:
            held, now = os.fstat(fd), os.stat(lock)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except OSError:  # removed by the holder we waited for
            pass
        os.close(fd)


def save(path: str, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> bool:
    """Write atomically (a reader sees the old file or the whole new one); False if the
    folder cannot be written."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, _meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False


def load(path: str) -> Optional[Tuple[Dict[str, np.ndarray], Dict[str, Any]]]:
    """(arrays, metadata), or None if missing or unreadable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["_meta"].tobytes().decode())
            return {k: z[k] for k in z.files if k != "_meta"}, meta
    except (OSError, ValueError, KeyError):
        return None
