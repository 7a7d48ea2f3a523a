"""Activation memory of a training step with and without gradient checkpointing, on meta
tensors (the method of :mod:`mfdsl.analysis.memory`: what autograd keeps for backward,
each storage once, the model's own parameters and buffers left out).

With checkpointing (``MetaFormer.set_grad_checkpointing``) each block keeps only its input;
its activations are recomputed, one block at a time, during backward. So the memory held
between forward and backward is what the unchecked parts save (stem, downsamplings, head,
loss) plus every block's input; backward then needs, on top, one block's activations while
that block is recomputed: the largest block's saved tensors bounds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn as nn

from .memory import measure_saved


@dataclass
class CheckpointMemory:
    batch: int
    plain_bytes: int  # saved for backward without checkpointing
    held_bytes: int  # with checkpointing, between forward and backward
    recompute_bytes: int  # the largest block's activations, rebuilt during backward

    @property
    def peak_bytes(self) -> int:
        """The activation part of the backward peak with checkpointing (an upper bound)."""
        return self.held_bytes + self.recompute_bytes

    @property
    def saving(self) -> float:
        """Checkpointed peak / plain, e.g. 0.2 for a five-fold saving."""
        return self.peak_bytes / self.plain_bytes


def _blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(f"stages.{i}.blocks.{j}", b) for i, st in enumerate(model.stages)
            for j, b in enumerate(st.blocks)]


def measure_checkpointing(model: nn.Module, example: torch.Tensor,
                          num_classes: int) -> CheckpointMemory:
    """Activation bytes of one training step of ``model`` (an mfdsl MetaFormer on the meta
    device) on ``example`` without and with gradient checkpointing."""
    if example.device.type != "meta":
        raise ValueError("measure_checkpointing expects a model and input on the meta device")
    plain = measure_saved(model, example, num_classes)
    per_block = measure_saved(model, example, num_classes, parts=_blocks(model)).by_part
    recompute = max((v for k, v in per_block.items() if k.startswith("stages.")), default=0)
    # Checkpointed, torch saves each block's input through the active saved-tensor hooks
    # (so it is counted) and the block's own tensors through its own (so they are not).
    was = model.grad_checkpointing
    model.set_grad_checkpointing(True)
    try:
        held = measure_saved(model, example, num_classes).total_bytes
    finally:
        model.set_grad_checkpointing(was)
    return CheckpointMemory(example.shape[0], plain.total_bytes, held, recompute)
