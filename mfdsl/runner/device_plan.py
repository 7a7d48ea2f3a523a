"""The device decisions of a run, made once: device, memory layout, dtype, compilation and
the layers' speed variants. ``mfdsl train`` and ``mfdsl eval`` both resolve them here, and
the model is lowered once, with the variants this plan names for its device.

Defaults: on CUDA, channels-last, the recipe's mixed precision and (training only)
``torch.compile``; on the CPU, none of them. An explicit option always wins.

CUDA graphs (``--cuda-graphs``, off by default) compile with ``mode="reduce-overhead"``:
inductor records the compiled forward and backward as CUDA graphs and replays them, which
removes the kernel-launch cost that dominates small per-device batches. It is safe here
because what it graphs meets its conditions: one shape (the training loader drops a
partial batch, evaluation pads one: docs/internals.md), no host reads inside the step
(runner/step.py), and the optimizer, clipping and EMA stay eager outside the graphs (so
the optimizer need not be ``capturable``). It is refused where it cannot hold or is not
verified: on the CPU (there are no CUDA graphs: one clear error, not a silent fallback),
without ``torch.compile``, and under DDP (several processes: not yet verified).
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
    cuda_graphs: bool = False  # compiled with mode="reduce-overhead"

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
        if not self.compile:
            return "eager"
        return "reduce-overhead" if self.cuda_graphs else "default"

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
                        compile: Optional[bool] = None, training: bool = True,
                        cuda_graphs: bool = False, processes: int = 1) -> DevicePlan:
    """The plan for ``device``; ``None`` options take the defaults above (without a
    recipe, mixed precision defaults to on for CUDA). Raises RunError for a bad dtype,
    and for CUDA graphs where they are refused (``processes``: the run's world size)."""
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
    if cuda_graphs:
        _check_cuda_graphs(device, compile, processes)
    return DevicePlan(device=device, channels_last=bool(channels_last), amp=bool(amp),
                      amp_dtype=amp_dtype, compile=bool(compile), cuda_graphs=bool(cuda_graphs))


def _check_cuda_graphs(device: torch.device, compile: bool, processes: int) -> None:
    """Where ``--cuda-graphs`` is refused (the module docstring says why)."""
    if device.type != "cuda":
        raise RunError(f"--cuda-graphs needs a CUDA device; this run is on {device.type} "
                       "(CUDA graphs replay recorded GPU kernels). Leave it out: the compiled "
                       "step is the same without it")
    if not compile:
        raise RunError("--cuda-graphs records the compiled step: it cannot go with "
                       "--no-compile")
    if processes > 1:
        raise RunError(f"--cuda-graphs is not verified under DDP ({processes} processes); "
                       "use it with one process, or leave it out")
