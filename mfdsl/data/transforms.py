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
from typing import (Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple,
                    Union)

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


class PendingErasing(NamedTuple):
    """uint8 image(s) and the random-erasing region(s) still to be filled in.

    ``regions`` rows are ``(top, left, height, width, noise seed)`` (int64); height 0 means
    no erasing. One sample: images (C, H, W), regions (5,); a collated batch: (B, C, H, W)
    and (B, 5). :class:`BatchPreprocess` fills the regions after normalising."""

    images: torch.Tensor
    regions: torch.Tensor


class RandomErasing:
    """With probability ``p``, pick one random rectangle of a (C, H, W) image to be replaced
    by standard normal noise per pixel in the normalised image (Zhong et al. 2020; timm's
    'pixel' mode).

    The rectangle covers a uniform 2-33% of the area with a log-uniform aspect ratio in
    [0.3, 1/0.3], placed uniformly; up to 10 draws are made for one that fits. This step
    only draws (from the sample's generator): the rectangle and a seed for its noise. It
    returns :class:`PendingErasing`; :class:`BatchPreprocess` writes the noise after
    normalising, on the training device, so the worker never converts the image to float.
    """

    uses_generator = True

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor, gen: torch.Generator) -> PendingErasing:
        return PendingErasing(img, torch.tensor(self.region(img.shape[-2], img.shape[-1], gen),
                                                dtype=torch.int64))

    def region(self, img_h: int, img_w: int, gen: torch.Generator) -> List[int]:
        """``[top, left, height, width, noise seed]`` drawn from ``gen``; all 0 if this
        image is not erased."""
        u = torch.rand(1 + 2 * ERASE_ATTEMPTS, generator=gen, dtype=torch.float64).tolist()
        if u[0] >= self.p:
            return [0] * 5
        lo, hi = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
        for k in range(ERASE_ATTEMPTS):
            area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u[1 + 2 * k]) * img_h * img_w
            aspect = math.exp(lo + (hi - lo) * u[2 + 2 * k])
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h < img_h and w < img_w:
                if h == 0 or w == 0:  # fits, but empty (a tiny image): nothing to erase
                    return [0] * 5
                top = int(torch.randint(0, img_h - h + 1, (), generator=gen))
                left = int(torch.randint(0, img_w - w + 1, (), generator=gen))
                seed = int(torch.randint(0, 2**63 - 1, (), generator=gen))
                return [top, left, h, w, seed]
        return [0] * 5

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, mode=pixel, filled by BatchPreprocess)"


class ToUint8Tensor:
    """PIL image -> uint8 (C, H, W) tensor of its pixels, unscaled; normalisation is left
    to :class:`BatchPreprocess`, batched on the device.

    ``channels_last``: the tensor is a channels-last view of the (H, W, C) pixel array, and
    :func:`mfdsl.data.dataset.collate` stacks such images into a channels-last batch:
    no transposing copy anywhere when the model runs channels-last. Otherwise the worker
    transposes to contiguous (C, H, W), so that a contiguous run's main process need not."""

    def __init__(self, channels_last: bool = False) -> None:
        self.channels_last = channels_last

    def __call__(self, img: Image.Image) -> torch.Tensor:
        a = np.asarray(img, dtype=np.uint8)  # read-only: torch needs a writable copy
        if a.ndim == 2:
            a = a[:, :, None]
        if self.channels_last:
            return torch.from_numpy(a.copy()).permute(2, 0, 1)
        return torch.from_numpy(np.array(a.transpose(2, 0, 1), order="C"))  # always a copy

    def __repr__(self) -> str:
        return f"ToUint8Tensor(channels_last={self.channels_last})"


def normalization_factors(mean: Sequence[float], std: Sequence[float]
                          ) -> Tuple[np.ndarray, np.ndarray]:
    """float32 ``(1 / (255 std), mean / std)`` per channel: ``(x / 255 - mean) / std`` is
    ``x * scale - shift``, one multiply and one subtract."""
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (1 / (255 * s)).astype(np.float32), (m / s).astype(np.float32)


