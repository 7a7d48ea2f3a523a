"""What the training loop does around its steps, as hooks.

:class:`mfdsl.runner.loop.Loop` only runs optimizer steps and epochs. Around them it
calls every hook it is given, in their order (:func:`mfdsl.runner.train.run_hooks` lists a
run's; a caller of :func:`mfdsl.runner.api.train` may add its own). Each hook is given
what it acts on (the plan, the state, a function to call), never the whole run:

* ``step_start(step)`` before each optimizer step (a step boundary: a stop is honoured here);
* ``step_end(at)`` after it; a hook that needs the step records on the host at that step (a
  log line, a checkpoint, a test kill) says so in ``reads_at(at)`` and the loop reads them
  once for every hook (``at.reads``), so the steps in between never wait for the host;
* ``epoch_start(epoch)`` / ``epoch_end(end)`` around each epoch (or part of one);
* ``close()`` when the loop ends, normally or not.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..data.dataset import UnreadableImages
from .metrics import format_duration

if TYPE_CHECKING:
    from .metrics import MetricsLog
    from .plan import RunPlan
    from .state import TrainState

# Test hooks (docs/training.md), read from the environment when a run starts: SIGKILL the
# process right after optimizer step N (after that step's checkpoint, if any); make the loss
# of step N non-finite; send rank 0 SIGNAME (default SIGTERM) at the boundary after step N,
# as a scheduler would; record, in DIR/rank<R>.txt, "step index" for every training sample a
# rank's loader draws.
SAMPLES_ENV = "MFDSL_TEST_RECORD_SAMPLES"
KILL_ENV = "MFDSL_TEST_KILL_AFTER_STEP"
NAN_ENV = "MFDSL_TEST_NAN_AT_STEP"
SIGNAL_ENV = "MFDSL_TEST_SIGNAL_AT_STEP"


@dataclass
class Reads:
    """What the host read of the step records since the previous read: the finite losses'
    sum and count, and the last step's gradient norm."""

    loss_sum: float = 0.0
    n: int = 0
    grad_norm: float = math.nan


@dataclass
class StepEnd:
    step: int  # the optimizer steps done, this one included
    epoch: int  # the epoch it belongs to, 0-based
    lr: float
    mid_epoch: bool  # more steps follow in this epoch and in the run
    reads: Optional[Reads] = None  # set when the loop read the records at this step


@dataclass
class EpochEnd:
    epoch: int  # the epoch that ran, 0-based
    complete: bool  # it ran to its end (not stopped by --max-steps)
    reads: Reads  # the records not read at a step
    unreadable: UnreadableImages  # its unreadable training images, merged over ranks


class Hook:
    """A no-op for every event; a hook overrides the ones it acts on."""

    def step_start(self, step: int) -> None:
        pass

    def reads_at(self, at: StepEnd) -> bool:
        return False

    def step_end(self, at: StepEnd) -> None:
        pass

    def epoch_start(self, epoch: int) -> None:
        pass

    def epoch_end(self, end: EpochEnd) -> None:
        pass

    def close(self) -> None:
        pass


