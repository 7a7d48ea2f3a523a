"""The ImageFolder form: a split folder scanned into a flat index, and its source.

What a split folder holds (the scanning rule):

- class folders are the sub-folders of the split folder (a link to a folder counts); the
  label of a class is its position in the sorted folder names, or in the class list given;
- images are the files with an image extension found anywhere below a class folder, read in
  sorted order (files of a folder first, then its sub-folders); names starting with '.'
  (hidden files such as macOS's ``._x.jpg``) and other files are left out and counted in
  ``notes``; an entry named like an image that is not a regular file (FIFO, device, broken
  link) is kept and reported as an unreadable image (it is never opened);
- links are followed, but every folder and every file is read at most once, by its real
  path: a link back to a folder already read (a loop, or a second link to the same place)
  and a link up to the data folder itself are not followed (noted). A folder or image that
  would be read under two classes (a link into another class folder, the same target
  linked from two classes, class folders that are one folder) is an error: its label would
  be ambiguous.
"""
from __future__ import annotations

import json
import os
import time
from array import array
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from . import manifest
from .index import NameIndex, NameIndexBuilder
from .sources import Source, UnknownClassError, read_file, show_path

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                  ".gif")

# ----------------------------------------------------------------------------- scanning
@dataclass
class FolderScan:
    classes: List[str]                  # the label list: label i is classes[i]
    index: NameIndex                    # paths and labels, in reading order (flat arrays)
    missing_classes: List[str] = field(default_factory=list)  # listed, but no folder here
    notes: List[str] = field(default_factory=list)            # what was left out, and why

    @property
    def samples(self) -> List[Tuple[str, int]]:
        """``(path, label)`` pairs as Python objects: for small sets and tests only."""
        return self.index.pairs()


def _stamp(path: str) -> List[int]:
    """What a cached scan checks a folder against: its modification and change times and
    its inode (see :func:`cached_folder_scan`)."""
    st = os.stat(path)
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _entries(path: str, listed: Optional[List[Tuple[str, List[int]]]] = None
             ) -> List[os.DirEntry]:
    try:
        if listed is not None:  # stat before listing: a change after it moves the times
            listed.append((path, _stamp(path)))
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot read the folder {show_path(path)}: "
                        f"{exc.strerror or exc}") from None


def _real(entry: os.DirEntry, parent_real: str) -> str:
    # Only links need the (costly, per-component) realpath.
    return os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(parent_real,
                                                                                entry.name)


class _FileLinks:
    """Real paths of file links without a ``realpath`` per file.

    ``os.path.realpath`` costs one ``lstat`` per path component (~16 syscalls for a file in
    a cluster's dataset tree). A tree made of file links (how shared clusters often lay data
    out) has a million links into a few thousand folders: read the link (one syscall) and
    resolve its folder once (cached). A chain of links is followed one hop."""

    def __init__(self) -> None:
        self._dirs: Dict[str, str] = {}

    def real(self, path: str, parent_real: str) -> str:
        try:
            target = os.readlink(path)
        except OSError:
            return os.path.realpath(path)
        # A relative target is relative to the folder holding the link: its real path.
        d, base = os.path.split(os.path.join(parent_real, target))
        if base in ("", ".", ".."):
            return os.path.realpath(path)
        rd = self._dirs.get(d)
        if rd is None:
            rd = self._dirs[d] = os.path.realpath(d)
        # A target that is itself a link (a chain) is taken at this first hop: one readlink
        # per file, not an lstat more to look further.
        return os.path.join(rd, base)


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _owner(real: str, class_of_real: Dict[str, int]) -> Optional[int]:
    """The class whose folder holds ``real`` (class folders never nest)."""
    p = real
    while True:
        if p in class_of_real:
            return class_of_real[p]
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


class _Tally:
    """Counts of what the scan left out, with a first example of each."""

    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}
        self.example: Dict[str, str] = {}

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.example.setdefault(kind, example)

    def notes(self) -> List[str]:
        return [f"{_NOTE[k].format(n=n)}, e.g. {self.example[k]}" for k, n in self.counts.items()]


