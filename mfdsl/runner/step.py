"""One optimizer step that never waits for the device.

A step is forward/backward over ``accum`` micro-batches, gradient clipping, the optimizer
(through the fp16 loss scaler when there is one) and the EMA. A non-finite loss or gradient
is found on the device and the step is skipped there too, with no host round trip:

* optimizers with a ``found_inf`` path (torch's fused AdamW, the runner's LAMB,
  ``runner.lamb.FusedLamb``) are handed the flag, and leave weights, moments and step
  counts as they were;
* any other optimizer (SGD, timm's Lamb) steps, and then every tensor it changed on the
  device is put back with ``torch.where(skip, before, after)``. Host-side step counters
  (timm's Lamb's per-group ``step`` when training on a GPU) cannot be put back without
  reading the flag; :func:`uncount_skipped_steps` takes the skipped steps off them when the
  records are next read, so the bias correction counts a skipped step only until then.

What the loop needs to know (was the step counted non-finite, skipped, its loss and
gradient norm) stays on the device in a :class:`StepLog` until a log step or a checkpoint
reads all of it at once: one device-to-host copy, and under DDP one all-reduce.

Ranks agree on skipping without a collective: DDP all-reduces the gradients, so a
non-finite loss on one rank makes every rank's gradient norm non-finite.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

# Columns of a step record.
COUNTED, SKIPPED, LOSS, GRAD_NORM = range(4)


@dataclass
class StepParts:
    """What one optimizer step works on (built once by the trainer)."""

    forward_model: nn.Module  # placement, layout and autocast inside
    model: nn.Module  # the parameters (the unwrapped model)
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    accum: int = 1
    clip_grad: Optional[float] = None
    scaler: Optional[torch.amp.GradScaler] = None
    ema: Any = None  # timm ModelEmaV3 or None
    ddp: Optional[nn.Module] = None  # the DDP wrapper, for no_sync on accumulation


@dataclass
class StepOutcome:
    """One step's results, all 0-dim tensors on the device."""

    counted: torch.Tensor  # bool: counts against the non-finite policy
    skipped: torch.Tensor  # bool: the update was not applied
    loss: torch.Tensor  # mean loss over the micro-batches
    grad_norm: torch.Tensor


def train_step(parts: StepParts, next_batch: Callable[[], Tuple[torch.Tensor, torch.Tensor]],
               *, ema_step: int = 0, nan_loss: bool = False) -> StepOutcome:
    """Run one optimizer step on ``accum`` batches from ``next_batch()`` (images and targets
    already on the device). Reads nothing back from the device.

    ``nan_loss`` makes the loss NaN (the test hook ``MFDSL_TEST_NAN_AT_STEP``).
    """
    p = parts
    loss_sum: Optional[torch.Tensor] = None
    for k in range(p.accum):
        images, target = next_batch()
        sync = p.ddp is None or k == p.accum - 1
        with contextlib.nullcontext() if sync else p.ddp.no_sync():
            out = p.forward_model(images)
            loss = p.criterion(out.float(), target)
            if nan_loss:
                loss = loss * float("nan")
            scaled = loss / p.accum
            if p.scaler is not None:
                scaled = p.scaler.scale(scaled)
            scaled.backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    mean_loss = loss_sum / p.accum
    if p.scaler is not None:
        p.scaler.unscale_(p.optimizer)
    params = [q for q in p.model.parameters() if q.requires_grad]
    # No error_if_nonfinite: that would read the norm on the host.
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if p.clip_grad or total_norm is None:
        clip = p.clip_grad if p.clip_grad else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).detach()
    else:
        # The same norm clip_grad_norm_ computes, without its pass multiplying every
        # gradient by a clip factor of 1.
        grad_norm = total_norm([q.grad for q in params if q.grad is not None]).detach()
    loss_bad = ~torch.isfinite(mean_loss)
    skip = loss_bad | ~torch.isfinite(grad_norm)
    masked_step(p.optimizer, skip)
    if p.scaler is not None:
        # The scaler lowers its scale after an overflow (found in unscale_) on the device;
        # an overflow of the scaled fp16 gradients is its business, not a non-finite loss.
        p.scaler.update()
        counted = loss_bad
    else:
        counted = skip
    if p.ema is not None:
        with _restored_where(skip, _module_tensors(p.ema.module)):
            p.ema.update(p.model, step=ema_step)
    p.optimizer.zero_grad(set_to_none=True)
    return StepOutcome(counted=counted, skipped=skip, loss=mean_loss, grad_norm=grad_norm)