class Progress(Hook):
    """The progress bar of each epoch (on a terminal, rank 0), else a line per log step."""

    def __init__(self, enabled: bool, plan: "RunPlan", state: "TrainState",
                 log: Callable[[str], None]) -> None:
        self.enabled, self.plan, self.state, self.log = enabled, plan, state, log
        self.bar: Any = None

    def epoch_start(self, epoch: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        p, st = self.plan, self.state
        done = st.micro // p.batch.accum
        # A run cut short (--max-steps) ends inside this epoch: the bar ends where it does.
        total = min(p.steps_per_epoch, done + p.total_steps - st.step)
        self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{p.total_epochs}",
                        unit="step", dynamic_ncols=True, file=sys.stderr)

    def step_end(self, at: StepEnd) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def writer(self) -> Optional[Callable[[str], None]]:
        """How a log line is printed without breaking the bar (None: plainly)."""
        return self.bar.write if self.bar is not None else None

    def show(self, at: StepEnd, loss: float, img_s: float, eta_s: float) -> None:
        """A log step's figures: on the bar, or as a line."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{at.lr:.2e}", img_s=f"{img_s:.0f}")
            return
        p = self.plan
        self.log(f"epoch {at.epoch + 1}/{p.total_epochs} step {at.step}/{p.total_steps}"
                 f" loss {loss:.4f} lr {at.lr:.3e} {img_s:.0f} img/s eta {format_duration(eta_s)}")

    def epoch_end(self, end: EpochEnd) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TrainMetrics(Hook):
    """The ``train`` rows (mean loss over the window since the last log step, lr, gradient
    norm, throughput) and the ``epoch`` rows of metrics.jsonl / TensorBoard."""

    def __init__(self, metrics: "MetricsLog", progress: Progress, plan: "RunPlan",
                 state: "TrainState", every: int, log: Callable[[str], None]) -> None:
        self.metrics, self.progress, self.plan, self.state = metrics, progress, plan, state
        self.every = max(1, every)
        self.log = log

    def epoch_start(self, epoch: int) -> None:
        self.known = set(self.state.unreadable.files)
        self.epoch_sum, self.epoch_n = 0.0, 0
        self._new_window()

    def _new_window(self) -> None:
        self.win_sum, self.win_n, self.win_t = 0.0, 0, time.perf_counter()

    def reads_at(self, at: StepEnd) -> bool:
        return at.step % self.every == 0 or at.step == self.plan.total_steps

    def step_end(self, at: StepEnd) -> None:
        if at.reads is not None:
            self.epoch_sum += at.reads.loss_sum
            self.epoch_n += at.reads.n
            self.win_sum += at.reads.loss_sum
            self.win_n += at.reads.n
        if not self.reads_at(at):
            return
        now = time.perf_counter()
        steps = max(1, self.win_n)
        img_s = self.plan.batch.global_batch * steps / max(now - self.win_t, 1e-9)
        loss = self.win_sum / self.win_n if self.win_n else math.nan
        grad_norm = at.reads.grad_norm if at.reads is not None else math.nan
        self.metrics.write("train", at.step, epoch=at.epoch, loss=loss, lr=at.lr,
                           grad_norm=grad_norm, img_s=img_s)
        self.progress.show(at, loss, img_s,
                           (self.plan.total_steps - at.step) * (now - self.win_t) / steps)
        self._new_window()

    def epoch_end(self, end: EpochEnd) -> None:
        st = self.state
        self.epoch_sum += end.reads.loss_sum
        self.epoch_n += end.reads.n
        n_bad = len(end.unreadable)
        self.metrics.write(
            "epoch", st.step, epoch=end.epoch + 1, complete=end.complete,
            train_loss=self.epoch_sum / self.epoch_n if self.epoch_n else math.nan,
            skipped_images=n_bad,
            val_top1=st.last_val["top1"] if st.last_val_step == st.step else None)
        if n_bad:
            self.log(f"epoch {end.epoch + 1}: skipped {end.unreadable.describe()}; "
                     f"{len(set(end.unreadable.files) - self.known)} new, "
                     f"{len(st.unreadable)} in the run")


class Validation(Hook):
    """Validate after every ``--eval-every`` complete epochs and where the run ends (also
    inside an epoch, cut by --max-steps), so the last checkpoint can be the best."""

    def __init__(self, validate: Callable[[], Any], plan: "RunPlan", state: "TrainState",
                 every: int) -> None:
        self.validate, self.plan, self.state = validate, plan, state
        self.every = max(1, every)

    def epoch_end(self, end: EpochEnd) -> None:
        st, p = self.state, self.plan
        if st.step >= p.total_steps or (end.complete and (
                st.epoch % self.every == 0 or st.epoch == p.total_epochs)):
            self.validate()


class Checkpoints(Hook):
    """A checkpoint every ``--ckpt-every`` steps inside an epoch, and at each epoch's end."""

    def __init__(self, save: Callable[[], None], plan: "RunPlan", state: "TrainState",
                 every: int) -> None:
        self.save, self.plan, self.state, self.every = save, plan, state, every

    def reads_at(self, at: StepEnd) -> bool:
        # The records are read first, so the non-finite policy has judged every step saved.
        return bool(self.every) and at.mid_epoch and at.step % self.every == 0

    def step_end(self, at: StepEnd) -> None:
        if self.reads_at(at):
            self.save()

    def epoch_end(self, end: EpochEnd) -> None:
        if end.complete or self.state.step >= self.plan.total_steps:
            self.save()


class Preemption(Hook):
    """A scheduler's stop signal: checkpoint at this boundary and stop
    (:mod:`mfdsl.runner.preemption`)."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop

    def step_start(self, step: int) -> None:
        self.stop()


def _env_int(name: str) -> Optional[int]:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


class TestFaults(Hook):
    """The test hooks that act before a step: a stop signal at a boundary; a non-finite
    loss (asked by the step through :meth:`nan_loss`)."""

    __test__ = False  # not a pytest class

    def __init__(self, is_main: bool) -> None:
        self.is_main = is_main
        self.nan_at = _env_int(NAN_ENV)
        step, _, sig = os.environ.get(SIGNAL_ENV, "").partition(":")
        self.signal_at = int(step) if step else None
        self.signal = getattr(signal, sig or "SIGTERM")

    def nan_loss(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) gets a non-finite loss."""
        return self.nan_at == step

    def step_start(self, step: int) -> None:
        if self.signal_at == step and self.is_main:
            os.kill(os.getpid(), self.signal)


class TestKill(Hook):
    """The test hook that SIGKILLs the process after step N: last, so every other hook
    has acted on that step (its mid-epoch checkpoint included; the checkpoint at the end of
    an epoch comes later, so a kill at an epoch's last step precedes it)."""

    __test__ = False

    def __init__(self) -> None:
        # A worker torchrun restarted (--max-restarts) is the run that survives the kill.
        first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        self.at = _env_int(KILL_ENV) if first else None

    def reads_at(self, at: StepEnd) -> bool:
        return self.at == at.step

    def step_end(self, at: StepEnd) -> None:
        if self.at == at.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordedSampler:
    """The test hook that records which sample each optimizer step draws: a training
    sampler whose keys are written as the loader draws them (``SAMPLES_ENV``)."""

    def __init__(self, sampler: Any, folder: str, rank: int, first_step: int,
                 first_micro: int, per_device: int, accum: int) -> None:
        self.sampler, self.path = sampler, os.path.join(folder, f"rank{rank}.txt")
        self.first_step, self.first_micro = first_step, first_micro
        self.per_device, self.accum = per_device, accum

    @classmethod
    def wrap(cls, sampler: Any, rank: int, first_step: int, first_micro: int,
             per_device: int, accum: int) -> Any:
        folder = os.environ.get(SAMPLES_ENV)
        if not folder:
            return sampler
        return cls(sampler, folder, rank, first_step, first_micro, per_device, accum)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        with open(self.path, "a") as f:
            for n, key in enumerate(self.sampler):
                micro = self.first_micro + n // self.per_device
                step = self.first_step + micro // self.accum + 1
                f.write(f"{step} {key[0]}\n")
                f.flush()
                yield key
