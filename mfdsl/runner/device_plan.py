"""The device decisions of a run, made once: device, memory layout, dtype, compilation and
the layers' speed variants. ``mfdsl train`` and ``mfdsl eval`` both resolve them here, and
the model is lowered once, with the variants this plan names for its device.

Defaults: on CUDA, channels-last, the recipe's mixed precision and (training only)
``torch.compile``; on the CPU, none of them. An explicit option always wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from ..ir import RecipeSpec
from ..layers.variants import variants_for
from .errors import RunError

AMP_DTYPES = {"bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class DevicePlan:
    """Where and how a model runs."""

    device: torch.device
    channels_last: bool
    amp: bool
    amp_dtype: str  # "bfloat16" | "float16": the autocast dtype when ``amp``
    compile: bool

    @property
    def dtype(self) -> str:
        """The compute dtype as :func:`mfdsl.target.compile_for_target` names it."""
        return AMP_DTYPES[self.amp_dtype] if self.amp else "fp32"

    @property
    def torch_amp_dtype(self) -> torch.dtype:
        return getattr(torch, self.amp_dtype)

    @property
    def mode(self) -> str:
        """``torch.compile`` mode, or "eager"."""
        return "default" if self.compile else "eager"

    @property
    def variants(self) -> Tuple[str, ...]:
        """The speed variants lowered into the model (one table decides:
        :data:`mfdsl.layers.variants.VARIANTS_FOR`)."""
        return variants_for(self.device.type, self.compile)

    def target(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`mfdsl.target.compile_for_target` for this plan."""
        return dict(target=self.device, channels_last=self.channels_last, dtype=self.dtype)


def resolve_device_plan(device: torch.device, recipe: Optional[RecipeSpec], *,
                        amp: Optional[bool] = None, amp_dtype: str = "bfloat16",
                        channels_last: Optional[bool] = None,
                        compile: Optional[bool] = None, training: bool = True) -> DevicePlan:
    """The plan for ``device``; ``None`` options take the defaults above (without a
    recipe, mixed precision defaults to on for CUDA). Raises RunError for a bad dtype."""
    if amp_dtype not in AMP_DTYPES:
        raise RunError(f"--amp-dtype must be bfloat16 or float16, got {amp_dtype}")
    cuda = device.type == "cuda"
    if amp is None:
        amp = (recipe.amp if recipe is not None else True) and cuda
    if channels_last is None:
        channels_last = cuda
    if compile is None:
        # Evaluation runs eager: one pass over a split does not repay a compilation.
        compile = cuda and training
    return DevicePlan(device=device, channels_last=bool(channels_last), amp=bool(amp),
                      amp_dtype=amp_dtype, compile=bool(compile))
