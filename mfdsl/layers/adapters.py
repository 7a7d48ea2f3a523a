"""Low-rank adapters (LoRA, Hu et al. 2021) on linear and 1x1-conv layers, and their merge.

An adapter is a weight parametrization (``torch.nn.utils.parametrize``): the layer's
weight reads ``W + (alpha / rank) * B @ A`` with A ``[rank, in]`` (Kaiming-uniform, as
LoRA) and B ``[out, rank]`` (zeros, so a new adapter changes nothing). Every forward path
that reads ``.weight`` (speed variants and fused blocks included) sees the adapted weight,
so the adapter needs no per-layer forward. Dropout on the adapter's input (LoRA's
``lora_dropout``: ``y = W x + scale * B A dropout(x)``) is the one term weight space cannot
carry: in training a forward hook adds ``scale * B A (dropout(x) - x)`` to the layer's
output, and the speed variants that would skip the layer's forward step aside for it.
:func:`merge_adapters` writes ``W + delta`` into the weight and removes the
parametrization: the merged model computes the same function in eval (the same weight up
to one rounding of the sum) and has no adapter left.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .pointwise import Pointwise
from .variants import drop_unserving_variants


class LowRankDelta(nn.Module):
    """The parametrization ``W -> W + scale * (B @ A)`` reshaped to W's shape."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.scale = alpha / rank
        if not self.lora_a.is_meta:
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.lora_b @ self.lora_a) * self.scale
        return weight + delta.reshape(weight.shape).to(weight.dtype)


def adaptable(module: nn.Module) -> bool:
    """A Linear, a :class:`Pointwise` (Linear maths) or an ungrouped 1x1 Conv2d."""
    if isinstance(module, (nn.Linear, Pointwise)):
        return getattr(module, "weight", None) is not None and module.weight.dim() == 2
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
            and module.groups == 1)


class AdapterInputDropout:
    """Forward hook of an adapted layer: in training, ``scale * B A (dropout(x) - x)`` added
    to its output, so that the adapter's term reads ``dropout(x)`` while the layer's own
    term (computed with the adapted weight) reads ``x``. A no-op in eval."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, module: nn.Module, args: Tuple[torch.Tensor, ...],
                 out: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return out
        delta = module.parametrizations["weight"][0]
        x = args[0]
        d = F.dropout(x, self.p, True) - x
        a, b = delta.lora_a.to(x.dtype), delta.lora_b.to(x.dtype)
        if isinstance(module, nn.Conv2d):  # 1x1: channels on dim 1
            low = F.conv2d(F.conv2d(d, a[:, :, None, None]), b[:, :, None, None])
        else:
            low = F.linear(F.linear(d, a), b)
        return out + low * delta.scale


def add_adapters(model: nn.Module, names: List[str], rank: int, alpha: float,
                 dropout: float = 0.0) -> List[str]:
    """Adapters on the modules of ``model`` named in ``names`` (each :func:`adaptable`),
    with ``dropout`` on their input in training; the base weights stay as they are.
    Returns the adapter parameters' names."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"adapter dropout {dropout} is not in [0, 1)")
    modules = dict(model.named_modules())
    for name in names:
        m = modules[name]
        w = m.weight
        parametrize.register_parametrization(
            m, "weight", LowRankDelta(w.shape[0], w.shape[1], rank, alpha,
                                      device=w.device, dtype=w.dtype))
        if dropout > 0:
            m.register_forward_hook(AdapterInputDropout(dropout))
    if dropout > 0:
        drop_unserving_variants(model)
    return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] in
            ("lora_a", "lora_b")]


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, LowRankDelta) for m in model.modules())


def merge_adapters(model: nn.Module) -> List[str]:
    """Merge every adapter of ``model`` into its weight (in place); the merged modules'
    names."""
    done = []
    for name, m in list(model.named_modules()):
        plist = getattr(m, "parametrizations", None)
        if plist is None or "weight" not in plist:
            continue
        if not any(isinstance(p, LowRankDelta) for p in plist["weight"]):
            continue
        requires_grad = plist["weight"].original.requires_grad
        for key, hook in list(m._forward_hooks.items()):
            if isinstance(hook, AdapterInputDropout):
                del m._forward_hooks[key]
        with torch.no_grad():
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        m.weight.requires_grad_(requires_grad)
        done.append(name)
    return done


# A saved model with adapters names each adapted weight ``<module>.parametrizations.weight.
# original`` and its adapter ``<module>.parametrizations.weight.0.lora_a`` / ``lora_b``.
_ORIGINAL = ".parametrizations.weight.original"
_LORA = ".parametrizations.weight.0."


def adapter_state_rank(sd: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The adapters' rank in a state dict saved with unmerged adapters; None without."""
    ranks = {v.shape[0] for k, v in sd.items() if k.endswith(_LORA + "lora_a")}
    if not ranks:
        return None
    if len(ranks) > 1:
        raise ValueError(f"adapters of different ranks {sorted(ranks)} in one state dict")
    return ranks.pop()


def merge_adapter_state(sd: Mapping[str, torch.Tensor], alpha: float
                        ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``sd`` (saved with unmerged adapters) as the plain model's state dict: each adapted
    weight becomes ``W + (alpha / rank) * B @ A`` under ``<module>.weight``, computed as
    :class:`LowRankDelta` computes it; the merged modules' names."""
    out: Dict[str, torch.Tensor] = {}
    merged: List[str] = []
    for k, v in sd.items():
        if _LORA in k:
            continue
        if not k.endswith(_ORIGINAL):
            out[k] = v
            continue
        module = k[: -len(_ORIGINAL)]
        a, b = sd.get(module + _LORA + "lora_a"), sd.get(module + _LORA + "lora_b")
        if a is None or b is None:
            raise ValueError(f"{k}: an adapted weight without its lora_a/lora_b")
        delta = (b @ a) * (alpha / a.shape[0])
        out[module + ".weight"] = v + delta.reshape(v.shape).to(v.dtype)
        merged.append(module)
    return out, merged
