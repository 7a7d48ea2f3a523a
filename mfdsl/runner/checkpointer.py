"""Saving and restoring a run, one beside the other: what :meth:`Checkpointer.save`
writes from each part (weights, optimizer, schedule, loss scaler, EMA, every rank's RNG,
the position and counters), :meth:`Checkpointer.restore` reads back into the same part.

The files (a ``ckpt-<step>`` pair, ``last``/``best`` links, retention) are written by
:class:`mfdsl.runner.checkpointing.CheckpointWriter` on rank 0; every rank takes part in a
save (the RNG states and a failure are gathered).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import torch

from ..ckptformats.weights import LoadReport
from ..data.dataset import UnreadableImages
from .. import fsio, runs
from . import checkpointing as ckpt
from . import recipe_history
from .distributed import DistEnv, agree_on_failure, any_rank, gather_objects
from .errors import NonFiniteLossError, RunError
from .parts import Parts
from .plan import RunPlan, micro_per_epoch
from .state import SavedParts, TrainState


class FailedImages:
    """The run's unreadable training images: each rank's since the last merge, and the
    current epoch's, merged over ranks (a collective) into the run's record."""

    def __init__(self, output: str, env: DistEnv) -> None:
        self.output, self.env = output, env
        self.pending = UnreadableImages("train")
        self.epoch = UnreadableImages("train")

    def new_epoch(self) -> None:
        self.epoch = UnreadableImages("train")

    def merge(self, st: TrainState) -> None:
        """Merge every rank's failures since the last call (all ranks take part)."""
        for files in gather_objects(self.env, self.pending.state()):
            st.unreadable.merge(files)
            self.epoch.merge(files)
        self.pending = UnreadableImages("train")

    def write(self, st: TrainState) -> None:
        """``skipped.jsonl`` (rank 0): one JSON line per file, any file name included."""
        if self.env.is_main and (len(st.unreadable) or len(st.unreadable_val)):
            fsio.write_atomic(os.path.join(self.output, runs.SKIPPED_FILE),
                              st.unreadable.jsonl() + st.unreadable_val.jsonl(),
                              links=fsio.INTERNAL)


