"""Dense outputs: the feature maps a detection / segmentation backbone yields.

``DenseNorms`` holds one norm per output stage (``dense.stage{i}``, on the stage's
channels-last map); ``DenseBackbone`` runs the stem and stages of a lowered model and
returns the chosen stages' outputs through their norms as (B, C, H, W) tensors, the
contract of the official PoolFormer ``fork_feat`` backbone (mmdetection / mmsegmentation).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn as nn

# Where the dense norms sit in a model's state dict: a classification checkpoint has no
# such keys, and loading one reports them as new (mfdsl.ckptformats.weights).
DENSE_PREFIX = "dense."


class DenseNorms(nn.ModuleDict):
    """``stage{i}`` -> the norm on stage i's output, for each dense output i."""

    def __init__(self, norms: Dict[int, nn.Module]) -> None:
        super().__init__({f"stage{i}": m for i, m in sorted(norms.items())})
        self.indices: List[int] = sorted(norms)


class DenseBackbone(nn.Module):
    """stem -> stages, returning [norm_i(stage_i output) as (B, C_i, H_i, W_i) for i in the
    dense outputs]. Shares its modules (and state-dict names) with the model it came from."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], dense: DenseNorms) -> None:
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.dense = dense

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        want = self.dense.indices
        out = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > want[-1]:
                break
            x = stage(x)
            if i in want:
                out.append(self.dense[f"stage{i}"](x).permute(0, 3, 1, 2))
        return out
