"""Activation memory of one training step, measured on meta tensors.

Method: run the forward pass of the model in training mode on the meta device (shapes
only, no storage) under ``torch.autograd.graph.saved_tensors_hooks``. Every tensor that
autograd keeps for the backward pass goes through the pack hook; we count each distinct
storage once (views such as permutes share their base's storage) and leave out the
model's own parameters and buffers (weights saved by linear/conv are not activations).
Tensors a layer derives from its weights inside forward (e.g. a scale folded into a
weight) and saves are counted: they are held until backward too, but do not grow with
the batch, so the figure is affine in the batch size, not strictly proportional.
The result is the memory the autograd graph holds between forward and backward: the
activation part of a training step's peak.

Limits (also in docs/analysis.md): it does not include parameters, gradients, optimiser
state, the allocator's rounding and caching, temporary buffers inside kernels, or the
transient outputs that are freed during the forward pass. Attention is measured in the
math (unfused) form the meta device runs; a fused flash/efficient kernel on a GPU saves
the log-sum-exp instead of the N x N probabilities and needs less. Low precision is
modelled as a model cast to that dtype; AMP (fp32 weights, autocast) lies between the
fp32 and bf16 figures because norms and softmax stay in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef

DTYPES: Dict[str, torch.dtype] = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
}


@dataclass
class SavedTensors:
    """What autograd saved: total distinct bytes and the bytes per saving module part."""

    total_bytes: int
    by_part: Dict[str, int]
    count: int


def measure_saved(model: nn.Module, example: torch.Tensor, num_classes: int,
                  parts: Optional[List[Tuple[str, nn.Module]]] = None) -> SavedTensors:
    """Run forward + loss in training mode on meta tensors and tally the saved tensors.

    The tally is attributed to the part (by default the top-level ``stem``, ``stages.i``,
    ``head``; or the given ``parts``) whose forward was running when the tensor was saved.
    """
    if example.device.type != "meta":
        raise ValueError("measure_saved expects a model and input on the meta device")
    own: Set[StorageWeakRef] = {
        StorageWeakRef(t.untyped_storage())
        for t in list(model.parameters()) + list(model.buffers())
    }
    seen: Set[StorageWeakRef] = set()
    by_part: Dict[str, int] = {}
    current: List[str] = ["other"]

    def pack(t: torch.Tensor) -> torch.Tensor:
        ref = StorageWeakRef(t.untyped_storage())
        if ref not in own and ref not in seen:
            seen.add(ref)
            by_part[current[-1]] = by_part.get(current[-1], 0) + t.untyped_storage().nbytes()
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def enter(name: str):
        def hook(_m: nn.Module, _args: Any) -> None:
            current.append(name)
        return hook

    def leave(_m: nn.Module, _args: Any, _out: Any) -> None:
        current.pop()  # a forward hook that returns a value would replace the output

    handles = []
    for name, part in (_parts(model) if parts is None else parts):
        handles.append(part.register_forward_pre_hook(enter(name)))
        handles.append(part.register_forward_hook(leave))
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack), torch.enable_grad():
            logits = model(example)
            current.append("loss")
            target = torch.zeros(example.shape[0], dtype=torch.long, device="meta")
            loss = F.cross_entropy(logits.float(), target.clamp(max=num_classes - 1))
            current.pop()
        del loss
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return SavedTensors(sum(by_part.values()), by_part, len(seen))


def _parts(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    out: List[Tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if name == "stages":
            out.extend((f"stages.{i}", st) for i, st in enumerate(child))
        else:
            out.append((name, child))
    return out
