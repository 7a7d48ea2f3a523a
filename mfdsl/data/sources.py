"""Where images come from: one small interface over the forms ImageNet is held in.

A :class:`Source` is a split of a dataset: ``len(source)`` samples, its class list
``classes`` (label ``i`` is ``classes[i]``), ``source.read(i)`` the encoded image bytes of
sample ``i`` (any exception: unreadable), ``source.labels`` the labels as one int64 array
and ``source.name(i)`` a name for messages and the unreadable-image log. Indexes are flat
numpy arrays (see :mod:`mfdsl.data.index`), so forked DataLoader workers share them.

The forms and how ``--data`` is told apart: :mod:`mfdsl.data.layout`.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError


class UnknownClassError(DataError):
    """A class folder that is not in the given class list (``folders``: their names)."""

    def __init__(self, message: str, folders: List[str]) -> None:
        super().__init__(message)
        self.folders = folders


def show_path(path: str) -> str:
    """A path as one unambiguous line: quoted if it holds newlines or other odd characters."""
    return path if path.isprintable() else ascii(path)


class Source:
    """A split's samples: see the module docstring. Subclasses set the attributes."""

    kind = "source"
    root: str
    classes: List[str]
    labels: np.ndarray
    missing_classes: List[str]
    notes: List[str]

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        raise NotImplementedError

    def name(self, i: int) -> str:
        raise NotImplementedError

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def known_unreadable(self, i: int) -> Optional[str]:
        """Why sample ``i`` is known to be unreadable without reading it, or None."""
        return None


def read_file(path: str) -> bytes:
    """The bytes of a regular file, opened once: non-blocking (a FIFO would block the
    open) and checked with ``fstat`` on the open file, not a ``stat`` of the path."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        import stat as _stat

        if not _stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        chunks = []
        size = st.st_size
        while True:
            b = os.read(fd, max(size, 1 << 16))
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- classes
def imagenet_wnids() -> Optional[List[str]]:
    """ImageNet-1k's 1000 wnids in sorted order (label order of every ImageNet-1k form),
    from timm's packaged list; None if timm does not ship it."""
    try:
        from importlib import resources

        text = resources.files("timm.data").joinpath("_info/imagenet_synsets.txt").read_text()
    except (ImportError, FileNotFoundError, OSError):
        return None
    wnids = [w.strip() for w in text.splitlines() if w.strip()]
    return wnids if len(wnids) == 1000 else None


_WNID = re.compile(r"^n\d{8}$")


def shard_class_names(root: str, metadata_names: Optional[List[str]], n_labels: int
                      ) -> Tuple[List[str], str]:
    """The class list of a shard dataset and a note on where it came from.

    In order: a ``classes.txt`` in the dataset folder (one name per line, line i = label
    i); the dataset's own names if they are wnids; for 1000 classes, ImageNet-1k's sorted
    wnids (the label order of the Hugging Face and WebDataset ImageNet-1k forms, and the
    class indices of the ImageFolder form, so runs agree across forms); the dataset's own
    names; else the label numbers as names."""
    path = os.path.join(root, "classes.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            names = [ln.strip() for ln in f if ln.strip()]
        if len(names) < n_labels:
            raise DataError(f"{path} lists {len(names)} classes, but the labels go up to "
                            f"{n_labels - 1}")
        return names, f"class names from {path}"
    if metadata_names and all(_WNID.match(n) for n in metadata_names):
        return list(metadata_names), "class names (wnids) from the dataset's metadata"
    count = len(metadata_names) if metadata_names else n_labels
    if count == 1000:
        wnids = imagenet_wnids()
        if wnids is not None:
            return wnids, ("1000 classes: taken as ImageNet-1k, class names are its sorted "
                           "wnids (as in the ImageFolder form)")
    if metadata_names:
        if len(metadata_names) < n_labels:
            raise DataError(f"{root}: the metadata names {len(metadata_names)} classes, but "
                            f"the labels go up to {n_labels - 1}")
        return list(metadata_names), "class names from the dataset's metadata"
    return [str(i) for i in range(n_labels)], (
        "no class names found: classes are named by their label numbers (add a classes.txt, "
        "one name per line, to name them)")


def stored_order_note(own: List[str], labels: np.ndarray) -> Optional[str]:
    """A note if a shard split's samples are not stored class by class in sorted class-name
    order, the folder form's reading order (``labels``: indices into ``own``).

    A run reads sample i as the i-th stored sample (the sampler's permutation, each
    sample's augmentation seed and the unreadable-image replacement follow that order), so
    such shards give other batches than the same images in folder form. Class order is
    necessary, not sufficient: within a class the folder reads files by name, and a
    shard's own names are not compared here (parquet would need its path column read)."""
    if len(labels) < 2:
        return None
    rank = np.empty(len(own), np.int64)
    rank[sorted(range(len(own)), key=own.__getitem__)] = np.arange(len(own))
    r = rank[labels]
    back = np.flatnonzero(r[1:] < r[:-1])
    if not len(back):
        return None
    i = int(back[0]) + 1
    return (f"samples are not stored class by class (sample {i} is class {own[labels[i]]!r}, "
            f"after {own[labels[i - 1]]!r}): batches follow the stored order, so this run is "
            "not bitwise the one these images give in folder form (docs/training.md, the "
            "three forms)")


def remap_labels(root: str, own: List[str], labels: np.ndarray,
                 classes: Optional[Sequence[str]]) -> Tuple[List[str], np.ndarray, List[str]]:
    """Labels re-expressed as positions in ``classes`` (a run's class list), and the listed
    classes this split has no sample of. A class not in the list is an error."""
    present = np.unique(labels) if len(labels) else np.zeros(0, np.int64)
    if classes is None:
        return own, labels, []
    want = list(classes)
    pos = {c: i for i, c in enumerate(want)}
    unknown = [own[i] for i in present if own[i] not in pos]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
        raise UnknownClassError(
            f"{root}: class(es) {shown} are not in the class list (the model was not trained "
            f"on them; its {len(want)} classes: {', '.join(map(repr, want[:5]))}"
            f"{' ...' if len(want) > 5 else ''})", unknown)
    table = np.array([pos.get(c, -1) for c in own], np.int64)
    new = table[labels] if len(labels) else labels
    have = {own[i] for i in present}
    return want, new, [c for c in want if c not in have]
