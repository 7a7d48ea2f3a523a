"""The training loop: optimizer steps and epochs, and around them the hooks it is given.

The loop knows no hook by name (:mod:`mfdsl.runner.hooks` has the ones a run registers).
After each step it asks every hook whether it needs the step records on the host at that
step (``reads_at``); only then, or when the record buffer is full, does it read them, once
for all hooks, and apply the non-finite policy to them in order.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, List, Sequence

from .checkpointer import FailedImages
from .distributed import DistEnv
from .errors import NonFiniteLossError
from .hooks import EpochEnd, Hook, Reads, StepEnd
from .metrics import MetricsLog
from .parts import Parts
from .plan import RunPlan
from .state import TrainState
from .step import StepLog, train_step, uncount_skipped_steps

# Most step records kept on the device between two reads.
MAX_UNREAD_STEPS = 1024


class NonFinitePolicy:
    """What a non-finite step does: skipped and counted (``skip``), or the run stops
    (``stop``, or ``max_consecutive`` skipped in a row). The last good checkpoint is named."""

    def __init__(self, policy: str, max_consecutive: int, metrics: MetricsLog,
                 last_good: Callable[[], str], log: Callable[[str], None]) -> None:
        self.policy, self.max_consecutive = policy, max_consecutive
        self.metrics, self.last_good, self.log = metrics, last_good, log

    def __call__(self, st: TrainState, loss: float, step: int) -> None:
        st.nan_skipped += 1
        st.nan_consecutive += 1
        where = f"step {step} (epoch {st.epoch + 1})"
        self.metrics.write("nonfinite", step, epoch=st.epoch, loss=loss, policy=self.policy)
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"non-finite loss/gradient ({loss}) at {where}; stopped (--nan-policy stop). "
                f"The last good checkpoint is intact: {self.last_good()}")
        self.log(f"warning: non-finite loss/gradient ({loss}) at {where}: step skipped "
                 f"({st.nan_consecutive} in a row, {st.nan_skipped} in all)")
        if st.nan_consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"{st.nan_consecutive} non-finite steps in a row (last at {where}); stopped. "
                f"Lower the lr or set clip_grad. The last good checkpoint is intact: "
                f"{self.last_good()}")


class Loop:
    """Runs the plan's steps from ``state`` on, calling ``hooks`` in their order."""

    def __init__(self, plan: RunPlan, parts: Parts, env: DistEnv, state: TrainState,
                 hooks: Sequence[Hook], batches: Callable[[int, int], Iterable],
                 failures: FailedImages, nonfinite: NonFinitePolicy,
                 nan_loss: Callable[[int], bool] = lambda step: False,
                 log_every: int = 50) -> None:
        self.plan, self.parts, self.env, self.state = plan, parts, env, state
        self.hooks: List[Hook] = list(hooks)
        self.batches = batches  # (epoch, micro-batches done) -> that epoch's batches
        self.failures, self.nonfinite, self.nan_loss = failures, nonfinite, nan_loss
        self.step_log = StepLog(env.device, min(max(1, log_every), MAX_UNREAD_STEPS))

    def run(self) -> None:
        """Train to the end of the schedule (or --max-steps)."""
        plan, st, hooks = self.plan, self.state, self.hooks
        accum = plan.batch.accum
        epoch_micro = plan.steps_per_epoch * accum
        self.parts.forward_model.train()
        try:
            while st.epoch < plan.total_epochs and st.step < plan.total_steps:
                epoch = st.epoch
                it = iter(self.batches(epoch, st.micro))
                self.failures.new_epoch()
                for h in hooks:
                    h.epoch_start(epoch)
                while st.micro + accum <= epoch_micro and st.step < plan.total_steps:
                    for h in hooks:
                        h.step_start(st.step)
                    lr = self.step(it)
                    st.micro += accum
                    st.step += 1
                    at = StepEnd(st.step, epoch, lr, mid_epoch=(
                        st.micro < epoch_micro and st.step < plan.total_steps))
                    if self.step_log.full or any(h.reads_at(at) for h in hooks):
                        at.reads = self.read()
                    for h in hooks:
                        h.step_end(at)
                del it
                reads = self.read()
                self.failures.merge(st)  # a collective: distinct files over ranks
                complete = st.micro + accum > epoch_micro
                if complete:
                    st.epoch += 1
                    st.micro = 0
                end = EpochEnd(epoch, complete, reads, self.failures.epoch)
                for h in hooks:
                    h.epoch_end(end)
        finally:
            for h in hooks:
                h.close()

    def step(self, it: Any) -> float:
        """One optimizer step over ``accum`` micro-batches (:mod:`mfdsl.runner.step`): no
        host reads; its record waits in the step log. Returns the lr used."""
        parts, st, device = self.parts, self.state, self.env.device
        lr = self.plan.schedule.apply(parts.optimizer, st.step)

        def next_batch():
            images, target, failures = next(it)
            self.failures.pending.add_batch(parts.train_set, failures)
            images, erase = parts.train_prep.prepare(images)
            target = target.to(device, non_blocking=True)
            if parts.mixup is not None:
                images, target = parts.mixup(images, target)
            if erase is not None:  # as the official: on the mixed batch
                parts.train_prep.erase(images, erase)
            return images, target

        out = train_step(parts.step, next_batch, ema_step=st.step,
                         nan_loss=self.nan_loss(st.step + 1))
        self.step_log.record(st.step + 1, out)
        return lr

    def read(self) -> Reads:
        """Read the kept step records (one host read; one collective under DDP) and apply
        the non-finite policy to them in order."""
        records = self.step_log.read(self.env)
        uncount_skipped_steps(self.parts.optimizer, sum(r[2] for r in records),
                              self.env.device)
        got = Reads()
        for step, nonfinite, _skipped, loss, grad_norm in records:
            got.grad_norm = grad_norm  # the last step's
            if nonfinite:
                self.nonfinite(self.state, loss, step)
            else:
                self.state.nan_consecutive = 0
                got.loss_sum += loss
                got.n += 1
        return got