_NOTE = {
    "hidden": "left out {n} hidden file(s)/folder(s) (names starting with '.')",
    "other": "left out {n} file(s) without an image extension",
    "special": "left out {n} entr(y/ies) that are not regular files or folders (broken link, "
               "FIFO, device)",
    "loop": "did not follow {n} link(s) back into folders already read or up to the data "
            "folder (a loop)",
    "twice": "read {n} image(s) reached twice through links only once",
}


def scan_image_folder(root: str, classes: Optional[Sequence[str]] = None,
                      listed: Optional[List[Tuple[str, List[int]]]] = None) -> FolderScan:
    """Scan a split folder by the rule in this module's docstring.

    ``classes``: the label list to use (label = position); a class folder not in it is an
    error, listed classes without a folder are allowed (``missing_classes``). Default: the
    sorted class folder names (ImageNet's wnid folders then get the standard indices).
    ``listed``: if given, receives ``(folder, stamp)`` of every folder listed (what a
    cached scan is validated against: :func:`_stamp`).
    """
    if not os.path.isdir(root):
        raise DataError(f"data folder not found: {show_path(root)}")
    root_real = os.path.realpath(root)
    tally = _Tally()
    folders: List[Tuple[str, str, str]] = []  # (name, path, real path)
    for e in _entries(root, listed):
        if e.name.startswith("."):
            continue
        if e.is_dir():
            folders.append((e.name, e.path, _real(e, root_real)))
    if not folders:
        raise DataError(f"no class folders in {show_path(root)} (expected "
                        f"{show_path(root)}/<class>/<image files>)")
    names = [n for n, _, _ in folders]
    label_list, missing = _label_list(root, names, classes)
    label = {c: i for i, c in enumerate(label_list)}

    class_of_real: Dict[str, int] = {}
    for name, path, real in folders:
        if _within(root_real, real):
            raise DataError(f"class folder {show_path(path)} is a link to the data folder or "
                            "above it; a class folder must hold that class's images only")
        if real in class_of_real:
            other = label_list[class_of_real[real]]
            raise DataError(f"class folders {show_path(path)} and {other!r} are the same "
                            f"folder ({show_path(real)}): every image would have two labels")
        class_of_real[real] = label[name]
    for name, path, real in folders:
        owner = _owner(os.path.dirname(real), class_of_real)
        if owner is not None:
            raise DataError(f"class folder {show_path(path)} lies inside class folder "
                            f"{label_list[owner]!r}: its images would have two labels")

    built = NameIndexBuilder()
    links = _FileLinks()
    dirs_read: Dict[str, int] = {}       # real path -> label, every folder read
    # hash of every image's real path and its label (flat: 12 bytes per image, not a dict
    # entry): one file under two classes is found at the end.
    real_hash, real_label = array("q"), array("i")
    owner_of_dir: Dict[str, Optional[int]] = {}
    for name, path, real in folders:
        ci = label[name]
        paths: List[str] = []
        flags: List[int] = []
        dirs_read[real] = ci
        seen_here: set = set()

        def add_image(where: str, freal: str) -> None:
            if freal in seen_here:  # one file reached twice in this class: read once
                tally.add("twice", show_path(where))
                return
            seen_here.add(freal)
            real_hash.append(hash(freal))
            real_label.append(ci)
            paths.append(where)
            flags.append(0)

        stack = [(path, real)]
        while stack:
            dpath, dreal = stack.pop()
            subdirs: List[Tuple[str, str]] = []
            for e in _entries(dpath, listed):
                if e.name.startswith("."):
                    tally.add("hidden", show_path(e.path))
                    continue
                if e.is_symlink() and e.name.lower().endswith(IMG_EXTENSIONS):
                    # A link named like an image is taken as an image file without a stat
                    # through it (trees of file links: one readlink per file); a broken
                    # link, or one to a folder, fails when read: reported unreadable then.
                    freal = links.real(e.path, dreal)
                    fdir = os.path.dirname(freal)
                    o = owner_of_dir.get(fdir, -1)
                    if o == -1:  # once per target folder: the class holding or reading it
                        o = _owner(fdir, class_of_real)
                        o = owner_of_dir[fdir] = o if o is not None else dirs_read.get(fdir)
                    if o is not None and o != ci:
                        raise _two_labels(e.path, freal, label_list[o], name)
                    add_image(e.path, freal)
                elif e.is_dir():
                    sreal = _real(e, dreal)
                    if sreal in dirs_read or _within(root_real, sreal):
                        if sreal in dirs_read and dirs_read[sreal] != ci:
                            raise _two_labels(e.path, sreal, label_list[dirs_read[sreal]], name)
                        tally.add("loop", f"{show_path(e.path)} -> {show_path(sreal)}")
                        continue
                    if e.is_symlink():
                        owner = _owner(sreal, class_of_real)
                        if owner is not None and owner != ci:
                            raise _two_labels(e.path, sreal, label_list[owner], name)
                    dirs_read[sreal] = ci
                    subdirs.append((e.path, sreal))
                elif e.is_file():
                    if not e.name.lower().endswith(IMG_EXTENSIONS):
                        tally.add("other", show_path(e.path))
                        continue
                    freal = os.path.join(dreal, e.name)  # (links named so: handled above)
                    add_image(e.path, freal)
                elif e.name.lower().endswith(IMG_EXTENSIONS):
                    # Named like an image but not a file (FIFO, device, broken link): kept,
                    # so that it is reported as an unreadable image; never opened.
                    paths.append(e.path)
                    flags.append(1)
                else:
                    tally.add("special", show_path(e.path))
            stack.extend(reversed(subdirs))  # depth-first, sub-folders in sorted order
        if not paths:
            raise DataError(f"class folder {show_path(path)} holds no image files (looked for "
                            f"{', '.join(IMG_EXTENSIONS)}; names starting with '.' are left "
                            "out); remove the folder or add its images")
        built.add_chunk(paths, [ci] * len(paths), flags)
    index = built.build()
    _check_one_label_per_file(index, np.frombuffer(real_hash, np.int64),
                              np.frombuffer(real_label, np.int32), label_list, links)
    return FolderScan(label_list, index, missing, tally.notes())


