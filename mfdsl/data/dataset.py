"""Datasets for training and evaluation: unreadable-image tolerance and
accounting, deterministic per-sample augmentation, resumable distributed sampling, loaders.

Every sample's augmentation randomness is seeded from (run seed, epoch, index), so the
images a step sees do not depend on the number of DataLoader workers, on prefetching, or on
whether the run was interrupted and resumed.

The samples come from a :class:`~mfdsl.data.sources.Source` (ImageFolder tree, parquet or
tar shards); the scanning rule of the folder form is in :mod:`mfdsl.data.folder`.
"""
from __future__ import annotations

import io
import json
import re
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data import default_collate

from .transforms import (BatchPreprocess, PendingErasing, SeededPipeline,  # noqa: F401
                         caller_rngs_preserved, eval_transform, train_transform)
from ..errors import DataError
from .folder import IMG_EXTENSIONS, FolderScan, scan_image_folder  # noqa: F401
from .depth import to_rgb8
from .sources import Source, UnknownClassError, show_path  # noqa: F401

# How many following files a bad one may be replaced by before the data is declared broken.
MAX_REPLACEMENTS = 64

# One unreadable file met while fetching an item: (sample index, what went wrong).
Failure = Tuple[int, str]


# ----------------------------------------------------------------------------- dataset
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as f:
        f.load()
        if f.mode == "RGB":
            return f  # no copy for RGB JPEGs
        return to_rgb8(f)  # 16-bit and float images scaled, not clipped


_BUFFER = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SourceDataset(Dataset):
    """A :class:`~mfdsl.data.sources.Source`'s images, unreadable ones replaced by the next
    readable one.

    Items are ``(image, target, failures)``: ``failures`` is a tuple of ``(sample index,
    error)`` for the files that failed to decode while fetching this item (empty if none).
    Reporting failures through the items (instead of a counter on the dataset) makes the
    accounting work across DataLoader worker processes and DDP ranks; see
    :class:`UnreadableImages`. Any decoding error (truncated or empty file, not an image,
    a decompression bomb, an unreadable file) counts as unreadable; a worker never stops
    on one.

    A key may be ``(index, run seed, epoch)``: a :class:`SeededPipeline` transform then
    draws all its randomness from ``sample_seed(run seed, epoch, index)``.

    ``self.classes`` is the source's label list, ``self.missing_classes`` the listed
    classes without a sample here. Nothing per sample is held as a Python object (the
    source's index is flat arrays), so forked workers share it.
    """

    def __init__(self, source: Source, transform: Optional[Callable] = None) -> None:
        self.source = source
        self.root = source.root
        self.classes = source.classes
        self.missing_classes, self.notes = source.missing_classes, source.notes
        self.transform = transform

    @property
    def samples(self) -> List[Tuple[str, int]]:
        """``(name, label)`` of every sample as Python objects: small sets and tests only."""
        return [(self.source.name(i), self.source.label(i)) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.source)

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
        src = self.source
        n = len(src)
        for attempt in range(min(MAX_REPLACEMENTS, n)):
            j = (index + attempt) % n
            known = src.known_unreadable(j)
            if known is not None:  # never opened (a FIFO or device would block the read)
                failures.append((j, f"OSError: {known}"))
                continue
            try:
                img = _decode(src.read(j))
            except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file
                # PIL names the in-memory buffer (an address: differs per run); name the file.
                failures.append((j, _BUFFER.sub(lambda m: repr(src.name(j)), _describe(exc))))
                continue
            target = src.label(j)
            if isinstance(self.transform, SeededPipeline):
                img = self.transform(img, seed)
            elif self.transform is not None:
                img = self.transform(img)
            return img, target, tuple(failures)
        first = src.name(failures[0][0])
        raise DataError(f"none of {len(failures)} consecutive images from {show_path(first)} "
                        f"could be decoded ({failures[0][1]}); is the data folder "
                        f"{show_path(self.root)} intact?")


class SkippingImageFolder(SourceDataset):
    """:class:`SourceDataset` over an ImageFolder split ``root``; ``classes``: the label
    list (see :func:`scan_image_folder`)."""

    def __init__(self, root: str, transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None) -> None:
        from .folder import FolderSource

        super().__init__(FolderSource(root, classes), transform)


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

    def add_batch(self, dataset: SourceDataset,
                  failures: Iterable[Iterable[Failure]]) -> None:
        for item in failures:
            for j, err in item:
                rec = self.files.setdefault(dataset.source.name(j), [0, err])
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

    def indices(self) -> np.ndarray:
        """This rank's sample indices for the epoch, after the skipped ones: torch's
        DistributedSampler's order (same permutation, padding and sharding), computed as
        one int64 array instead of a Python list of the whole dataset."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            idx = torch.randperm(n, generator=g).numpy()
        else:
            idx = np.arange(n, dtype=np.int64)
        pad = self.total_size - n
        if pad > 0:
            idx = np.concatenate([idx, np.tile(idx, -(-pad // n))[:pad]])
        return idx[self.rank:self.total_size:self.num_replicas][self.skip:]

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:  # type: ignore[override]
        seed, epoch = self.seed, self.epoch
        # One key at a time: nothing per sample is held for the epoch.
        return ((int(i), seed, epoch) for i in self.indices())

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


def spread_subset(length: int, count: Optional[int]) -> Optional[np.ndarray]:
    """``count`` indices spread evenly over ``range(length)`` (every class of a sorted
    split is met), or None for all of them."""
    if count is None or count >= length:
        return None
    return (np.arange(count, dtype=np.int64) * length) // count


class ShardSampler(Sampler):
    """Every ``world``-th index from ``rank``, in order, without padding: each image is
    evaluated exactly once across ranks, so metrics are exact. ``subset``: the indices to
    shard (:func:`spread_subset`) instead of all ``length``."""

    def __init__(self, length: int, rank: int = 0, world: int = 1,
                 subset: Optional[np.ndarray] = None) -> None:
        self.indices: Union[range, np.ndarray] = (
            range(rank, length, world) if subset is None else subset[rank::world])

    def __iter__(self) -> Iterator[int]:
        return (int(i) for i in self.indices)

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
