"""ImageFolder data for training and evaluation: scanning, decode-error tolerance,
deterministic per-sample augmentation, resumable distributed sampling and the loaders.

Every sample's augmentation randomness is seeded from (run seed, epoch, index), so the
images a step sees do not depend on the number of DataLoader workers, on prefetching, or on
whether the run was interrupted and resumed.
"""
from __future__ import annotations

import os
import random
import stat
import struct
import zlib
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                  ".gif")
# What PIL raises on unreadable, truncated or malformed files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                 Image.DecompressionBombError)
# How many following files a bad one may be replaced by before the data is declared broken.
MAX_REPLACEMENTS = 64


def scan_image_folder(root: str, classes: Optional[Sequence[str]] = None
                      ) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Class names and (path, class index) samples, sorted.

    Without ``classes`` the classes are the sorted sub-folder names (sorting makes
    ImageNet's wnid folders map to the standard class indices). With ``classes`` (a run's
    class list) label i is ``classes[i]``: a folder may lack some of them, but a folder
    not in the list is an error.
    """
    if not os.path.isdir(root):
        raise DataError(f"data folder not found: {root}")
    present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not present:
        raise DataError(f"no class folders in {root} (expected {root}/<class>/<image files>)")
    if classes is None:
        classes = present
    else:
        classes = list(classes)
        unknown = [c for c in present if c not in set(classes)]
        if unknown:
            raise DataError(f"{root} has class folder(s) the model was not trained on: "
                            f"{', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else "")
                            + f" (the run's {len(classes)} classes are "
                            f"{', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''})")
    samples: List[Tuple[str, int]] = []
    for ci, name in enumerate(classes):
        if name not in present:
            continue
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fn), ci))
    if not samples:
        raise DataError(f"no image files in {root} (looked for {', '.join(IMG_EXTENSIONS)})")
    return classes, samples


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


class SkippingImageFolder(Dataset):
    """An ImageFolder whose unreadable images are replaced by the next readable one.

    Items are ``(image, target, bad)``: ``bad`` is the newline-joined paths that failed to
    decode while fetching this item ("" if none). Reporting failures through the items
    (instead of a counter on the dataset) makes the count work across DataLoader worker
    processes and DDP ranks.

    A key may be ``(index, seed)``: the transform then runs with python/numpy/torch RNGs
    seeded from ``seed`` and the caller's RNG states are restored afterwards.
    """

    def __init__(self, root: str, transform: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None) -> None:
        self.root = root
        self.classes, self.samples = scan_image_folder(root, classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[Any, int, str]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        bad: List[str] = []
        n = len(self.samples)
        for attempt in range(min(MAX_REPLACEMENTS, n)):
            path, target = self.samples[(index + attempt) % n]
            try:
                # A FIFO or device named like an image would block or never end the read.
                if not stat.S_ISREG(os.stat(path).st_mode):
                    raise OSError(f"{path}: not a regular file")
                with Image.open(path) as f:
                    img = f.convert("RGB")
            except DECODE_ERRORS:
                bad.append(path)
                continue
            if self.transform is not None:
                img = self._transform(img, seed)
            return img, target, "\n".join(bad)
        raise DataError(f"none of {len(bad)} consecutive images from {bad[0]} could be decoded; "
                        f"is the data folder {self.root} intact?")

    def _transform(self, img: Image.Image, seed: Optional[int]) -> Any:
        if seed is None:
            return self.transform(img)
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        torch.manual_seed(seed)
        try:
            return self.transform(img)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (same shuffling and sharding) that can start mid-epoch
    and yields ``(index, augmentation seed)`` keys for SkippingImageFolder."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int,
                 shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)
        self.skip = 0

    def set_position(self, epoch: int, skip_samples: int = 0) -> None:
        """Start epoch ``epoch`` after this rank's first ``skip_samples`` samples."""
        self.set_epoch(epoch)
        self.skip = skip_samples

    def __iter__(self) -> Iterator[Tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.skip:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

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


def train_transform(recipe: Any, img_size: Tuple[int, int], mean: Sequence[float],
                    std: Sequence[float], hflip: float = 0.5,
                    crop_scale_min: float = 0.08) -> Callable:
    """The recipe's training augmentation through timm's pipeline; RandomResizedCrop keeps
    between ``crop_scale_min`` and all of the image's area."""
    from timm.data import create_transform

    tf = create_transform(
        input_size=(3, *img_size), is_training=True, hflip=hflip, color_jitter=0.0,
        scale=(crop_scale_min, 1.0),
        auto_augment=recipe.randaugment or None, interpolation=recipe.train_interpolation,
        mean=tuple(mean), std=tuple(std), re_prob=recipe.random_erasing, re_mode="pixel",
        re_count=1,
    )
    _patch_posterize(tf)
    return tf


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Posterize that accepts 0 bits (a black image), as Pillow < 11 did.

    RandAugment with magnitude noise ('mstd0.5') reaches the maximum level, where timm's
    increasing posterize asks for 0 bits; Pillow >= 11 raises ValueError on that, which
    would stop a run at a random step."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(tf: Any) -> None:
    for t in getattr(tf, "transforms", []):
        # RandAugment / AugMix hold their ops in .ops; AutoAugment ('v0', 'original', ...)
        # in .policy, a list of sub-policies (measured: 'v0' failed 95 of 3000 images).
        ops = list(getattr(t, "ops", []))
        for sub in getattr(t, "policy", []):
            ops.extend(sub)
        for op in ops:
            if "posterize" in str(getattr(op, "name", "")).lower():
                op.aug_fn = _posterize


def eval_transform(model: torch.nn.Module) -> Callable:
    """Resize + centre crop (crop_pct) + normalise, from the model's pretrained_cfg."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return create_transform(**cfg, is_training=False)


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int,
                seed: int, drop_last: bool, pin_memory: bool) -> DataLoader:
    # A private generator: creating the loader's iterator must not draw from the global
    # torch RNG, or resuming mid-epoch would shift every later random number.
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last, generator=gen,
                      persistent_workers=False)


def split_dir(root: str, split: str) -> Optional[str]:
    path = os.path.join(root, split)
    return path if os.path.isdir(path) else None
