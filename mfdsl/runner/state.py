"""The training state and its checkpoint schema: the one place the keys of a
``<stem>.state.pt`` file are written (``TrainState.to_checkpoint``) and read back
(``TrainState.from_checkpoint``).

A state file holds the run's position (step, epoch, micro-batches into the epoch), its
counters (best accuracy, skipped non-finite steps, unreadable images), the components' own
states (optimizer, lr schedule, loss scaler, EMA weights), every rank's RNG state, and the
batch layout those were saved under (a resume with another layout restarts the epoch's data
position instead of restoring the RNG). ``checkpointing.CheckpointWriter`` adds the format
tag and writes the file atomically beside the weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..data.dataset import UnreadableImages


@dataclass
class SavedParts:
    """What a state file holds besides the position: the components' states and the batch
    layout they were saved under (``None`` where the file does not say)."""

    optimizer: Optional[Dict[str, Any]]
    schedule: Optional[Dict[str, Any]]
    scaler: Optional[Dict[str, Any]]
    ema: Optional[Dict[str, Any]]
    rng: List[Dict[str, Any]]  # one per rank, in rank order
    world_size: Optional[int]
    per_device: Optional[int]
    accum: Optional[int]
    global_batch: Optional[int] = None
    seed: Optional[int] = None
    best_by: Optional[str] = None

    def same_layout(self, world_size: int, per_device: int, accum: int) -> bool:
        """Whether the saved RNG states and data position fit this batch layout."""
        return (self.world_size == world_size and self.per_device == per_device
                and self.accum == accum)


@dataclass
class TrainState:
    """Where the run is: completed optimizer steps, epoch, micro-batches used this epoch."""

    step: int = 0
    epoch: int = 0
    micro: int = 0
    best_top1: float = -1.0
    nan_skipped: int = 0
    nan_consecutive: int = 0
    last_saved_step: int = -1
    last_val: Optional[Dict[str, Any]] = None
    last_val_step: int = -1
    # Distinct unreadable files of the run (merged over ranks, kept in checkpoints).
    unreadable: UnreadableImages = field(default_factory=lambda: UnreadableImages("train"))
    unreadable_val: UnreadableImages = field(default_factory=lambda: UnreadableImages("val"))

    def to_checkpoint(self, parts: SavedParts, val: Optional[Dict[str, Any]]
                      ) -> Dict[str, Any]:
        """The state file's contents at this position (``val``: the validation result of
        this step, if any)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "optimizer": parts.optimizer,
            "schedule": parts.schedule,
            "scaler": parts.scaler,
            "ema": parts.ema,
            "rng": parts.rng,
            "batches_in_epoch": self.micro,
            "sampler_epoch": self.epoch,
            "best_top1": self.best_top1,
            "best_by": parts.best_by,
            "val_top1": val["top1"] if val else None,
            "val_ema_top1": val.get("ema_top1") if val else None,
            "nan_skipped": self.nan_skipped,
            "nan_consecutive": self.nan_consecutive,
            "skipped_images": len(self.unreadable),
            "unreadable_images": self.unreadable.state(),
            "unreadable_val_images": self.unreadable_val.state(),
            "world_size": parts.world_size,
            "per_device": parts.per_device,
            "accum": parts.accum,
            "global_batch": parts.global_batch,
            "seed": parts.seed,
        }

    @classmethod
    def from_checkpoint(cls, state: Dict[str, Any]) -> Tuple["TrainState", SavedParts]:
        """The position and counters of a state file (as saved, the checkpoint's step
        counting as saved), and the parts the trainer restores into its components.
        Raises KeyError/ValueError/TypeError on a file that lacks the position."""
        st = cls(step=int(state["step"]), epoch=int(state["epoch"]),
                 micro=int(state["batches_in_epoch"]),
                 best_top1=float(state.get("best_top1", -1.0)),
                 nan_skipped=int(state.get("nan_skipped", 0)),
                 nan_consecutive=int(state.get("nan_consecutive", 0)),
                 unreadable=UnreadableImages("train", state.get("unreadable_images")),
                 unreadable_val=UnreadableImages("val", state.get("unreadable_val_images")))
        st.last_saved_step = st.step
        parts = SavedParts(optimizer=state.get("optimizer"), schedule=state.get("schedule"),
                           scaler=state.get("scaler"), ema=state.get("ema"),
                           rng=list(state.get("rng") or []),
                           world_size=state.get("world_size"),
                           per_device=state.get("per_device"), accum=state.get("accum"),
                           global_batch=state.get("global_batch"), seed=state.get("seed"),
                           best_by=state.get("best_by"))
        return st, parts