def masked_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """``optimizer.step()`` where ``skip`` (a 0-dim bool tensor on the device) is False, and
    no change to the weights or the optimizer's device state where it is True."""
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        # Fused kernels (and the LAMBs of runner.lamb) skip the update and their step
        # counts themselves.
        optimizer.grad_scale = None
        optimizer.found_inf = skip.to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
        return
    tensors = _optimizer_tensors(optimizer, skip.device)
    holders = list(optimizer.param_groups)
    holders += [optimizer.state[q] for g in optimizer.param_groups for q in g["params"]]
    keys_before = [set(h) for h in holders]
    with _restored_where(skip, tensors):
        optimizer.step()
    # State created by this step (the first one): a skipped first step leaves it at its
    # initial value, zeros (the moments of Adam/LAMB, LAMB's step count; SGD's momentum
    # buffer starts as the first gradient, which zeros times momentum plus that gradient
    # also gives).
    for h, before in zip(holders, keys_before):
        for key, v in h.items():
            if key not in before and isinstance(v, torch.Tensor) and v.device == skip.device:
                with torch.no_grad():
                    v.copy_(torch.where(skip, torch.zeros_like(v), v))


def uncount_skipped_steps(optimizer: torch.optim.Optimizer, n: int,
                          device: torch.device) -> None:
    """Take ``n`` skipped steps off step counters that live on another device than the
    training one (the host), which :func:`masked_step` could not put back."""
    if n <= 0 or getattr(optimizer, "_step_supports_amp_scaling", False):
        return
    holders: List[Dict[str, Any]] = list(optimizer.param_groups)
    holders += [optimizer.state[q] for g in optimizer.param_groups for q in g["params"]]
    for h in holders:
        v = h.get("step")
        if isinstance(v, torch.Tensor) and v.device != device:
            v.sub_(n)


def _optimizer_tensors(optimizer: torch.optim.Optimizer,
                       device: torch.device) -> List[torch.Tensor]:
    """Every tensor the optimizer's step may change on ``device``: parameters with a
    gradient, their state, and tensors kept in the parameter groups."""
    out: List[torch.Tensor] = []
    for g in optimizer.param_groups:
        out += [v for v in g.values() if isinstance(v, torch.Tensor) and v.device == device]
        for q in g["params"]:
            if q.grad is None:
                continue
            out.append(q)
            out += [v for v in optimizer.state[q].values()
                    if isinstance(v, torch.Tensor) and v.device == device]
    return out


def _module_tensors(module: nn.Module) -> List[torch.Tensor]:
    return [t for t in list(module.parameters()) + list(module.buffers())
            if t.dtype.is_floating_point]


@contextlib.contextmanager
def _restored_where(skip: torch.Tensor, tensors: List[torch.Tensor]):
    """Whatever the body does to ``tensors`` in place is undone where ``skip`` is True."""
    with torch.no_grad():
        saved = [t.detach().clone() for t in tensors]
    yield
    with torch.no_grad():
        for t, s in zip(tensors, saved):
            t.copy_(torch.where(skip, s, t))


class StepLog:
    """Step records kept on the device until :meth:`read` fetches them all at once."""

    def __init__(self, device: torch.device, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.rows = torch.zeros(self.capacity, 4, device=device)
        self.steps: List[int] = []  # the step number (1-based) of each row

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def full(self) -> bool:
        return len(self.steps) >= self.capacity

    def record(self, step: int, outcome: StepOutcome) -> None:
        """Keep ``outcome`` as step ``step``'s row (device work only; no read)."""
        i = len(self.steps)
        self.rows[i] = torch.stack([outcome.counted.float(), outcome.skipped.float(),
                                    outcome.loss.float(), outcome.grad_norm.float()])
        self.steps.append(step)

    def read(self, env: Any = None) -> List[Tuple[int, bool, bool, float, float]]:
        """(step, counted, skipped, loss, grad_norm) of each kept step, oldest first; empties
        the log. Under DDP the flags are reduced over ranks (max) in one collective, so
        every rank takes the same decisions; losses stay per rank."""
        n = len(self.steps)
        if n == 0:
            return []
        rows = self.rows[:n]
        if env is not None and getattr(env, "distributed", False):
            import torch.distributed as dist

            flags = rows[:, :2].contiguous()
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            rows = torch.cat([flags, rows[:, 2:]], dim=1)
        values = rows.tolist()  # the one device-to-host copy
        steps, self.steps = self.steps, []
        return [(s, v[COUNTED] > 0, v[SKIPPED] > 0, v[LOSS], v[GRAD_NORM])
                for s, v in zip(steps, values)]
