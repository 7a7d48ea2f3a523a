"""The lowered model: stem -> stages -> head, in timm's module tree (the key differences
from timm's and the official release's checkpoints are converted by
:mod:`mfdsl.ckptformats.weights`)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .ir import ModelSpec
from .layers.dense import DENSE_PREFIX, DenseBackbone, DenseNorms
from .layers.contract import TimmContract, check_global_pool, classifier_path

FIRST_CONV = "stem.conv"  # timm's pretrained_cfg["first_conv"]: the stem's convolution


class ClassifierHead(nn.Module):
    """Global pool -> norm -> classifier (``head.norm``, ``head.fc``).

    ``global_pool`` is timm's: "avg" (the paper's), "max", "avgmax", or "" for none, when
    the norm and classifier act at every position and the output stays (B, C', H, W)."""

    def __init__(self, norm: nn.Module, fc: nn.Module, global_pool: str = "avg") -> None:
        super().__init__()
        self.norm = norm
        self.fc = fc
        self.global_pool = check_global_pool(global_pool)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # x: (B, C, H, W), usually a channels-last strided view.
        pool = self.global_pool
        if not pool:
            b, c, h, w = x.shape
            # The norm was built for (N, C) vectors: give it every position as one.
            y = self.norm(x.permute(0, 2, 3, 1).reshape(-1, c))
            y = y if pre_logits else self.fc(y)
            return y.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        if pool == "avg":
            x = x.mean((2, 3))
        elif pool == "max":
            x = x.amax((2, 3))
        else:  # "avgmax"
            x = 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
        x = self.norm(x)
        return x if pre_logits else self.fc(x)

    def norm_sites(self) -> List[Tuple[str, nn.Module]]:  # folding protocol
        return [("norm", self.fc)]


def spec_pretrained_cfg(spec: ModelSpec, fc: nn.Module) -> Dict[str, Any]:
    """timm's pretrained cfg of a model built from ``spec`` with the classifier ``fc``: the
    spec's input and eval settings, where the stem conv and the classifier are."""
    ev = spec.eval
    return dict(
        input_size=(spec.in_chans, *spec.img_size), crop_pct=ev.crop_pct,
        interpolation=ev.interpolation, mean=tuple(ev.mean), std=tuple(ev.std),
        num_classes=spec.num_classes, pool_size=tuple(spec.stage_resolutions()[-1]),
        first_conv=FIRST_CONV, classifier=classifier_path(fc), architecture=spec.name,
    )


class MetaFormer(TimmContract, nn.Module):
    """A MetaFormer built from a spec. Internally channels-last; the public tensors are
    NCHW like timm's (``forward_features`` and the feature maps are (B, C, H, W) views).
    timm's model contract (:mod:`mfdsl.layers.contract`) comes with it."""

    def __init__(self, spec: ModelSpec, stem: nn.Module, stages: Sequence[nn.Module],
                 head: ClassifierHead, dense: Optional[DenseNorms] = None) -> None:
        super().__init__()
        self.spec = spec
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.head = head
        if dense is not None:  # the spec's dense outputs: their norms (see backbone())
            self.dense = dense
        # Tensors no classification checkpoint holds: loading one reports them as new.
        self.new_weight_prefixes = (DENSE_PREFIX,)
        self.num_classes = spec.num_classes
        self.num_features = self.head_hidden_size = spec.stages[-1].width
        self.in_chans = spec.in_chans
        self.grad_checkpointing = False
        reduction = spec.img_size[0]
        self.feature_info: List[Dict[str, Any]] = []
        for i, (h, _) in enumerate(spec.stage_resolutions()):
            self.feature_info.append(
                dict(num_chs=spec.stages[i].width, reduction=reduction // max(h, 1),
                     module=f"stages.{i}")
            )
        self.pretrained_cfg: Dict[str, Any] = spec_pretrained_cfg(spec, head.fc)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) image -> (B, C, h, w) last feature map (before the head)."""
        x = self.stages(self.stem(x))
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_feature_maps(
        self, x: torch.Tensor, indices: Optional[Sequence[int]] = None
    ) -> List[torch.Tensor]:
        """Per-stage feature maps (B, C_i, H_i, W_i), for detection / segmentation backbones."""
        want = set(range(len(self.stages)) if indices is None else
                   [i % len(self.stages) for i in indices])
        last = max(want) if want else -1
        out = []
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > last:
                break
            x = stage(x)
            if i in want:
                out.append(x.permute(0, 3, 1, 2))
        return out

    def backbone(self) -> DenseBackbone:
        """The spec's dense backbone, sharing this model's stem, stages and dense norms:
        ``backbone()(x)`` is the list of (B, C, H, W) maps of its dense outputs."""
        dense = getattr(self, "dense", None)
        if dense is None:
            raise ValueError(f"{self.spec.name} has no dense outputs: add a `dense outputs "
                             "(...)` line to its spec")
        return DenseBackbone(self.stem, self.stages, dense)

    def frozen_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if not p.requires_grad)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
