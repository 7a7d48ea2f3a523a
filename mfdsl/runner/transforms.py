"""Training and evaluation transforms, with every random draw made from one seed per sample.

The recipe's augmentation is the paper's (timm's): RandomResizedCrop with random
interpolation, horizontal flip, RandAugment, normalisation and per-pixel random erasing.
RandomResizedCrop and RandAugment are timm's and draw from python's ``random`` and numpy's
global RNG; those two are seeded per sample (cheap: a few microseconds). Flip and erasing
are written here to draw from a per-sample ``torch.Generator``, so the pipeline never
touches torch's global RNG: reseeding that (``torch.manual_seed``) costs ~0.15-3 ms per
call because it also seeds (or queues seeding of) every accelerator backend.
"""
from __future__ import annotations

import contextlib
import math
import random
import threading
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.utils.data
from PIL import Image

# Random erasing as in the paper's recipe (timm's RandomErasing defaults, one region,
# per-pixel normal noise in the normalised image).
ERASE_AREA = (0.02, 1 / 3)
ERASE_ASPECT = (0.3, 1 / 0.3)
ERASE_ATTEMPTS = 10


_preserving = threading.local()


@contextlib.contextmanager
def caller_rngs_preserved() -> Iterator[None]:
    """Restore python's and numpy's global RNG states on exit, so the training loop's own
    random streams (mixup, drop path) do not depend on the number of DataLoader workers.

    A no-op in a DataLoader worker (the globals are the worker's own) and inside another
    such block: a whole batch fetched in the main process pays for one save and restore
    (~0.1 ms), not one per sample."""
    if torch.utils.data.get_worker_info() is not None or getattr(_preserving, "on", False):
        yield
        return
    saved = random.getstate(), np.random.get_state()
    _preserving.on = True
    try:
        yield
    finally:
        _preserving.on = False
        random.setstate(saved[0])
        np.random.set_state(saved[1])


@contextlib.contextmanager
def sample_randomness(seed: Optional[int]) -> Iterator[torch.Generator]:
    """Seed python's and numpy's global RNGs from ``seed`` and yield a torch.Generator
    seeded from it; the transforms of one sample run inside. The caller's global states are
    kept (:func:`caller_rngs_preserved`). ``seed=None`` draws the seed from python's global
    RNG (for ad-hoc use)."""
    if seed is None:
        seed = random.getrandbits(63)
    gen = torch.Generator()
    gen.manual_seed(seed)
    with caller_rngs_preserved():
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        yield gen


class HorizontalFlip:
    """Mirror the image with probability ``p``."""

    uses_generator = True

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image, gen: torch.Generator) -> Image.Image:
        if float(torch.rand((), generator=gen)) < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class RandomErasing:
    """With probability ``p``, replace one random rectangle of a normalised (C, H, W)
    image by standard normal noise per pixel (Zhong et al. 2020; timm's 'pixel' mode).

    The rectangle covers a uniform 2-33% of the area with a log-uniform aspect ratio in
    [0.3, 1/0.3], placed uniformly; up to 10 draws are made for one that fits."""

    uses_generator = True

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(1 + 2 * ERASE_ATTEMPTS, generator=gen, dtype=torch.float64).tolist()
        if u[0] >= self.p:
            return img
        chans, img_h, img_w = img.shape
        lo, hi = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
        for k in range(ERASE_ATTEMPTS):
            area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u[1 + 2 * k]) * img_h * img_w
            aspect = math.exp(lo + (hi - lo) * u[2 + 2 * k])
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h < img_h and w < img_w:
                top = int(torch.randint(0, img_h - h + 1, (), generator=gen))
                left = int(torch.randint(0, img_w - w + 1, (), generator=gen))
                img[:, top:top + h, left:left + w] = torch.randn(
                    (chans, h, w), generator=gen, dtype=img.dtype)
                break
        return img

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, mode=pixel)"


