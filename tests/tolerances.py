"""Tolerances for comparing a computation with a reference, derived rather than picked.

Every comparison of two floating-point computations of the same function in the tests
(mfdsl against timm, a folded model against the unfolded one, a fast variant against the
plain layer, an export against eager) goes through :func:`tolerance` or
:func:`assert_close`, so that it holds on any CPU the project runs on: AVX2, AVX-512 and
ARM kernels (and oneDNN against MKL, a fused against an unfused op) sum in different
orders and block sizes, and round differently, by design.

The derivation, for a computation whose results are sums of K products (a matrix product
or convolution with reduction length K), computed in a dtype with machine epsilon
``eps = torch.finfo(dtype).eps`` (fp32 1.2e-7, bf16 7.8e-3, fp16 9.8e-4; unit roundoff
u = eps / 2):

1. One computation: ``|fl(s) - s| <= gamma_K * sum|a_i b_i|`` with ``gamma_K ~ K u`` in the
   worst case (Higham, *Accuracy and Stability of Numerical Algorithms*, 3.1). Treating the
   rounding errors as independent zero-mean variables, the bound holds with probability at
   least ``1 - 2 exp(-lambda^2 / 2)`` with ``lambda sqrt(K) u`` instead (Higham and Mary,
   "A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 2019);
   blocked, pairwise and FMA summation, which every BLAS kernel uses, only lower it. A
   tensor computed in a low dtype from fp32 accumulators (bf16 autocast) has the same form
   with the low dtype's eps: each product's operands were rounded to it.
2. Two correct implementations err independently, so they differ by up to twice that:
   ``2 u sqrt(K) = eps sqrt(K)`` per unit of ``sum|a_i b_i|``.
3. ``sum|a_i b_i|`` is not known where a test compares outputs; it is taken as the largest
   magnitude of the reference (``magnitude``). For the layers tested here (normalised
   activations, weights of std ~ 1/sqrt(K)) the two are of the same order; the safety
   factor covers the ratio and lambda.
4. A chain of ``steps`` such reductions (layers; a block counts its matrix products) adds
   their errors, each carried through the later layers with a gain near 1 for normalised
   residual networks; being independent, they add in quadrature: ``sqrt(steps)`` times
   the bound.

So ``rtol = SAFETY * sqrt(steps) * eps * sqrt(K)`` and ``atol = rtol * magnitude``, with
``SAFETY = 4`` (lambda = 4: the probabilistic bound fails for one element with probability
below 7e-4, and the bound itself is loose by ``sum|a_i b_i| / |s| >= 1``). Example: timm's
attention at width 320 (K = 320, four chained products, values up to 44) in fp32: rtol
1.7e-5, atol 7.5e-4; measured: 8e-5 between the AVX2 and AVX-512 paths. A wrong head
split, a missing scale or a weight loaded into the wrong place moves outputs by
O(magnitude), three orders above. An effect that is itself near fp32 rounding (a norm's
eps of 1e-5 against 1e-6) is told apart in float64, where the same bound is 1e-9 times
smaller.

Not covered here: float64 comparisons of an exact rewrite (a fold, a reordered sum), which
keep :data:`EXACT_FLOAT64`; and tests of a value that is computed the same way twice
(``torch.equal``).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Union

import torch

SAFETY = 4.0

# float64 comparisons of exact rewrites (inference folding, reordered sums, a variant's
# float64 reference): both sides are the same real-number function, the only difference
# is float64 rounding of a few reorderings (~1e-15 relative at the sizes tested), which is
# the same on every CPU because it is far below any kernel-path effect that float32 shows.
# 1e-10 is five orders above that and five below any non-exact rewrite (a dropped eps, a
# folded mean that should not be), which is what these tests are for.
EXACT_FLOAT64 = dict(rtol=1e-10, atol=1e-12)

DType = Union[torch.dtype, str]
_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}


def eps(dtype: DType) -> float:
    return torch.finfo(_NAMES.get(dtype, dtype)).eps


def rel_tolerance(dtype: DType, k: int, steps: int = 1, safety: float = SAFETY,
                  accumulate: Optional[DType] = None) -> float:
    """The largest difference, relative to the reference's largest magnitude, that two
    correct computations of ``steps`` chained length-``k`` reductions in ``dtype`` may
    show (the module's docstring derives it). ``accumulate``: the dtype the sums run in
    when it is wider (bf16 autocast sums in fp32): then the rounding of the operands and
    results to ``dtype`` is one independent error per product, which stays ``eps(dtype)``
    of the result whatever K, and the sums add ``eps(accumulate) * sqrt(K)``."""
    if k < 1 or steps < 1:
        raise ValueError(f"k and steps are at least 1 (k={k}, steps={steps})")
    per_step = (eps(dtype) * math.sqrt(k) if accumulate is None
                else eps(dtype) + eps(accumulate) * math.sqrt(k))
    return safety * math.sqrt(steps) * per_step


def tolerance(dtype: DType, k: int, magnitude: Union[float, torch.Tensor] = 1.0, steps: int = 1,
              safety: float = SAFETY, accumulate: Optional[DType] = None) -> Dict[str, float]:
    """``dict(atol=..., rtol=...)`` for ``torch.testing.assert_close`` / ``allclose``."""
    rtol = rel_tolerance(dtype, k, steps, safety, accumulate)
    if isinstance(magnitude, torch.Tensor):
        magnitude = magnitude.detach().item()
    return dict(rtol=rtol, atol=rtol * float(magnitude))


def rel_max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the measure :func:`rel_tolerance` bounds."""
    return ((a.double() - b.double()).abs().max()
            / b.double().abs().max().clamp_min(1e-30)).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, k: int, steps: int = 1,
                 dtype: Optional[DType] = None, safety: float = SAFETY,
                 accumulate: Optional[DType] = None, msg: Optional[str] = None) -> None:
    """``torch.testing.assert_close`` with :func:`tolerance` of ``expected``'s dtype (or
    ``dtype``: the compute dtype, for an fp32 result of a bf16 computation) and largest
    magnitude."""
    dtype = dtype or expected.dtype
    magnitude = expected.detach().abs().max().item() if expected.numel() else 0.0
    tol = tolerance(dtype, k, magnitude, steps, safety, accumulate)
    torch.testing.assert_close(actual, expected, **tol, check_dtype=False,
                               msg=(lambda m: f"{msg}: {m}" if msg else m))
