"""LAMB with timm's semantics: a fixed number of multi-tensor operations per step
(:class:`ForeachLamb`, any device), or one C kernel per group on the CPU (:class:`FusedLamb`,
what ``optimizer lamb`` builds; the foreach form where the kernel does not serve).

The reference is ``timm.optim.Lamb`` (the official recipe's optimizer); both classes compute
the same update (tests/test_runner_lamb.py holds each to 1e-12 in float64):

* the global gradient norm over every group, clipped at ``max_grad_norm``: ``g / clip``
  with ``clip = max(1, norm / max_grad_norm)``;
* Adam moments with bias correction, ``u = m_hat / (sqrt(v_hat) + eps) + wd * p``;
* the trust ratio ``|p| / |u|`` (1 where either norm is 0, at most 1 with ``trust_clip``)
  on groups with weight decay, and on the others only with ``always_adapt``;
* ``p -= lr * ratio * u``.

How: the clip factor and trust ratios are 0-dim tensors computed from ``torch._foreach_norm``;
the moments and the update come from torch's fused AdamW kernel, run with ``lr=-1`` on a
buffer that starts as a copy of ``p``: its decoupled decay, with the weight decay given as
``wd - 1``, scales the buffer by ``1 - lr * (wd - 1) = wd`` and adds the Adam direction, so
that the buffer ends as ``u``; the kernel also divides float32 gradients by the clip factor
(its ``grad_scale``). (torch's CPU kernel scales by ``wd`` in one rounding; a kernel that
computes ``p - lr * (wd - 1) * p`` instead, as CUDA's may, leaves the decay term within
~20 float32 ulps of ``wd * p``: far below the rounding of ``u`` itself, whose Adam part is
O(1) per element. Not measured on a GPU.) Per step that is five passes over the model's
size (the gradient norm, the copy, the kernel, the weight and update norms) and the final
``p += size * u``;
each operation covers a whole group, so a step issues the same few dozen operations
whatever the number of tensors, and reads nothing on the host: the step count is a float32
tensor on the parameters' device (``group["step"]``, as timm names it).

A step given ``found_inf`` (set as an attribute, the way torch's GradScaler and
``runner.step.masked_step`` hand it to fused optimizers) is skipped on the device: the
kernel leaves the moments, the step sizes are zero and the step count does not advance.

The gradients: after a step taken by the foreach form, ``p.grad`` holds the clipped
gradient ``g / clip`` (the kernel writes it back, as a loss scaler's ``unscale_`` leaves
gradients unscaled; other dtypes than float32 are divided by a separate in-place operation
before the kernel, also on a skipped step). Nothing the runner does reads them after the
step: its own clipping, the gradient norm it logs and the loss scaler's unscaling come
before, EMA reads the weights, and ``zero_grad`` follows. The update is built in scratch
buffers the size of the parameters, kept between steps (not state).

The CPU kernel (``runner/lamb_cpu.c``) makes 11 passes where the foreach form makes 16: the
gradient norm; the moments, the update and both norms in one, ``u`` written over the
gradient; then ``p += size * u``. It needs no scratch buffer; after a step ``p.grad`` holds
``u``. On caformer_s18 (2-core AVX2 VM) it took 3.3-3.7x less time than timm's Lamb, the
foreach form 2.1-2.3x (docs/benchmarks.md, ``benchmarks/bench_lamb.py``).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import lamb_cpu


class ForeachLamb(torch.optim.Optimizer):
    """timm's Lamb (grad averaging on, no caution, coupled weight decay) over foreach ops."""

    _step_supports_amp_scaling = True  # takes ``grad_scale`` / ``found_inf`` itself

    def __init__(self, params: Any, lr: float = 1e-3, bias_correction: bool = True,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: Optional[float] = 1.0,
                 trust_clip: bool = False, always_adapt: bool = False) -> None:
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if value < 0.0:
                raise ValueError(f"invalid {name}: {value}")
        defaults = dict(lr=lr, bias_correction=bias_correction, betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                        trust_clip=trust_clip, always_adapt=always_adapt)
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """As torch's, with each group's step count copied onto its parameters' device
        (timm's Lamb saves it on the CPU; both load each other's files)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            if "step" in group:
                group["step"] = torch.as_tensor(group["step"]).to(
                    _device(group), torch.float32, copy=True)

    def _tensors(self, group: Dict[str, Any]) -> Tuple[List[torch.Tensor], ...]:
        """The group's parameters with a gradient, their gradients and moments (the moments
        are created, as zeros, on a parameter's first step)."""
        params, grads, exp_avgs, exp_avg_sqs = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("ForeachLamb does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        return params, grads, exp_avgs, exp_avg_sqs

    def _clip_divisor(self, grads: List[torch.Tensor],
                      grad_scale: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """What the gradients are divided by: the global-norm clip factor (timm:
        ``max(1, |g| / max_grad_norm)`` over all groups), times a loss scaler's scale."""
        max_norm = self.defaults["max_grad_norm"]
        if max_norm is None or not grads:
            return grad_scale
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if grad_scale is None:
            return (norm / max_norm).clamp_(min=1.0)
        return (norm / grad_scale / max_norm).clamp_(min=1.0) * grad_scale

    def _scratch(self, index: int, params: List[torch.Tensor]) -> List[torch.Tensor]:
        """Buffers shaped like ``params`` for the update, kept between steps (not state):
        a fresh list each step would cost an allocation of the model's size."""
        buffers = self.__dict__.setdefault("_update_buffers", {})
        kept = buffers.get(index)
        if kept is None or len(kept) != len(params) or any(
                b.shape != p.shape or b.dtype != p.dtype or b.device != p.device
                or b.stride() != p.stride() for b, p in zip(kept, params)):
            kept = buffers[index] = [torch.empty_like(p) for p in params]
        return kept

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One LAMB step of every group; skipped on the device when ``self.found_inf`` is
        set and nonzero."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update([self._tensors(group) for group in self.param_groups])
        return loss

    def _update(self, lists: List[Tuple[List[torch.Tensor], ...]]) -> None:
        """The step on every group's (parameters, gradients, moments) from :meth:`_tensors`."""
        grad_scale: Optional[torch.Tensor] = getattr(self, "grad_scale", None)
        found_inf: Optional[torch.Tensor] = getattr(self, "found_inf", None)
        divisor = self._clip_divisor([g for _, grads, _, _ in lists for g in grads], grad_scale)
        for i, (group, tensors) in enumerate(zip(self.param_groups, lists)):
            _advance_step(group, found_inf)
            if tensors[0]:
                update = self._scratch(i, tensors[0])
                _lamb_group(group, *tensors, update, divisor=divisor, found_inf=found_inf)


def _advance_step(group: Dict[str, Any], found_inf: Optional[torch.Tensor]) -> None:
    """The group's step count (a float32 tensor on its device) + 1, or + 0 where
    ``found_inf`` skips the step: counted whether or not the group has gradients, as timm
    does."""
    if "step" not in group:
        group["step"] = torch.zeros((), dtype=torch.float32, device=_device(group))
    group["step"].add_(1 if found_inf is None else 1 - found_inf)


def _device(group: Dict[str, Any]) -> torch.device:
    return group["params"][0].device if group["params"] else torch.device("cpu")


def trust_ratio(w_norm: torch.Tensor, u_norm: torch.Tensor, trust_clip: bool) -> torch.Tensor:
    """timm's trust ratio ``|w| / |u|``, 1 where either norm is 0; at most 1 with
    ``trust_clip`` (LAMBC)."""
    ratio = torch.where(w_norm > 0, torch.where(u_norm > 0, w_norm / u_norm, 1.0), 1.0)
    return ratio.clamp_(max=1.0) if trust_clip else ratio


def _lamb_group(group: Dict[str, Any], params: List[torch.Tensor], grads: List[torch.Tensor],
                exp_avgs: List[torch.Tensor], exp_avg_sqs: List[torch.Tensor],
                update: List[torch.Tensor], *, divisor: Optional[torch.Tensor],
                found_inf: Optional[torch.Tensor]) -> None:
    """One group's update (its step count already advanced), ``update`` its scratch buffers."""
    beta1, beta2 = group["betas"]
    wd = group["weight_decay"]
    # The clip division rides in the kernel (its ``grad_scale``: read as float32, and the
    # divided gradients are written back) where that is exact: float32 gradients.
    in_kernel = divisor is not None and divisor.dtype == torch.float32 and all(
        g.dtype == torch.float32 for g in grads)
    if divisor is not None and not in_kernel:
        torch._foreach_div_(grads, divisor)  # in place: a new list would cost an allocation
    # The kernel reads the step count to correct the moments' bias; 1 - beta ** inf = 1
    # turns the correction off.
    step = group["step"] if group["bias_correction"] else torch.full_like(group["step"],
                                                                          float("inf"))
    # The buffer starts as p; AdamW's decoupled decay with lr=-1 scales it by
    # 1 - lr * (wd - 1) = wd and adds the Adam direction: u = wd * p + m_hat / (...).
    # (wd = 0: the buffer is scaled by 0; p is finite, so it starts from zeros.)
    torch._foreach_copy_(update, params)
    torch._fused_adamw_(update, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params),
                        lr=-1.0, beta1=beta1, beta2=beta2, weight_decay=wd - 1.0,
                        eps=group["eps"], amsgrad=False, maximize=False,
                        grad_scale=divisor if in_kernel else None, found_inf=found_inf)
    lr = group["lr"]
    if wd != 0 or group["always_adapt"]:
        ratios = trust_ratio(torch.stack(torch._foreach_norm(params)),
                             torch.stack(torch._foreach_norm(update)), group["trust_clip"])
        sizes = ratios * -lr
        if found_inf is not None:
            sizes = torch.where(found_inf > 0, 0.0, sizes)
        torch._foreach_addcmul_(params, update, sizes.unbind(0))
    else:  # one op order with or without found_inf, so that masked_step equals step
        size = torch.full((), -lr, dtype=params[0].dtype, device=params[0].device)
        if found_inf is not None:
            size = torch.where(found_inf > 0, 0.0, size)
        torch._foreach_mul_(update, size)
        torch._foreach_add_(params, update)


class FusedLamb(ForeachLamb):
    """:class:`ForeachLamb`'s update, taken on the CPU by one kernel per group
    (``runner/lamb_cpu``: 11 passes over the parameters instead of 16) where every
    parameter, gradient and moment is a dense float32 or float64 CPU tensor of its group's
    dtype and the kernel could be built; elsewhere (CUDA, bfloat16, no C compiler) the
    multi-tensor path. ``kernel_path`` says which one the last step took.

    The kernel reads the step count, ``found_inf`` and a loss scaler's ``grad_scale`` from
    their tensors itself, so Python reads no tensor value; a step given a nonzero
    ``found_inf`` changes nothing and does not advance the count, as on the multi-tensor
    path. On the kernel path the update direction ``u`` is built in the gradients' memory:
    after a step taken, ``p.grad`` holds ``u`` (nothing reads gradients after the step;
    see the module's docstring).
    """

    kernel_path: Optional[str] = None

    def _update(self, lists: List[Tuple[List[torch.Tensor], ...]]) -> None:
        if not _kernel_serves(lists):
            self.kernel_path = "foreach"
            super()._update(lists)
            return
        self.kernel_path = "cpu kernel"
        found_inf = _float32(getattr(self, "found_inf", None))
        grad_scale = _float32(getattr(self, "grad_scale", None))
        grads = [g for _, gs, _, _ in lists for g in gs]
        max_norm = self.defaults["max_grad_norm"]
        sumsq = 0.0
        if max_norm is not None:
            for dtype in {g.dtype for g in grads}:
                sumsq += lamb_cpu.sum_of_squares([g for g in grads if g.dtype == dtype])
        for group, tensors in zip(self.param_groups, lists):
            _advance_step(group, found_inf)
            if not tensors[0]:
                continue
            wd = group["weight_decay"]
            lamb_cpu.lamb_group(
                *tensors, step=group["step"], found_inf=found_inf, grad_scale=grad_scale,
                sumsq=sumsq, max_grad_norm=max_norm, beta1=group["betas"][0],
                beta2=group["betas"][1], bias_correction=group["bias_correction"],
                eps=group["eps"], weight_decay=wd, lr=float(group["lr"]),
                adapt=wd != 0 or group["always_adapt"], trust_clip=group["trust_clip"])


def _float32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


def _kernel_serves(lists: List[Tuple[List[torch.Tensor], ...]]) -> bool:
    """Whether every group can take the CPU kernel: one dtype it handles per group, every
    tensor on the CPU, dense, and laid out as its parameter (the kernel walks memory)."""
    for tensors in lists:
        if not tensors[0]:
            continue
        dtype = tensors[0][0].dtype
        if dtype not in lamb_cpu.DTYPES:
            return False
        for p, g, m, v in zip(*tensors):
            # (run every step over every tensor: the common case is tested first, cheaply)
            if not (p.is_cpu and g.is_cpu and m.is_cpu and v.is_cpu):
                return False
            if not (p.dtype == g.dtype == m.dtype == v.dtype == dtype):
                return False
            if not (p.is_contiguous() or lamb_cpu.dense(p)):
                return False
            stride = p.stride()
            if not (g.stride() == m.stride() == v.stride() == stride or all(
                    lamb_cpu.same_layout(t, p) for t in (g, m, v))):
                return False
    if lamb_cpu.kernel() is None:
        _warn_once(lamb_cpu.unavailable_reason() or "")
        return False
    return True


_warned: List[str] = []


def _warn_once(reason: str) -> None:
    """Say once per process why the CPU takes the slower form (the run is not wrong)."""
    if reason not in _warned:
        _warned.append(reason)
        warnings.warn(f"LAMB takes its slower multi-tensor form on the CPU: {reason}",
                      RuntimeWarning, stacklevel=3)