def _check_one_label_per_file(index: NameIndex, hashes: np.ndarray, labels: np.ndarray,
                              label_list: List[str], links: "_FileLinks") -> None:
    """An image file reached under two classes (through links) is an error: found as equal
    real-path hashes with different labels, confirmed on the real paths."""
    if len(hashes) < 2:
        return
    # Position of each kept image in the index (names without a hash: non-files, flag 1).
    pos = np.flatnonzero(index.flags == 0)
    order = np.argsort(hashes, kind="stable")
    h, lab = hashes[order], labels[order]
    same = np.flatnonzero((h[1:] == h[:-1]) & (lab[1:] != lab[:-1]))
    for k in same:
        a, b = int(pos[order[k]]), int(pos[order[k + 1]])
        pa, pb = index.name(a), index.name(b)
        ra, rb = os.path.realpath(pa), os.path.realpath(pb)
        if ra == rb:
            raise _two_labels(pb, rb, label_list[index.label(a)], label_list[index.label(b)])


def _label_list(root: str, names: List[str], classes: Optional[Sequence[str]]
                ) -> Tuple[List[str], List[str]]:
    if classes is None:
        return names, []
    if isinstance(classes, str):
        raise TypeError("classes must be a sequence of class names, not one string")
    label_list = list(classes)
    bad = [c for c in label_list if not isinstance(c, str) or not c]
    if bad or not label_list:
        raise DataError(f"the class list must hold non-empty names, got {bad[:3] or 'none'}")
    dup = sorted({c for c in label_list if label_list.count(c) > 1}) if len(
        set(label_list)) != len(label_list) else []
    if dup:
        raise DataError(f"the class list names {', '.join(map(repr, dup[:5]))} more than once")
    known = set(label_list)
    unknown = [n for n in names if n not in known]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
        raise UnknownClassError(
            f"{show_path(root)}: class folder(s) {shown} are not in the class list (the model "
            f"was not trained on them; its {len(label_list)} classes: "
            f"{', '.join(map(repr, label_list[:5]))}{' ...' if len(label_list) > 5 else ''})",
            unknown)
    present = set(names)
    return label_list, [c for c in label_list if c not in present]


