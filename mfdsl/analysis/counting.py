"""Parameter and MAC counts, taken on the meta device so nothing real is allocated.

MACs follow the paper's convention: convolutions, linear layers and the attention /
random-mixing matrix products (torch.utils.flop_counter's FLOPs / 2).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..ir import ModelSpec


def meta_model(spec: ModelSpec) -> nn.Module:
    from ..lower import lower

    with torch.device("meta"):
        # the paper's layers: the numbers describe the model, not one device's kernels
        return lower(spec, target="reference")


def param_counts(model: nn.Module) -> Tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def count_params_meta(spec: ModelSpec) -> int:
    return sum(param_counts(meta_model(spec)))


def macs_by_module(model: nn.Module, spec: ModelSpec, batch: int = 1) -> Dict[str, int]:
    """MACs per image for each module path FlopCounterMode tracks (``"Global"`` = total)."""
    device = next(model.parameters()).device
    x = torch.zeros(batch, spec.in_chans, *spec.img_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return {k: sum(v.values()) // 2 // batch for k, v in counter.get_flop_counts().items()}


def count_macs_meta(spec: ModelSpec) -> int:
    model = meta_model(spec)
    return macs_by_module(model, spec)["Global"]
