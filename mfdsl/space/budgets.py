"""Budgets: params, MACs per image and training memory, measured on the meta device.

The figures are :func:`mfdsl.size_limits.estimate_size`'s (no real weights), memoised by
model fingerprint. ``train_memory`` at batch B is the fp32 activations B images keep for
the backward pass plus 16 bytes per parameter (weights, gradients and AdamW's two moments,
all fp32).
"""
from __future__ import annotations

from typing import Dict, Tuple

from ..fingerprint import model_fingerprint
from ..ir import ModelSpec
from ..size_limits import SizeEstimate, estimate_size
from .ir import Budget, Space

BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq

_MEASURED: Dict[Tuple[str, float], SizeEstimate] = {}


def measure(spec: ModelSpec) -> SizeEstimate:
    """Params, MACs and activation bytes per image of a checked spec (memoised)."""
    key = (model_fingerprint(spec), spec.drop_path_rate, spec.head_dropout)
    est = _MEASURED.get(key)
    if est is None:
        est = _MEASURED[key] = estimate_size(spec)
    return est


def value(budget: Budget, est: SizeEstimate) -> int:
    """The figure ``budget`` bounds."""
    if budget.metric == "params":
        return est.params
    if budget.metric == "macs":
        return est.macs
    return est.activation_bytes * (budget.batch or 1) + est.params * BYTES_PER_PARAM


def inside(space: Space, est: SizeEstimate) -> bool:
    return all(b.holds(value(b, est)) for b in space.budgets)


def miss(space: Space, est: SizeEstimate) -> float:
    """How far outside its budgets a candidate is: the sum of relative overshoots."""
    total = 0.0
    for b in space.budgets:
        v = value(b, est)
        if b.high is not None and v > b.high:
            total += (v - b.high) / max(b.high, 1)
        if b.low is not None and v < b.low:
            total += (b.low - v) / max(b.low, 1)
    return total


def show(n: float) -> str:
    """950, 12.3K, 26.1M, 4.1G."""
    for suffix, unit in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= unit:
            return f"{n / unit:.2f}{suffix}"
    return f"{n:g}"


def describe(space: Space, est: SizeEstimate) -> str:
    """``params 26.34M, macs 4.11G`` for the budgets of ``space`` (params and MACs if none)."""
    metrics = [b.metric for b in space.budgets] or ["params", "macs"]
    shown = []
    for m in metrics:
        b = next((x for x in space.budgets if x.metric == m), Budget(m, None, None, None))
        shown.append(f"{m} {show(value(b, est))}")
    return ", ".join(shown)
