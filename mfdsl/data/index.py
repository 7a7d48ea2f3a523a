"""A sample index in flat arrays: one bytes buffer of names, their offsets, int labels.

Why not a list of ``(path, label)`` tuples: DataLoader workers are forked, and reading a
Python object touches its reference count, which copies the page it lives on into the
worker. Over an epoch a worker then holds a private copy of most of a 1.28M-entry list
(~110 MB per worker, measured; pytorch issue 13246). numpy arrays are single objects whose
data pages are only read, so they stay shared.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np


class NameIndex:
    """``n`` names (paths, shard member keys) and labels, stored flat.

    ``names``: uint8 buffer of the names' file-system bytes (``os.fsencode``), back to back;
    ``offsets``: int64, ``n + 1`` entries, name ``i`` is ``names[offsets[i]:offsets[i+1]]``;
    ``labels``: int64 class indices; ``flags``: uint8 per sample (1: known not to be a
    regular file at scan time, so it is reported unreadable without being opened).
    """

    __slots__ = ("names", "offsets", "labels", "flags")

    def __init__(self, names: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
                 flags: Optional[np.ndarray] = None) -> None:
        self.names = names
        self.offsets = offsets
        self.labels = labels
        self.flags = flags if flags is not None else np.zeros(len(labels), np.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return os.fsdecode(self.names[a:b].tobytes())

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def pairs(self) -> List[Tuple[str, int]]:
        """Every ``(name, label)`` as Python objects (for tests and small sets only)."""
        return [(self.name(i), self.label(i)) for i in range(len(self))]

    @property
    def nbytes(self) -> int:
        return int(self.names.nbytes + self.offsets.nbytes + self.labels.nbytes
                   + self.flags.nbytes)


class NameIndexBuilder:
    """Collects names chunk by chunk (one class folder, one shard) into a :class:`NameIndex`
    without holding all of them as Python strings at once."""

    def __init__(self) -> None:
        self._bufs: List[bytes] = []
        self._lens: List[np.ndarray] = []
        self._labels: List[np.ndarray] = []
        self._flags: List[np.ndarray] = []

    def add_chunk(self, names: Sequence[str], labels: Iterable[int],
                  flags: Optional[Iterable[int]] = None) -> None:
        enc = [os.fsencode(n) for n in names]
        self._bufs.append(b"".join(enc))
        self._lens.append(np.fromiter((len(e) for e in enc), np.int64, len(enc)))
        self._labels.append(np.fromiter(labels, np.int64, len(enc)))
        self._flags.append(np.zeros(len(enc), np.uint8) if flags is None
                           else np.fromiter(flags, np.uint8, len(enc)))

    def __len__(self) -> int:
        return sum(len(x) for x in self._labels)

    def build(self) -> NameIndex:
        lens = np.concatenate(self._lens) if self._lens else np.zeros(0, np.int64)
        offsets = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        names = np.frombuffer(b"".join(self._bufs), np.uint8).copy()
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        flags = np.concatenate(self._flags) if self._flags else np.zeros(0, np.uint8)
        self._bufs, self._lens, self._labels, self._flags = [], [], [], []
        return NameIndex(names, offsets, labels, flags)
