"""Norms that use the batch's statistics in training need more than one value per channel.

A ``batchnorm`` on pooled features (the head's ``output_norm`` or ``head mlp(norm=...)``)
is ``BatchNorm1d`` over (B, C): in training mode it has B values per channel, so a batch of
one image cannot be normalised (torch: "Expected more than 1 value per channel when
training"). The spec is valid (eval normalises each image by running statistics), so the
batch size is what is refused, before any work, naming the option that sets it.
"""
from __future__ import annotations

from typing import List

import torch.nn as nn


def pooled_batch_norms(model: nn.Module) -> List[str]:
    """Names of the modules normalising (B, C) features with the batch's statistics."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm1d)]


def check_training_batch(model: nn.Module, per_device: int, option: str) -> None:
    """Raise ValueError (a clear message) if training at ``per_device`` images cannot work."""
    if per_device >= 2:
        return
    names = pooled_batch_norms(model)
    if names:
        raise ValueError(f"{option} {per_device}: the model normalises pooled features with "
                         f"batchnorm ({', '.join(names[:3])}), which in training needs at "
                         "least 2 images per batch (its statistics are the batch's); use "
                         f"{option} 2 or more, or a layernorm there")
