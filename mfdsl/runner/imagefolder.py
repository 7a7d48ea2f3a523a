"""ImageFolder data for training and evaluation: scanning, unreadable-image tolerance and
accounting, deterministic per-sample augmentation, resumable distributed sampling, loaders.

Every sample's augmentation randomness is seeded from (run seed, epoch, index), so the
images a step sees do not depend on the number of DataLoader workers, on prefetching, or on
whether the run was interrupted and resumed.

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
import stat
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data import default_collate

from .transforms import (BatchPreprocess, PendingErasing, SeededPipeline,  # noqa: F401
                         caller_rngs_preserved, eval_transform, train_transform)
from .errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                  ".gif")
# How many following files a bad one may be replaced by before the data is declared broken.
MAX_REPLACEMENTS = 64

# One unreadable file met while fetching an item: (sample index, what went wrong).
Failure = Tuple[int, str]


class UnknownClassError(DataError):
    """A class folder that is not in the given class list (``folders``: their names)."""

    def __init__(self, message: str, folders: List[str]) -> None:
        super().__init__(message)
        self.folders = folders


def show_path(path: str) -> str:
    """A path as one unambiguous line: quoted if it holds newlines or other odd characters."""
    return path if path.isprintable() else ascii(path)


# ----------------------------------------------------------------------------- scanning
@dataclass
class FolderScan:
    classes: List[str]                  # the label list: label i is classes[i]
    samples: List[Tuple[str, int]]      # (path, label), in reading order
    missing_classes: List[str] = field(default_factory=list)  # listed, but no folder here
    notes: List[str] = field(default_factory=list)            # what was left out, and why


def _entries(path: str) -> List[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot read the folder {show_path(path)}: "
                        f"{exc.strerror or exc}") from None


def _real(entry: os.DirEntry, parent_real: str) -> str:
    # Only links need the (costly, per-component) realpath.
    return os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(parent_real,
                                                                                entry.name)


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


def scan_image_folder(root: str, classes: Optional[Sequence[str]] = None) -> FolderScan:
    """Scan a split folder by the rule in this module's docstring.

    ``classes``: the label list to use (label = position); a class folder not in it is an
    error, listed classes without a folder are allowed (``missing_classes``). Default: the
    sorted class folder names (ImageNet's wnid folders then get the standard indices).
    """
    if not os.path.isdir(root):
        raise DataError(f"data folder not found: {show_path(root)}")
    root_real = os.path.realpath(root)
    tally = _Tally()
    folders: List[Tuple[str, str, str]] = []  # (name, path, real path)
    for e in _entries(root):
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

    samples: List[Tuple[str, int]] = []
    dirs_read: Dict[str, int] = {}       # real path -> label, every folder read
    linked_files: Dict[str, int] = {}    # real path -> label, files reached through links
    for name, path, real in folders:
        ci = label[name]
        n0 = len(samples)
        dirs_read[real] = ci
        seen_here: set = set()
        stack = [(path, real)]
        while stack:
            dpath, dreal = stack.pop()
            subdirs: List[Tuple[str, str]] = []
            for e in _entries(dpath):
                if e.name.startswith("."):
                    tally.add("hidden", show_path(e.path))
                    continue
                if e.is_dir():
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
                    freal = _real(e, dreal)
                    # Another class reached this file through a file link, or (for a link)
                    # holds or read the folder it lies in.
                    other = linked_files.get(freal, ci)
                    if e.is_symlink():
                        linked_files.setdefault(freal, ci)
                        for o in (_owner(freal, class_of_real),
                                  dirs_read.get(os.path.dirname(freal))):
                            other = o if o is not None and o != ci else other
                    if other != ci:
                        raise _two_labels(e.path, freal, label_list[other], name)
                    if freal in seen_here:
                        tally.add("twice", show_path(e.path))
                        continue
                    seen_here.add(freal)
                    samples.append((e.path, ci))
                elif e.name.lower().endswith(IMG_EXTENSIONS):
                    # Named like an image but not a file (FIFO, device, broken link): kept,
                    # so that it is reported as an unreadable image; never opened.
                    samples.append((e.path, ci))
                else:
                    tally.add("special", show_path(e.path))
            stack.extend(reversed(subdirs))  # depth-first, sub-folders in sorted order
        if len(samples) == n0:
            raise DataError(f"class folder {show_path(path)} holds no image files (looked for "
                            f"{', '.join(IMG_EXTENSIONS)}; names starting with '.' are left "
                            "out); remove the folder or add its images")
    return FolderScan(label_list, samples, missing, tally.notes())


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


# ----------------------------------------------------------------------------- dataset
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def _decode(path: str) -> Image.Image:
    # A FIFO or device named like an image would block or never end the read.
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")
    with Image.open(path) as f:
        f.load()
        if f.mode == "RGB":
            return f  # no copy for RGB JPEGs
        from mfdsl.data.depth import to_rgb8  # 16-bit and float images scaled, not clipped

        return to_rgb8(f)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SkippingImageFolder(Dataset):
    """An ImageFolder whose unreadable images are replaced by the next readable one.

    Items are ``(image, target, failures)``: ``failures`` is a tuple of ``(sample index,
    error)`` for the files that failed to decode while fetching this item (empty if none).
    Reporting failures through the items (instead of a counter on the dataset) makes the
    accounting work across DataLoader worker processes and DDP ranks; see
    :class:`UnreadableImages`. Any decoding error (truncated or empty file, not an image,
    a decompression bomb, an unreadable file) counts as unreadable; a worker never stops
    on one.

    A key may be ``(index, run seed, epoch)``: a :class:`SeededPipeline` transform then
    draws all its randomness from ``sample_seed(run seed, epoch, index)``.

    ``classes``: the label list (see :func:`scan_image_folder`); ``self.classes`` is the
    label list in use, ``self.missing_classes`` the listed classes without a folder here.
    """

    def __init__(self, root: str, transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None) -> None:
        self.root = root
        scan = scan_image_folder(root, classes)
        self.classes, self.samples = scan.classes, scan.samples
        self.missing_classes, self.notes = scan.missing_classes, scan.notes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, keys: Sequence[Any]) -> List[Tuple[Any, int, Tuple[Failure, ...]]]:
        """A batch (what DataLoader asks for): the caller's RNG states are saved once."""
        with caller_rngs_preserved():
            return [self[k] for k in keys]

    def __getitem__(self, key: Union[int, Tuple[int, int, int]]
                    ) -> Tuple[Any, int, Tuple[Failure, ...]]:
        if isinstance(key, tuple):
            index, run_seed, epoch = key
            seed: Optional[int] = sample_seed(run_seed, epoch, index)
        else:
            index, seed = key, None
        failures: List[Failure] = []
        n = len(self.samples)
        for attempt in range(min(MAX_REPLACEMENTS, n)):
            j = (index + attempt) % n
            path, target = self.samples[j]
            try:
                img = _decode(path)
            except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file
                failures.append((j, _describe(exc)))
                continue
            if isinstance(self.transform, SeededPipeline):
                img = self.transform(img, seed)
            elif self.transform is not None:
                img = self.transform(img)
            return img, target, tuple(failures)
        first = self.samples[failures[0][0]][0]
        raise DataError(f"none of {len(failures)} consecutive images from {show_path(first)} "
                        f"could be decoded ({failures[0][1]}); is the data folder "
                        f"{show_path(self.root)} intact?")


def collate(batch: Sequence[Tuple[Any, int, Tuple[Failure, ...]]]
            ) -> Tuple[Any, torch.Tensor, List[Tuple[Failure, ...]]]:
    """Stack images and targets; keep each item's failures as they are.

    uint8 (C, H, W) images with channels-last strides (:class:`ToUint8Tensor`'s) stack
    into a channels-last (B, C, H, W) batch with one plain copy; the regions of
    :class:`PendingErasing` items stack alongside their images."""
    images, targets, failures = zip(*batch)
    return _stack(list(images)), torch.as_tensor(targets), list(failures)


def _stack(images: List[Any]) -> Any:
    first = images[0]
    if isinstance(first, PendingErasing):
        return PendingErasing(_stack([x.images for x in images]),
                              torch.stack([x.regions for x in images]))
    if (isinstance(first, torch.Tensor) and first.dtype == torch.uint8 and first.ndim == 3
            and all(isinstance(x, torch.Tensor) and x.ndim == 3
                    and x.permute(1, 2, 0).is_contiguous() for x in images)):
        # default_collate puts the batch in shared memory when run in a worker.
        return default_collate([x.permute(1, 2, 0) for x in images]).permute(0, 3, 1, 2)
    return default_collate(images)


class UnreadableImages:
    """The distinct unreadable files of one split, with how many fetches failed on each and
    the first error. Filled from the batches' failures on each rank, merged across ranks,
    kept in checkpoints, written as JSON lines (one file per line, any file name)."""

    def __init__(self, split: str, files: Optional[Dict[str, Sequence[Any]]] = None) -> None:
        self.split = split
        self.files: Dict[str, List[Any]] = {p: [int(a), str(e)] for p, (a, e) in
                                            (files or {}).items()}

    def __len__(self) -> int:
        return len(self.files)

    def add_batch(self, dataset: SkippingImageFolder,
                  failures: Iterable[Iterable[Failure]]) -> None:
        for item in failures:
            for j, err in item:
                rec = self.files.setdefault(dataset.samples[j][0], [0, err])
                rec[0] += 1

    def merge(self, files: Dict[str, Sequence[Any]]) -> None:
        for p, (a, e) in files.items():
            rec = self.files.setdefault(p, [0, e])
            rec[0] += int(a)

    def attempts(self) -> int:
        return sum(a for a, _ in self.files.values())

    def paths(self) -> List[str]:
        return sorted(self.files)

    def state(self) -> Dict[str, List[Any]]:
        """Plain types, for a checkpoint (``torch.load(weights_only=True)`` reads it)."""
        return {p: [a, e] for p, (a, e) in self.files.items()}

    def jsonl(self) -> str:
        return "".join(json.dumps({"split": self.split, "path": p, "attempts": a, "error": e},
                                  ensure_ascii=True) + "\n"
                       for p, (a, e) in sorted(self.files.items()))

    def describe(self, limit: int = 3) -> str:
        """'N unreadable image(s) (M failed fetches), e.g. a, b'."""
        shown = ", ".join(show_path(p) for p in self.paths()[:limit])
        more = " ..." if len(self) > limit else ""
        return (f"{len(self)} unreadable {self.split} image(s) ({self.attempts()} failed "
                f"fetch(es)), e.g. {shown}{more}")


# ----------------------------------------------------------------------------- samplers
class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (same shuffling and sharding) that can start mid-epoch
    and yields ``(index, run seed, epoch)`` keys for SkippingImageFolder (the per-sample
    seed is derived in the worker that loads the sample)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int,
                 shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)
        self.skip = 0

    def set_position(self, epoch: int, skip_samples: int = 0) -> None:
        """Start epoch ``epoch`` after this rank's first ``skip_samples`` samples."""
        self.set_epoch(epoch)
        self.skip = skip_samples

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.skip:]
        seed, epoch = self.seed, self.epoch
        return iter([(i, seed, epoch) for i in indices])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class ShardSampler(Sampler):
    """Every ``world``-th index from ``rank``, in order, without padding: each image is
    evaluated exactly once across ranks, so metrics are exact."""

    def __init__(self, length: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ----------------------------------------------------------------------------- loaders
class _Loader(DataLoader):
    """A DataLoader whose workers' DataErrors reach the user as their own message, not
    as the worker's traceback."""

    def __iter__(self):  # type: ignore[override]
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DataError as exc:
                msg = exc.message
                if msg.startswith("Caught DataError") and "DataError: " in msg:
                    msg = msg.rsplit("DataError: ", 1)[1].strip()
                raise DataError(msg) from None
            yield batch


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int,
                seed: int, drop_last: bool, pin_memory: bool) -> DataLoader:
    # A private generator: creating the loader's iterator must not draw from the global
    # torch RNG, or resuming mid-epoch would shift every later random number.
    gen = torch.Generator()
    gen.manual_seed(seed)
    return _Loader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                   pin_memory=pin_memory, drop_last=drop_last, generator=gen,
                   persistent_workers=False, collate_fn=collate)


def split_dir(root: str, split: str) -> Optional[str]:
    path = os.path.join(root, split)
    return path if os.path.isdir(path) else None
