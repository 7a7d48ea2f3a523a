"""timm's model contract for mfdsl's MetaFormer: classifier reset, intermediate features,
pruning, gradient checkpointing and optimizer grouping, with the semantics of timm 1.0's
``MetaFormer`` (``timm/models/metaformer.py``) so that code written for a timm model
(``create_model(..., features_only=True)``, ``param_groups_layer_decay``, detection and
segmentation backbones) takes a model built from a spec unchanged.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn

# Pools a classifier head may use; timm's SelectAdaptivePool2d names. "" keeps the map.
GLOBAL_POOLS = ("avg", "max", "avgmax", "")
OUTPUT_FMTS = ("NCHW", "NHWC")

Indices = Union[int, Sequence[int], None]


def take_indices(num: int, indices: Indices) -> Tuple[List[int], int]:
    """timm's ``feature_take_indices``: None -> all ``num``; an int n -> the last n; a
    sequence -> those (negative ones from the end). Returns (absolute indices, largest)."""
    if indices is None:
        indices = num
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f"last-n feature count {indices} is out of range (1 to {num})")
        taken = [num - indices + i for i in range(indices)]
    else:
        taken = []
        for i in indices:
            idx = num + i if i < 0 else i
            if not 0 <= idx < num:
                raise ValueError(f"feature index {i} is out of range for {num} stages "
                                 f"(0 to {num - 1}, or -{num} to -1)")
            taken.append(idx)
        if not taken:
            raise ValueError("no feature indices given")
    return taken, max(taken)


def classifier_path(fc: nn.Module, prefix: str = "head.fc") -> str:
    """timm's ``pretrained_cfg["classifier"]`` for the classifier module ``fc`` at
    ``prefix``: the last Linear in it, the one that gives the class scores (``head.fc`` for
    a Linear head; ``head.fc.fc2`` for the MLP head, as in timm's MetaFormer cfgs)."""
    linears = [n for n, m in fc.named_modules() if isinstance(m, nn.Linear)]
    return ".".join(p for p in (prefix, linears[-1] if linears else "") if p)


def check_global_pool(global_pool: str) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"unknown global_pool {global_pool!r}; expected one of "
                         + ", ".join(repr(p) for p in GLOBAL_POOLS)
                         + " (pools that change the pooled width are not supported)")
    return global_pool


class TimmContract:
    """Mixin for :class:`mfdsl.model.MetaFormer` (needs ``stem``, ``stages``, ``head``,
    ``spec``, ``feature_info``, ``num_features``, ``num_classes``, ``pretrained_cfg``).

    No class-level annotations of those: ``torch.jit.script`` reads a module's class
    annotations as attribute types, and ``nn.Module`` is not one it knows."""

    # a property TorchScript would otherwise compile (its dict holds tuples and strings)
    __jit_unused_properties__ = ["default_cfg"]

    # --- timm's aliases --------------------------------------------------------------------
    @property
    def default_cfg(self) -> Dict[str, Any]:
        """timm's older name of ``pretrained_cfg`` (the same dict)."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, value: Dict[str, Any]) -> None:
        self.pretrained_cfg = value

    # --- classifier ------------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None,
                         reset_other: bool = False) -> None:
        """A new classifier for ``num_classes`` (0: none, ``forward`` gives the pooled,
        normed features), of the spec's head kind, freshly initialised. ``global_pool``
        ("avg", "max", "avgmax", "" for no pooling) replaces the pooling if given;
        ``reset_other`` drops the output norm too."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        head = self.head
        if global_pool is not None:
            head.global_pool = check_global_pool(global_pool)
        if reset_other:
            head.norm = nn.Identity()
        if num_classes > 0:
            make = getattr(self, "make_classifier", None)
            if make is None:
                raise TypeError("this model was not built by mfdsl.lower and cannot make a "
                                "new classifier")
            fc = make(self, num_classes)
            ref = next(self.parameters(), None)
            if ref is not None:
                fc = fc.to(device=ref.device, dtype=ref.dtype)
        else:
            fc = nn.Identity()
        head.fc = fc.train(head.training)
        self.num_classes = num_classes

    # --- features ----------------------------------------------------------------------------
    def forward_intermediates(
        self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The stage outputs picked by ``indices`` (None: all; n: the last n; a list), and
        unless ``intermediates_only`` the last feature map computed (NCHW) before them.

        ``stop_early`` runs no stage past the last one asked for. ``norm`` is accepted
        and changes nothing, as in timm's MetaFormer: the output norm acts on pooled
        features, no norm belongs to a feature map. ``output_fmt`` "NHWC" gives the
        stages' own channels-last tensors."""
        if output_fmt not in OUTPUT_FMTS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FMTS}, got {output_fmt!r}")
        taken, last = take_indices(len(self.stages), indices)
        stages = self.stages[:last + 1] if stop_early else self.stages
        out = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in taken:
                out.append(x if output_fmt == "NHWC" else x.permute(0, 3, 1, 2))
        if intermediates_only:
            return out
        return x.permute(0, 3, 1, 2), out

    def prune_intermediate_layers(self, indices: Indices = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` and (``prune_head``, or whenever
        stages go) the classifier and output norm; returns the absolute indices."""
        taken, last = take_indices(len(self.stages), indices)
        prune_end = last < len(self.stages) - 1
        self.stages = self.stages[:last + 1]
        if prune_end:
            # the head was sized for the last stage; features now end earlier
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "", reset_other=True)
        return taken

    # --- training ----------------------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of keeping them
        (``torch.utils.checkpoint``, non-reentrant): the same values and gradients, the
        activation memory of block inputs plus one block's."""
        self.grad_checkpointing = bool(enable)
        for stage in self.stages:
            stage.grad_checkpointing = bool(enable)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups by depth for timm's ``group_parameters`` /
        ``param_groups_layer_decay``: the stem first, then (``coarse``) one group per stage or
        one per block, a stage's downsampling with its first block and a dense output's norm
        (``dense.stage<i>``) after its stage's last block; the head last."""
        return dict(
            stem=r"^stem",
            blocks=[(r"^stages\.(\d+)", None), (r"^dense\.stage(\d+)", None)] if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^dense\.stage(\d+)", (99999,)),
            ],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Names of the parameters the recipe does not decay: every 1-D one (norm weights
        and biases, scales, StarReLU's s and b), as ``mfdsl.runner.optim`` groups them."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}
