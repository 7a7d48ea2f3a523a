"""What ``--data DIR`` holds: one of three forms, and the sources of its splits.

Three forms (told apart by :func:`detect_layout`):

- ``folder``: an ImageFolder tree, ``train/<class>/<images>`` and ``val/<class>/...``;
- ``parquet``: a Hugging Face dataset folder, ``data/train-*.parquet`` and
  ``data/validation-*.parquet`` (as the hub lays out ``ILSVRC/imagenet-1k``), read in place;
- ``tar``: WebDataset shards, ``*-train-NNNN.tar`` and ``*-validation-NNNN.tar`` (as
  ``timm/imagenet-1k-wds``), with an index built once and cached.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..errors import DataError
from .sources import Source

# The split names each form uses; ``val`` and ``validation`` name the same split.
SPLIT_ALIASES = {"val": ("val", "validation"), "validation": ("validation", "val")}
_TAR_SHARD = re.compile(r"^(?P<prefix>.*?)-?(?P<split>[A-Za-z0-9]+)-(?P<num>\d+)\.tar$")
_PARQUET_SHARD = re.compile(
    r"^(?P<split>[A-Za-z0-9_]+?)-(?P<num>\d+)(-of-(?P<total>\d+))?\.parquet$")
# Missing shards named in a refusal (the rest are counted).
SHOW_MISSING = 5


class LayoutError(DataError):
    """``--data`` is in no known form (``found`` empty) or mixes forms (``found``: them)."""

    def __init__(self, message: str, found: List["DataLayout"]) -> None:
        super().__init__(message)
        self.found = found


@dataclass
class DataLayout:
    """What ``--data DIR`` holds: ``kind`` (folder, parquet, tar) and per split name the
    folder (folder form) or the sorted shard files."""

    kind: str
    root: str
    splits: Dict[str, List[str]] = field(default_factory=dict)

    def find(self, split: str) -> Optional[str]:
        """The split name this layout uses for ``split`` (``val`` finds ``validation``)."""
        for name in SPLIT_ALIASES.get(split, (split,)):
            if name in self.splits:
                return name
        return None

    def where(self, split: str) -> Optional[str]:
        """Where ``split`` is, for messages: its folder, or the shards' pattern."""
        name = self.find(split)
        if name is None:
            return None
        files = self.splits[name]
        if self.kind == "folder":
            return files[0]
        return f"{os.path.dirname(files[0])}/{_shard_pattern(self.kind, name)} ({len(files)} shards)"

    def describe(self) -> str:
        return f"{self.kind} form, splits {', '.join(sorted(self.splits)) or 'none'}"


def _parquet_splits(root: str) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for p in sorted(glob.glob(os.path.join(glob.escape(root), "data", "*.parquet"))):
        m = _PARQUET_SHARD.match(os.path.basename(p))
        if m:
            out.setdefault(m.group("split"), []).append(p)
    return out


def _tar_splits(root: str) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for p in sorted(glob.glob(os.path.join(glob.escape(root), "*.tar"))):
        m = _TAR_SHARD.match(os.path.basename(p))
        if m:
            out.setdefault(m.group("split"), []).append(p)
    return out


def detect_layout(root: str, split_names: Sequence[str] = ("train", "val")) -> DataLayout:
    """Tell the three forms apart; a folder holding none, or more than one, is an error
    that says what was found. ``split_names``: the split folders the folder form may have
    (besides train, val and validation)."""
    if not os.path.isdir(root):
        raise DataError(f"--data {root}: no such folder")
    found = []
    names = {"train", "val", "validation"} | set(split_names)
    dirs = sorted(n for n in names if os.path.isdir(os.path.join(root, n)))
    if dirs:
        found.append(DataLayout("folder", root, {n: [os.path.join(root, n)] for n in dirs}))
    pq = _parquet_splits(root)
    if pq:
        found.append(DataLayout("parquet", root, pq))
    tars = _tar_splits(root)
    if tars:
        found.append(DataLayout("tar", root, tars))
    if len(found) > 1:
        raise LayoutError(f"--data {root} mixes dataset forms: " + "; ".join(
            f"{_what(lay)}" for lay in found) + ". Keep one form per folder (or point --data "
            "at the one to use)", found)
    if not found:
        entries = sorted(os.listdir(root))[:8]
        raise LayoutError(
            f"--data {root}: no '{split_names[0]}' folder and no dataset shards (found "
            f"{', '.join(entries) if entries else 'nothing'}{' ...' if len(entries) == 8 else ''}"
            "). Expected one of: an ImageFolder tree (train/<class>/<images>, val/<class>/...); "
            "a Hugging Face dataset folder (data/train-*.parquet, data/validation-*.parquet); "
            "WebDataset shards (NAME-train-NNNN.tar, NAME-validation-NNNN.tar)", [])
    return found[0]


