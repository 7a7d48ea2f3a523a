"""Per-target optimisation: one call turns a spec or a lowered model into the fastest
form mfdsl knows for a device -- memory format, autocast, torch.compile, folding.

The result is a :class:`TargetModel` wrapper whose ``state_dict`` / ``load_state_dict``
are the inner model's, so a checkpoint saved from the CPU-eager model loads into the
CUDA-compiled one and back (unless ``fold=True``, which merges parameters for inference).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from ..ir import ModelSpec

TARGETS = ("cpu", "cuda")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("default", "max-autotune", "eager")


class TargetError(ValueError):
    """A request compile_for_target cannot honour (unknown option, missing device)."""


class TargetModel(nn.Module):
    """A model placed and optimised for one target.

    ``forward`` converts the image to channels-last (the stem conv then writes the
    channels-last activations mfdsl's blocks use, with no layout copy), enters autocast
    when a reduced dtype was asked for, and calls the compiled model if there is one.
    The state dict is exactly the inner model's (no ``model.`` / ``_orig_mod.`` prefix).
    """

    def __init__(self, model: nn.Module, target: str, dtype: str, mode: str,
                 compiled: Optional[Any], summary: Dict[str, Any],
                 channels_last: bool = True) -> None:
        super().__init__()
        self.model = model
        self.target = target
        self.dtype_name = dtype
        self.mode = mode
        # Kept out of the module tree so it adds no state-dict keys.
        object.__setattr__(self, "_compiled", compiled)
        self.summary = summary
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.target)
        if x.ndim == 4 and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fn = self._compiled if self._compiled is not None else self.model
        with self._autocast():
            return fn(x)

    def _autocast(self):
        if self.dtype_name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.target, dtype=DTYPES[self.dtype_name])

    # The checkpoint contract: keys and values are the inner model's.
    def state_dict(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:  # type: ignore[override]
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):  # type: ignore[override]
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # forward_features, pretrained_cfg, spec, ... of the inner model
            return getattr(super().__getattr__("model"), name)


def _validate(target: str, dtype: str, mode: str) -> None:
    if target not in TARGETS:
        raise TargetError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    if dtype not in DTYPES:
        raise TargetError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if mode not in MODES:
        raise TargetError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if target == "cuda" and not torch.cuda.is_available():
        raise TargetError("target cuda was asked for but no CUDA device is available")


def compile_for_target(
    model_or_spec: Union[nn.Module, ModelSpec, str, "os.PathLike[str]"],
    target: str = "cpu",
    dtype: str = "fp32",
    mode: str = "default",
    fold: bool = False,
    *,
    channels_last: bool = True,
) -> TargetModel:
    """An optimised model for ``target`` ("cpu" or "cuda").

    * a spec (IR or file path) is checked and lowered with ``target`` (so factories can
      pick target-specific kernels); a module is used as is (moved to the device);
    * ``dtype`` "bf16"/"fp16": parameters stay fp32, forward runs under autocast;
    * ``mode`` "default"/"max-autotune": ``torch.compile`` with that mode; "eager": no
      compilation;
    * ``fold``: :func:`mfdsl.passes.fold.fold_for_inference` first (inference only).

    * ``channels_last``: feed the image and conv weights channels-last (mfdsl's blocks
      run channels-last anyway; turn it off to time a foreign model as its authors ship it).

    ``result.summary`` says what was applied. Raises :class:`TargetError` for bad
    options and :class:`mfdsl.errors.SpecError` for a bad spec.
    """
    _validate(target, dtype, mode)
    if isinstance(model_or_spec, nn.Module):
        model = model_or_spec
        source = type(model).__name__
    else:
        from ..api import build_model

        model = build_model(model_or_spec, target=target)
        source = getattr(model, "spec", None).name if hasattr(model, "spec") else "spec"
    applied = []
    if fold:
        from .fold import fold_for_inference

        model = fold_for_inference(model)
        applied.append("fold_for_inference (inference only: " +
                       f"{model.folded['params_before']:,} -> "
                       f"{model.folded['params_after']:,} parameters)")
    model = model.to(target)
    # mfdsl's blocks already run channels-last; make the conv weights match so oneDNN /
    # cuDNN pick their NHWC kernels without reordering per call. Only conv weights: other
    # 4-d parameters (e.g. global_filter's complex weight) need their own layout.
    if channels_last:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        applied.append(f"channels_last (input image and conv weights) on {target}")
    if dtype != "fp32":
        applied.append(f"autocast {dtype} on {target} (parameters stay fp32)")
    compiled = None
    t0 = time.perf_counter()
    if mode != "eager":
        compiled = torch.compile(model, mode=None if mode == "default" else mode)
        applied.append(f"torch.compile(mode={mode!r}) (compiles lazily on the first call)")
    summary: Dict[str, Any] = {
        "model": source, "target": target, "dtype": dtype, "mode": mode, "fold": fold,
        "applied": applied, "setup_s": round(time.perf_counter() - t0, 3),
        "params": sum(p.numel() for p in model.parameters()),
    }
    wrapped = TargetModel(model, target, dtype, mode, compiled, summary, channels_last)
    if not model.training:
        wrapped.eval()
    return wrapped
