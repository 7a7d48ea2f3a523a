"""Where the paper models' released ImageNet weights live, and the context they carry.

One table, derived from two facts per family: which tags timm publishes for it (timm 1.0.x
``metaformer.py`` default_cfgs, hub ids ``timm/<model>.<tag>``) and, for IdentityFormer and
RandFormer (which timm does not port), the official release files in the hub repository
``sail/dl`` (``<family>/<model>.pth``, sail-sg/metaformer README). Everything else (names,
image size, classes) follows from the tag.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..runs import WEIGHTS_EXT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IN22K_CLASSES = 21841

_SIZES = {
    "identityformer": ("s12", "s24", "s36", "m36", "m48"),
    "randformer": ("s12", "s24", "s36", "m36", "m48"),
    "poolformerv2": ("s12", "s24", "s36", "m36", "m48"),
    "convformer": ("s18", "s36", "m36", "b36"),
    "caformer": ("s18", "s36", "m36", "b36"),
}
_TIMM_TAGS = {
    "poolformerv2": ("sail_in1k",),
    "convformer": ("sail_in1k", "sail_in1k_384", "sail_in22k_ft_in1k",
                   "sail_in22k_ft_in1k_384", "sail_in22k"),
    "caformer": ("sail_in1k", "sail_in1k_384", "sail_in22k_ft_in1k",
                 "sail_in22k_ft_in1k_384", "sail_in22k"),
}
_OFFICIAL_REPO = "sail/dl"
_OFFICIAL_FAMILIES = ("identityformer", "randformer")


@dataclass(frozen=True)
class Release:
    """One published set of weights for a zoo model, with the context it was trained in."""

    model: str  # zoo model (architecture) name, e.g. "caformer_s18"
    tag: str  # e.g. "sail_in1k", "sail_in22k_ft_in1k_384"
    repo_id: str  # Hugging Face hub repository
    filename: str  # file inside the repository
    layout: str  # key layout: "timm" or "official" (mfdsl.ckptformats.weights layouts)
    img_size: Tuple[int, int] = (224, 224)
    num_classes: int = 1000
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    # sha256 of the file where it is known ahead of download; the hub's own sha256 (the
    # LFS object id, which names the cached blob) is always checked.
    sha256: Optional[str] = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/main/{self.filename}"

    def pretrained_cfg(self) -> Dict[str, object]:
        return dict(input_size=(3, *self.img_size), crop_pct=self.crop_pct,
                    interpolation=self.interpolation, mean=self.mean, std=self.std,
                    num_classes=self.num_classes)


def _from_tag(model: str, tag: str, **kw) -> Release:
    img = 384 if tag.endswith("_384") else 224
    classes = IN22K_CLASSES if tag == "sail_in22k" else 1000
    return Release(model=model, tag=tag, img_size=(img, img), num_classes=classes, **kw)


def _build() -> Dict[str, Release]:
    table: Dict[str, Release] = {}
    for family, tags in _TIMM_TAGS.items():
        for size in _SIZES[family]:
            model = f"{family}_{size}"
            for tag in tags:
                r = _from_tag(model, tag, repo_id=f"timm/{model}.{tag}",
                              filename="model" + WEIGHTS_EXT, layout="timm")
                table[r.name] = r
    for family in _OFFICIAL_FAMILIES:
        for size in _SIZES[family]:
            model = f"{family}_{size}"
            r = _from_tag(model, "sail_in1k", repo_id=_OFFICIAL_REPO,
                          filename=f"{family}/{model}.pth", layout="official")
            table[r.name] = r
    return table


RELEASES: Dict[str, Release] = _build()
DEFAULT_TAG = "sail_in1k"


def zoo_model_of(spec_name: str) -> str:
    """The architecture a zoo spec name builds: ``caformer_s18_384`` -> ``caformer_s18``
    (also the ImageNet-21K specs ``_in21k``, ``_in21ft1k``, ``_384_in21ft1k``)."""
    return re.sub(r"(_384)?(_in21k|_in21ft1k)?$", "", spec_name, count=1)


def releases_for(model: str) -> List[Release]:
    """Every release of a zoo model (or of the model a ``_384`` spec fine-tunes)."""
    arch = zoo_model_of(model)
    return [r for r in RELEASES.values() if r.model == arch]


def lookup(name: str) -> Release:
    """A release by its full name ``<model>.<tag>``; a KeyError naming close ones if unknown."""
    if name in RELEASES:
        return RELEASES[name]
    model = name.split(".", 1)[0]
    known = [r.name for r in releases_for(model)]
    raise KeyError(name if not known else f"{name} (known for {zoo_model_of(model)}: "
                   f"{', '.join(known)})")
