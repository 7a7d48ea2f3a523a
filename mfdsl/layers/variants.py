"""Speed variants: a layer with the same parameters and the same maths as a reference
layer, written for one target's kernels.

A variant is a subclass of its reference that only overrides ``forward`` (no parameter,
buffer or submodule of its own), so switching between them is a class swap: the state
dict, the optimizer state and every hook stay exactly as they were. Which variants a
target runs is decided in one place, :data:`VARIANTS_FOR` below, from measurements
(``benchmarks/bench_variants.py``); every variant is tested against its reference in
``tests/test_layers_variants.py`` (forward and gradients, float64, on every device present,
against the reference on the CPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Tuple, Type

import torch.nn as nn


@dataclass(frozen=True)
class Variant:
    name: str
    reference: Type[nn.Module]
    fast: Type[nn.Module]
    applies: Callable[[nn.Module], bool]
    doc: str
    # Children whose forward the variant does not call (it runs their kernel with other
    # weights): it cannot stand in for a child whose forward carries hooks.
    bypasses: Tuple[str, ...] = ()


VARIANTS: Dict[str, Variant] = {}


def speed_variant(name: str, reference: Type[nn.Module], doc: str,
                  applies: Callable[[nn.Module], bool] = lambda m: True,
                  bypasses: Tuple[str, ...] = ()):
    """Class decorator: register ``fast`` as a speed variant of ``reference``; ``bypasses``
    names the children whose forward ``fast`` does not call."""

    def register(fast: Type[nn.Module]) -> Type[nn.Module]:
        if not issubclass(fast, reference):
            raise TypeError(f"variant {fast.__name__} must subclass {reference.__name__}")
        if name in VARIANTS:
            raise ValueError(f"speed variant {name!r} registered twice")
        VARIANTS[name] = Variant(name, reference, fast, applies, doc, tuple(bypasses))
        return fast

    return register


def _reference_of(cls: type) -> type:
    for v in VARIANTS.values():
        if cls is v.fast:
            return v.reference
    return cls


def _serves(v: Variant, m: nn.Module) -> bool:
    """Whether ``v`` computes what ``m`` (its reference) computes, hooks included."""
    if not v.applies(m):
        return False
    for child in v.bypasses:
        c = getattr(m, child)
        if c._forward_hooks or c._forward_pre_hooks:
            return False
    return True


def select_variants(model: nn.Module, names: Iterable[str]) -> List[str]:
    """Run ``model`` with exactly the variants ``names`` (others back to their reference).

    In place; returns ``"<module path>: <variant>"`` for every module switched to a variant.
    Parameters, buffers and the state dict are untouched. A variant is not used where it
    would skip a child's forward hooks.
    """
    wanted = []
    for n in names:
        if n not in VARIANTS:
            raise KeyError(f"unknown speed variant {n!r}; known: {', '.join(sorted(VARIANTS))}")
        wanted.append(VARIANTS[n])
    used = []
    for path, m in model.named_modules():
        ref = _reference_of(type(m))
        if ref is not type(m):
            m.__class__ = ref
        for v in wanted:
            if type(m) is v.reference and _serves(v, m):
                m.__class__ = v.fast
                used.append(f"{path or '(model)'}: {v.name}")
                break
    return used


def drop_unserving_variants(model: nn.Module) -> List[str]:
    """Return to their reference the modules whose variant no longer serves them (a child
    they bypass has gained hooks), in place; ``"<module path>: <variant>"`` of each."""
    dropped = []
    for path, m in model.named_modules():
        for v in VARIANTS.values():
            if type(m) is v.fast and not _serves(v, m):
                m.__class__ = v.reference
                dropped.append(f"{path or '(model)'}: {v.name}")
    return dropped


def variants_in_use(model: nn.Module) -> Dict[str, int]:
    """How many modules run each variant."""
    out: Dict[str, int] = {}
    for m in model.modules():
        for v in VARIANTS.values():
            if type(m) is v.fast:
                out[v.name] = out.get(v.name, 0) + 1
    return out


# Which variants each (device, compiled?) runs: the one place this is decided. Measured
# with ``benchmarks/bench_variants.py`` per layer and ``benchmarks/bench_variant_sets.py``
# on whole models (docs/benchmarks.md, "Speed variants"); a variant stays out of a target
# where it measured slower there. "reference" runs none:
# the paper's forms, the same graph on every device (what ``mfdsl export`` writes).
ALL_FUSED = ("mlp_starrelu_into_fc2", "sepconv_starrelu_into_convs", "block_addcmul",
             "modified_layernorm_groupnorm", "starrelu_addcmul")
VARIANTS_FOR: Dict[Tuple[str, bool], Tuple[str, ...]] = {
    ("reference", False): (),
    ("reference", True): (),
    ("cpu", False): ALL_FUSED + ("pointwise_conv1x1",),
    # Inductor on CPU leaves convolutions, GEMMs and attention to oneDNN / ATen, as eager
    # does, so the eager forms help there too (whole caformer_s18, idle box: compiled with
    # these 1.01x eager, with the 1x1 pointwise alone 0.88x). The GroupNorm form is the
    # exception: compiled, its backward measured 4.3x slower than the plain LayerNorm's.
    # The pooling-as-conv form keeps inductor from inlining avg_pool2d into the next
    # norm's reduction (poolformerv2_s12 compiled inference 0.76x -> 0.89-0.97x eager); eager
    # it is level with avg_pool2d, so eager keeps the plain call. The GroupNorm form as an
    # opaque op keeps ATen's channels-last kernels, which inductor's own reductions do not
    # match (poolformerv2_s12 compiled training 1.17x -> 1.24x eager, inference level).
    ("cpu", True): tuple(v for v in ALL_FUSED if v != "modified_layernorm_groupnorm")
    + ("pointwise_conv1x1", "pooling_as_depthwise_conv", "modified_layernorm_groupnorm_op",
       "depthwise_backward_by_shifts"),
    # H100, bf16, batch 64 (docs/benchmarks.md "GPU"): eager, the fused MLP (0.72x train,
    # 0.31x infer), the GroupNorm form (0.59x / 0.74x), StarReLU addcmul (0.99x / 0.73x)
    # and pooling as a depthwise conv (0.93x / 0.93x; the reference's time there is of
    # CUDA's channels-last avg_pool2d, since avoided) are faster, the others level;
    # cuBLAS serves F.linear as well as a 1x1 conv (1.00x).
    ("cuda", False): ALL_FUSED + ("pooling_as_depthwise_conv",),
    # Compiled, every variant measured level or slower (fused MLP 1.11x train, GroupNorm
    # form 1.19x / 1.35x, pooling as conv 1.10x / 1.34x): inductor fuses the reference.
    ("cuda", True): (),
}


def variants_for(target: str, compiled: bool = False) -> Tuple[str, ...]:
    """The speed variants ``target`` ("cpu", "cuda", "reference") runs."""
    key = (target, bool(compiled))
    if key not in VARIANTS_FOR:
        raise KeyError(f"no speed-variant choice for target {target!r}; expected one of "
                       + ", ".join(sorted({t for t, _ in VARIANTS_FOR})))
    return VARIANTS_FOR[key]