class ToNormalizedTensor:
    """PIL RGB image -> float32 (C, H, W) tensor ``(x / 255 - mean) / std``, in one pass
    (torchvision's ToTensor + Normalize take three; equal within 1e-6)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        scale, shift = normalization_factors(mean, std)
        self.scale, self.shift = scale[:, None, None], shift[:, None, None]
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

    ``normalize``: ``(mean, std)`` when the pipeline's output is uint8 pixels still to be
    normalised (by :class:`BatchPreprocess`, on the device); None when it is final.
    """

    def __init__(self, steps: Sequence[Callable],
                 normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None) -> None:
        for t in steps:
            if not getattr(t, "uses_generator", False) and _kind(t) not in _GLOBAL_RNG_FREE:
                raise TypeError(f"{type(t).__name__} is not known to leave torch's global "
                                "RNG alone; wrap it to take the sample's generator")
        self.steps = list(steps)
        self.random = any(_kind(t) not in _DETERMINISTIC for t in steps)
        self.normalize = (tuple(normalize[0]), tuple(normalize[1])) if normalize else None

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
        tail = (f"    then on the device: normalise(mean={self.normalize[0]}, "
                f"std={self.normalize[1]}),\n" if self.normalize else "")
        return ("SeededPipeline(\n" + "".join(f"    {t!r},\n" for t in self.steps) + tail
                + ")")


# What a collated batch of the pipelines above is: uint8 or float images, or PendingErasing.
Batch = Union[torch.Tensor, PendingErasing]