def _two_labels(path: str, real: str, owner: str, name: str) -> DataError:
    return DataError(f"{show_path(path)} leads to {show_path(real)}, which is part of class "
                     f"{owner!r}: its images would be labelled both {owner!r} and {name!r}")




FOLDER_INDEX_VERSION = 2
# A folder changed this recently may change again within its times' resolution (a second
# or two on some network file systems): such a scan is not cached.
SETTLED_S = 2.0


def cached_folder_scan(root: str, classes: Optional[Sequence[str]] = None) -> FolderScan:
    """:func:`scan_image_folder`, through a manifest in ``$MFDSL_CACHE/folder-index``.

    The manifest records the modification time, change time and inode of every folder the
    scan listed (a file added, removed, renamed or re-linked changes its folder's times) and
    is used only while all of them are unchanged. The ranks of one machine take a lock
    around the scan: the first scans, the others read its manifest. A scan of folders
    changed in the last seconds is not cached."""
    # Why the change time: a copy that restores folder times (rsync -t, cp -p, utime) puts a
    # folder's mtime back after a file was removed, but setting any time moves the ctime to
    # now, and no program can set it back; a folder replaced by another has a new inode.
    # All three come from the one stat per folder that the mtime took. A listing signature
    # (entry count and names hash per folder) would also cover file systems that keep no
    # folder times, but costs a readdir of every folder: measured on 200k files in 200
    # folders (local disk, warm cache) 0.35 s against 1.29 s for the whole scan and 0.5 ms
    # for the stats, and on a network file system the same readdir round trips as the scan,
    # most of what the cache saves.
    key = (os.path.realpath(root), json.dumps(None if classes is None else list(classes)),
           str(FOLDER_INDEX_VERSION))
    path = manifest.cache_path("folder-index", *key)
    with manifest.build_lock(path):
        got = manifest.load(path)
        if got is not None and _still_valid(got[1]):
            arrays, meta = got
            return FolderScan(meta["classes"], NameIndex(arrays["names"], arrays["offsets"],
                                                         arrays["labels"], arrays["flags"]),
                              meta["missing"], meta["notes"])
        listed: List[Tuple[str, int]] = []
        started = time.time()
        scan = scan_image_folder(root, classes, listed)
        if listed and max(max(st[:2]) for _, st in listed) / 1e9 < started - SETTLED_S:
            idx = scan.index
            manifest.save(path, {"names": idx.names, "offsets": idx.offsets,
                                 "labels": idx.labels, "flags": idx.flags},
                          {"version": FOLDER_INDEX_VERSION, "classes": scan.classes,
                           "missing": scan.missing_classes, "notes": scan.notes,
                           "listed": [[os.fsencode(p).decode("utf-8", "surrogateescape"), st]
                                      for p, st in listed]})
        return scan


def _still_valid(meta: dict) -> bool:
    if meta.get("version") != FOLDER_INDEX_VERSION:
        return False
    try:
        return all(_stamp(os.fsdecode(p.encode("utf-8", "surrogateescape"))) == st
                   for p, st in meta["listed"])
    except (OSError, KeyError, TypeError, ValueError):
        return False


class FolderSource(Source):
    """An ImageFolder split (the scanning rule: :func:`mfdsl.data.dataset.scan_image_folder`).

    Workers open each file once (no ``stat`` first: one path lookup per image, one network
    round trip less on NFS); entries that were not regular files at scan time are reported
    unreadable without being opened."""

    kind = "folder"

    def __init__(self, root: str, classes: Optional[Sequence[str]] = None) -> None:
        scan = cached_folder_scan(root, classes)
        self.root = root
        self.classes, self.index = scan.classes, scan.index
        self.labels = self.index.labels
        self.missing_classes, self.notes = scan.missing_classes, scan.notes

    def read(self, i: int) -> bytes:
        return read_file(self.index.name(i))

    def name(self, i: int) -> str:
        return self.index.name(i)

    def known_unreadable(self, i: int) -> Optional[str]:
        return "not a regular file" if self.index.flags[i] else None