class Checkpointer:
    """Saves a run's parts and position, and restores them, symmetrically."""

    def __init__(self, parts: Parts, plan: RunPlan, env: DistEnv, folder: str,
                 writer: Optional[ckpt.CheckpointWriter], failures: FailedImages, seed: int,
                 log: Callable[[str], None]) -> None:
        self.parts, self.plan, self.env = parts, plan, env
        self.folder = folder  # <run>/checkpoints
        self.writer = writer  # rank 0's; None on the others
        self.failures = failures
        self.seed = seed
        self.log = log

    def save(self, st: TrainState) -> None:
        """Checkpoint the current position (all ranks take part; rank 0 writes)."""
        self.failures.merge(st)
        model, parts = self.parts.model, self.parts
        if any_rank(self.env, any(not torch.isfinite(p).all() for p in model.parameters())):
            raise NonFiniteLossError(
                f"the weights became non-finite by step {st.step}; stopped without saving. "
                f"The last good checkpoint is intact: {self.last_good()}")
        rngs = gather_objects(self.env, ckpt.capture_rng())
        if self.writer is None:
            st.last_saved_step = st.step
            agree_on_failure(self.env, None)  # rank 0's write failure stops every rank
            return
        val = st.last_val if st.last_val_step == st.step else None
        best = self.plan.best
        is_best = val is not None and val[best.metric] > st.best_top1
        if is_best:
            st.best_top1 = val[best.metric]
        b = self.plan.batch
        ema = parts.ema.module.state_dict() if parts.ema is not None else None
        state = st.to_checkpoint(SavedParts(
            optimizer=parts.optimizer.state_dict(), schedule=self.plan.schedule.state_dict(),
            scaler=parts.scaler.state_dict() if parts.scaler is not None else None, ema=ema,
            rng=rngs, world_size=b.world_size, per_device=b.per_device, accum=b.accum,
            global_batch=b.global_batch, seed=self.seed, best_by=best.metric), val)
        failure = None
        try:
            self.writer.save(st.step, st.epoch, model.state_dict(), state, is_best, ema)
        except fsio.WriteError as exc:
            failure = fsio.WriteError(
                f"{exc}. Training stopped at step {st.step}; the last complete checkpoint is "
                f"{self.last_good()} (continue from it with --resume auto once there is "
                "room)", exc.errno)
        agree_on_failure(self.env, failure)
        st.last_saved_step = st.step
        self.failures.write(st)

    def restore(self, stem: str, recipe_diff: Dict[str, Any]) -> TrainState:
        """The position saved in ``stem``, with every part put back as it was saved (a
        changed optimizer, allowed by ``recipe_diff``, starts its state fresh)."""
        parts, env, b = self.parts, self.env, self.plan.batch
        st, saved = TrainState.from_checkpoint(ckpt.load_state(stem + ckpt.STATE_EXT))
        weights = ckpt.load_weights_file(stem + ckpt.WEIGHTS_EXT)
        mismatch = "\n".join(LoadReport.compare(parts.model.state_dict(), weights).problems(8))
        if mismatch:
            raise RunError(f"checkpoint {stem}{ckpt.WEIGHTS_EXT} was made for a different "
                           f"model than this spec builds:\n{mismatch}")
        try:
            parts.model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise RunError(f"checkpoint {stem}{ckpt.WEIGHTS_EXT} does not match this spec: "
                           f"{str(exc).splitlines()[0]} ...") from None
        self._restore_optimizer(stem, saved.optimizer, recipe_diff)
        if parts.scaler is not None and saved.scaler:
            parts.scaler.load_state_dict(saved.scaler)
        if parts.ema is not None:
            if saved.ema is not None:
                parts.ema.module.load_state_dict(saved.ema)
            else:
                parts.ema.set(parts.model)
        if saved.same_layout(env.world_size, b.per_device, b.accum) \
                and len(saved.rng) == env.world_size:
            ckpt.restore_rng(saved.rng[env.rank])
        else:
            st.micro = self._moved_position(st, saved)
            ckpt.seed_everything(self.seed + env.rank + 1000003 * st.step)
        self.log(f"resumed from {stem} (step {st.step}, epoch {st.epoch + 1}, "
                 f"{st.micro} micro-batches into it)")
        return st

    def _moved_position(self, st: TrainState, saved: SavedParts) -> int:
        """This layout's micro-batches into the epoch for a checkpoint saved under another.

        The sampler deals the epoch's shuffled order to the ranks in turn, so step s uses
        samples [s*G, (s+1)*G) of it at any world size: with the same global batch G and
        epoch length the run continues at the same sample, exactly (the RNG streams of
        dropout, drop-path and mixup are reseeded). Otherwise the epoch restarts."""
        b, env, plan = self.plan.batch, self.env, self.plan
        layout = (f"{saved.world_size} x {saved.per_device} x {saved.accum} -> "
                  f"{env.world_size} x {b.per_device} x {b.accum}")
        if not st.micro:
            return 0
        if saved.world_size and saved.per_device and saved.accum \
                and saved.global_batch == b.global_batch:
            saved_steps = micro_per_epoch(plan.data.train_images, saved.world_size,
                                          saved.per_device) // saved.accum
            consumed = st.micro * saved.per_device * saved.world_size
            if saved_steps == plan.steps_per_epoch and consumed % (b.per_device
                                                                  * env.world_size) == 0:
                self.log(f"note: the batch layout changes (processes x per-device x accum: "
                         f"{layout}; global batch {b.global_batch}): the run continues at "
                         f"sample {consumed} of epoch {st.epoch + 1}, the same samples per "
                         "step; dropout, drop-path and mixup draw new random numbers")
                return consumed // (b.per_device * env.world_size)
            why = (f"an epoch is {saved_steps} steps there and {plan.steps_per_epoch} here "
                   "(the sampler pads each process's share)")
        else:
            why = f"the global batch changes ({saved.global_batch} -> {b.global_batch})"
        self.log(f"note: the batch layout changes ({layout}) and {why}: the data position "
                 f"restarts at the beginning of epoch {st.epoch + 1}, so the steps from here "
                 "see other samples than the uninterrupted run's")
        return 0

    def _restore_optimizer(self, stem: str, saved: Optional[Dict[str, Any]],
                           diff: Dict[str, Any]) -> None:
        optimizer = self.parts.optimizer
        if recipe_history.optimizer_changed(diff):
            self.log(f"note: --allow-recipe-change: the optimizer changes "
                     f"({diff['recipe.optimizer'][0]} -> {diff['recipe.optimizer'][1]}); its "
                     "state (moments) starts fresh at this step")
            return
        # The new recipe's hyperparameters (weight decay, betas, ...) win over the saved
        # ones; unchanged, they are equal.
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            if saved is None:
                raise KeyError("optimizer")
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError) as exc:
            raise RunError(f"optimizer state in {stem}{ckpt.STATE_EXT} does not fit: "
                           f"{exc}") from None
        if diff:
            for g, f in zip(optimizer.param_groups, fresh):
                g.update(f)

    def latest(self) -> Optional[str]:
        """The newest complete checkpoint's stem (None if none was written)."""
        return ckpt.find_latest(self.folder) if os.path.isdir(self.folder) else None

    def last_good(self) -> str:
        """The newest complete checkpoint's weights file, for messages."""
        stem = self.latest()
        return f"{stem}{ckpt.WEIGHTS_EXT}" if stem else "(none was written yet)"