class BatchPreprocess:
    """The device-side half of the input pipeline: a collated batch -> normalised float32
    images on ``device``, in one place of the training and evaluation loops.

    uint8 images (what :func:`train_transform` and :func:`eval_transform` send from the
    workers) are copied to the device (``non_blocking``: from pinned memory the copy
    overlaps), converted to float32 in the run's memory format (channels-last or
    contiguous, as the model is prepared; from either layout) and normalised in place,
    ``x * 1/(255 std) - mean/std``: the arithmetic of :class:`ToNormalizedTensor`, batched
    (equal floats in either memory format). Then the regions of a :class:`PendingErasing`
    batch are filled with standard normal noise, each region from a generator on the device
    seeded with its own seed (drawn in the worker from the sample's generator), so the noise
    depends on the sample alone, not on the batch it lands in. CPU and CUDA generators give
    different (equally distributed) noise for one seed. A float batch is taken as normalised
    already and only moved.
    """

    def __init__(self, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                 device: Union[str, torch.device] = "cpu", channels_last: bool = False) -> None:
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scale: Optional[torch.Tensor] = None
        self.shift: Optional[torch.Tensor] = None
        if mean is not None and std is not None:
            # ToNormalizedTensor's float32 factors, so both round alike.
            scale, shift = normalization_factors(mean, std)
            self.scale = torch.from_numpy(scale.reshape(1, -1, 1, 1)).to(self.device)
            self.shift = torch.from_numpy(shift.reshape(1, -1, 1, 1)).to(self.device)
        # Channels-last: (scale, shift) repeated along one image row, by width.
        self._rows: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._gen: Optional[torch.Generator] = None

    @classmethod
    def for_transform(cls, transform: Any, device: Union[str, torch.device],
                      channels_last: bool = False) -> "BatchPreprocess":
        """The batch step that completes ``transform`` (a dataset's): normalising with its
        ``normalize`` mean/std if it has one, else moving only."""
        norm = getattr(transform, "normalize", None)
        mean, std = norm if norm else (None, None)
        return cls(mean, std, device=device, channels_last=channels_last)

    def __call__(self, batch: Batch) -> torch.Tensor:
        x, regions = self.prepare(batch)
        if regions is not None:
            self.erase(x, regions)
        return x

    def prepare(self, batch: Batch) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The batch normalised on the device, and its erasing regions still to fill (None
        for a batch without). Training fills them after mixup/cutmix (:meth:`erase`), where
        the official training erases: on the mixed batch, so no image's noise is blended
        into its partner."""
        regions = None
        if isinstance(batch, PendingErasing):
            batch, regions = batch
        x = batch.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            if self.scale is None or self.shift is None:
                raise TypeError("a uint8 batch, but no mean/std to normalise it with (build "
                                "BatchPreprocess from the dataset's transform)")
            if x.ndim != 4 or x.shape[1] != self.scale.shape[1]:
                raise ValueError(f"expected a (B, {self.scale.shape[1]}, H, W) image batch, got "
                                 f"shape {tuple(x.shape)}")
            x = x.to(torch.float32, memory_format=self.memory_format)
            self._normalize(x, self.scale, self.shift)
        elif x.ndim == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return x, regions

    def erase(self, x: torch.Tensor, regions: torch.Tensor) -> None:
        """Fill row i's region of ``x`` in place with the noise of its own seed."""
        if regions.shape[0] != x.shape[0]:
            raise ValueError(f"{regions.shape[0]} erasing regions for a batch of {x.shape[0]}")
        self._erase(x, regions)

    def _normalize(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
        if self.memory_format == torch.channels_last:
            # A (1, C, 1, 1) factor broadcast over a channels-last tensor varies fastest:
            # ~3x slower on CPU than the same factors repeated along each (W*C) pixel row.
            b, c, h, w = x.shape
            if w not in self._rows:
                self._rows[w] = (scale.flatten().repeat(w), shift.flatten().repeat(w))
            scale, shift = self._rows[w]
            x = x.permute(0, 2, 3, 1).view(b, h, w * c)  # the same memory, rows of pixels
        x.mul_(scale).sub_(shift)

    def _erase(self, x: torch.Tensor, regions: torch.Tensor) -> None:
        chans = x.shape[1]
        for i, (top, left, h, w, seed) in enumerate(regions.tolist()):
            if h == 0:
                continue
            if self._gen is None:
                self._gen = torch.Generator(device=self.device)
            self._gen.manual_seed(seed)
            # Drawn contiguous, then copied in: the same values in either memory format.
            x[i, :, top:top + h, left:left + w] = torch.randn(
                (chans, h, w), generator=self._gen, device=self.device, dtype=x.dtype)

    def __repr__(self) -> str:
        fmt = "channels_last" if self.memory_format == torch.channels_last else "contiguous"
        what = "normalise" if self.scale is not None else "move only"
        return f"BatchPreprocess(device={self.device}, {what}, {fmt})"


# Transforms without randomness, and those drawing only from python's ``random`` and
# numpy's global RNG (timm 1.0's RandomResizedCropAndInterpolation, RandAugment,
# AutoAugment and AugMix).
_DETERMINISTIC = {f"{__name__}.ToNormalizedTensor", f"{__name__}.ToUint8Tensor"} | {
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
                    std: Sequence[float], hflip: float = 0.5, *,
                    crop_scale_min: float, channels_last: bool = False) -> SeededPipeline:
    """The recipe's training augmentation; RandomResizedCrop keeps between
    ``crop_scale_min`` (the run's: :data:`mfdsl.run_options.CROP_SCALE_MIN` by default) and
    all of the image's area (aspect 3/4..4/3). The workers' part:
    it ends in uint8 images (laid out for a ``channels_last`` run or not) and erasing
    rectangles; :class:`BatchPreprocess` normalises and erases."""
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
    # Workers send uint8 pixels; BatchPreprocess normalises (and erases) on the device.
    steps.append(ToUint8Tensor(channels_last))
    if recipe.random_erasing > 0:
        steps.append(RandomErasing(recipe.random_erasing))
    return SeededPipeline(steps, normalize=(mean, std))


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


def eval_transform(model: torch.nn.Module, channels_last: bool = False) -> SeededPipeline:
    """Resize + centre crop (crop_pct) + normalise, from the model's pretrained_cfg.

    timm's final to-tensor + Normalize steps become :class:`ToUint8Tensor`, with the
    normalisation left to :class:`BatchPreprocess` (the training pipeline's split)."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    steps = list(create_transform(**cfg, is_training=False).transforms)
    kinds = [_kind(t).rsplit(".", 1)[1] for t in steps[-2:]]
    if kinds in (["MaybeToTensor", "Normalize"], ["ToTensor", "Normalize"]):
        # The config's mean/std, as given (Normalize holds them rounded to float32).
        return SeededPipeline(steps[:-2] + [ToUint8Tensor(channels_last)],
                              normalize=(cfg["mean"], cfg["std"]))
    return SeededPipeline(steps)