class ToNormalizedTensor:
    """PIL RGB image -> float32 (C, H, W) tensor ``(x / 255 - mean) / std``, in one pass
    (torchvision's ToTensor + Normalize take three; equal within 1e-6)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.scale = (1 / (255 * s)).astype(np.float32)[:, None, None]
        self.shift = (m / s).astype(np.float32)[:, None, None]
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        a = np.asarray(img)
        out = np.empty((a.shape[2],) + a.shape[:2], np.float32)
        np.multiply(a.transpose(2, 0, 1), self.scale, out=out)
        out -= self.shift
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


class SeededPipeline:
    """A list of transforms run inside one sample's :func:`sample_randomness`.

    Steps with ``uses_generator`` get the sample's torch.Generator; the others are
    timm/torchvision transforms known to draw only from python's and numpy's RNGs (or
    from none). Building a pipeline with any other step is refused: a transform drawing
    from torch's global RNG would break per-sample determinism without a word.
    """

    def __init__(self, steps: Sequence[Callable]) -> None:
        for t in steps:
            if not getattr(t, "uses_generator", False) and _kind(t) not in _GLOBAL_RNG_FREE:
                raise TypeError(f"{type(t).__name__} is not known to leave torch's global "
                                "RNG alone; wrap it to take the sample's generator")
        self.steps = list(steps)
        self.random = any(_kind(t) not in _DETERMINISTIC for t in steps)

    def __call__(self, img: Any, seed: Optional[int] = None) -> Any:
        if not self.random:
            for t in self.steps:
                img = t(img)
            return img
        with sample_randomness(seed) as gen:
            for t in self.steps:
                img = t(img, gen) if getattr(t, "uses_generator", False) else t(img)
        return img

    def __repr__(self) -> str:
        return "SeededPipeline(\n" + "".join(f"    {t!r},\n" for t in self.steps) + ")"


# Transforms without randomness, and those drawing only from python's ``random`` and
# numpy's global RNG (timm 1.0's RandomResizedCropAndInterpolation, RandAugment,
# AutoAugment and AugMix).
_DETERMINISTIC = {f"{__name__}.ToNormalizedTensor"} | {
    "torchvision.transforms.transforms." + n
    for n in ("ToTensor", "Normalize", "Resize", "CenterCrop")
} | {"timm.data.transforms." + n for n in ("MaybeToTensor", "MaybePILToTensor", "ResizeKeepRatio",
                                       "CenterCropOrPad", "TrimBorder")}
_GLOBAL_RNG_FREE = _DETERMINISTIC | {"timm.data.transforms.RandomResizedCropAndInterpolation",
                                     "timm.data.auto_augment.RandAugment",
                                     "timm.data.auto_augment.AutoAugment",
                                     "timm.data.auto_augment.AugMixAugment"}


def _kind(t: Any) -> str:
    return f"{type(t).__module__}.{type(t).__qualname__}"


def train_transform(recipe: Any, img_size: Tuple[int, int], mean: Sequence[float],
                    std: Sequence[float], hflip: float = 0.5,
                    crop_scale_min: float = 0.08) -> SeededPipeline:
    """The recipe's training augmentation; RandomResizedCrop keeps between
    ``crop_scale_min`` and all of the image's area (aspect 3/4..4/3)."""
    from timm.data.auto_augment import (augment_and_mix_transform, auto_augment_transform,
                                        rand_augment_transform)
    from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp

    interp = recipe.train_interpolation
    steps: List[Callable] = [RandomResizedCropAndInterpolation(
        tuple(img_size), scale=(crop_scale_min, 1.0), ratio=(3 / 4, 4 / 3),
        interpolation=interp)]
    if hflip > 0:
        steps.append(HorizontalFlip(hflip))
    if recipe.randaugment:
        # Hyper-parameters as timm's transforms_imagenet_train sets them.
        hp = dict(translate_const=int(min(img_size) * 0.45),
                  img_mean=tuple(min(255, round(255 * x)) for x in mean))
        if interp and interp != "random":
            hp["interpolation"] = str_to_pil_interp(interp)
        aa = recipe.randaugment
        if aa.startswith("rand"):
            ra = rand_augment_transform(aa, hp)
        elif aa.startswith("augmix"):
            hp["translate_pct"] = 0.3
            ra = augment_and_mix_transform(aa, hp)
        else:
            ra = auto_augment_transform(aa, hp)
        _patch_posterize(ra)
        steps.append(ra)
    steps.append(ToNormalizedTensor(mean, std))
    if recipe.random_erasing > 0:
        steps.append(RandomErasing(recipe.random_erasing))
    return SeededPipeline(steps)


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


def _patch_posterize(ra: Any) -> None:
    # RandAugment / AugMix hold their ops in .ops; AutoAugment ('v0', 'original', ...) in
    # .policy, a list of sub-policies. A Compose: patch each step.
    for t in getattr(ra, "transforms", [ra]):
        ops = list(getattr(t, "ops", []))
        for sub in getattr(t, "policy", []):
            ops.extend(sub)
        for op in ops:
            if "posterize" in str(getattr(op, "name", "")).lower():
                op.aug_fn = _posterize


def eval_transform(model: torch.nn.Module) -> SeededPipeline:
    """Resize + centre crop (crop_pct) + normalise, from the model's pretrained_cfg."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return SeededPipeline(create_transform(**cfg, is_training=False).transforms)