def _shard_pattern(kind: str, split: str) -> str:
    return f"{split}-*.parquet" if kind == "parquet" else f"*-{split}-NNNN.tar"


def _what(layout: DataLayout) -> str:
    if layout.kind == "folder":
        return "ImageFolder split folder(s) " + ", ".join(f"{n}/" for n in layout.splits)
    if layout.kind == "parquet":
        return "parquet shards " + ", ".join(
            f"data/{n}-*.parquet ({len(v)})" for n, v in sorted(layout.splits.items()))
    return "tar shards " + ", ".join(f"*-{n}-NNNN.tar ({len(v)})"
                                     for n, v in sorted(layout.splits.items()))


def check_shard_series(kind: str, split: str, files: Sequence[str]) -> None:
    """Refuse a split whose shard names show that shards are missing (an interrupted
    download would otherwise train on part of the data, silently).

    Names that declare a count (``train-00000-of-00294.parquet``) must all declare the same
    one, N, and be exactly the shards 0 .. N-1. Numbered names without a count (the tar form,
    ``NAME-train-NNNN.tar``) must be one series (one ``NAME``), each number once, running
    from 0 (or 1) to the highest without a gap; a missing last shard cannot be told from its
    names."""
    pattern = _TAR_SHARD if kind == "tar" else _PARQUET_SHARD
    parsed = [(f, pattern.match(os.path.basename(f))) for f in files]
    where = os.path.dirname(files[0]) if files else ""
    head = f"the {split} split ({where}/{_shard_pattern(kind, split)})"
    if kind == "tar":
        prefixes = sorted({m.group("prefix") for _, m in parsed if m})
        if len(prefixes) > 1:
            raise DataError(f"{head} mixes shard series {', '.join(repr(p) for p in prefixes)}:"
                            " keep one series per split (move the others to another folder)")
    # The count each name declares (None: no -of-N).
    counts = {int(m["total"]) if m.groupdict().get("total") else None for _, m in parsed if m}
    if len(counts) > 1:
        said = ", ".join(f"-of-{c}" for c in sorted(c for c in counts if c is not None))
        raise DataError(f"{head}: the shard names declare different counts ({said}"
                        f"{' and none' if None in counts else ''}): shards of different "
                        "downloads or versions are mixed; keep one set")
    total = next(iter(counts), None)
    by_num: Dict[int, str] = {}
    for f, m in parsed:
        if m is None:
            continue
        num = int(m.group("num"))
        if num in by_num:
            raise DataError(f"{head}: shards {os.path.basename(by_num[num])} and "
                            f"{os.path.basename(f)} have the same number; keep one")
        by_num[num] = f
    if not by_num:
        return
    sample = pattern.match(os.path.basename(by_num[min(by_num)]))
    width = len(sample.group("num"))
    if total is not None:
        expected = range(total)
        beyond = sorted(n for n in by_num if n >= total)
        if beyond:
            raise DataError(f"{head}: shard {os.path.basename(by_num[beyond[0]])} is numbered "
                            f"beyond its declared count (shards 0 .. {total - 1})")
    else:
        expected = range(min(min(by_num), 1), max(by_num) + 1)
    missing = [n for n in expected if n not in by_num]
    if not missing:
        return
    name = os.path.basename(by_num[min(by_num)])
    a, b = sample.span("num")

    def named(n: int) -> str:
        return f"{name[:a]}{n:0{width}d}{name[b:]}"

    shown = ", ".join(named(n) for n in missing[:SHOW_MISSING]) + (
        f" and {len(missing) - SHOW_MISSING} more" if len(missing) > SHOW_MISSING else "")
    declared = (f"the names declare {total}" if total is not None else
                f"numbered {expected[0]:0{width}d} to {expected[-1]:0{width}d}")
    raise DataError(
        f"{head}: {len(by_num)} of {len(expected)} shards present ({declared}); missing "
        f"{shown}. An interrupted download? Fetch the missing shards (to train on some "
        "shards on purpose, link them into another folder numbered from 0, without a count)")


def open_source(layout: DataLayout, split: str, classes: Optional[Sequence[str]] = None
                ) -> Optional[Source]:
    """The source of ``split`` in ``layout`` (None if the layout has no such split); a
    shard split with missing shards is refused (:func:`check_shard_series`)."""
    name = layout.find(split)
    if name is None:
        return None
    files = layout.splits[name]
    if layout.kind != "folder":
        check_shard_series(layout.kind, name, files)
    if layout.kind == "folder":
        from .folder import FolderSource

        return FolderSource(files[0], classes)
    if layout.kind == "parquet":
        from .parquet import ParquetSource

        return ParquetSource(layout.root, files, classes)
    from .tarshards import TarShardSource

    return TarShardSource(layout.root, name, files, classes)
