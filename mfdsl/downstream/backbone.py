"""A spec's dense outputs in torchvision's backbone form: an ``OrderedDict`` of maps."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..ir import DenseSpec, ModelSpec, with_overrides
from ..layers.dense import DenseNorms
from ..pipeline import SpecLike, load_spec


def _check_outputs(outputs: Any, what: str) -> Tuple[int, ...]:
    """``outputs`` as a non-empty, increasing tuple of stage indices (ints >= 0)."""
    if isinstance(outputs, (str, bytes)) or not isinstance(outputs, Sequence):
        raise TypeError(f"{what} must be a sequence of stage indices, got {outputs!r}")
    out = tuple(outputs)
    if not out:
        raise ValueError(f"{what} must name at least one stage")
    for i in out:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{what} must be stage indices (ints >= 0), got {outputs!r}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{what} must be increasing, got {outputs!r}")
    return out


class DenseFeatures(nn.Module):
    """The dense outputs of a built mfdsl model as torchvision's detection models take a
    backbone: ``forward(images)`` returns an ``OrderedDict`` ``"0", "1", ...`` (one key per
    output, in order, as torchvision's ``resnet_fpn_backbone`` names them) of
    (B, C_i, H_i, W_i) maps, each through its dense norm.

    ``outputs``: the stages to return, a subset of the spec's dense outputs (default: all
    of them). The module shares the model's stem, the stages up to the last output and
    those outputs' norms, under the model's state-dict names (``stem.*``, ``stages.*``,
    ``dense.stage<i>.*``). Attributes: ``outputs`` (the stage indices), ``out_channels``,
    ``strides`` (the spec's nominal reduction of each output), ``mean`` / ``std`` (the
    model's input normalisation, for the detector's transform)."""

    def __init__(self, model: nn.Module, outputs: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        from ..model import MetaFormer

        if not isinstance(model, MetaFormer):
            raise TypeError(f"DenseFeatures takes a model built by mfdsl.build_model, got "
                            f"{type(model).__name__}")
        dense = getattr(model, "dense", None)
        if dense is None:
            raise ValueError(
                f"model {model.spec.name!r} has no dense outputs: add a `dense outputs (...)` "
                "line to its spec, or call dense_features(spec, outputs=...) on the spec")
        yields = list(dense.indices)
        chosen = yields if outputs is None else list(_check_outputs(outputs, "outputs"))
        missing = [i for i in chosen if i not in yields]
        if missing:
            raise ValueError(
                f"stage{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
                f"{'are' if len(missing) > 1 else 'is'} not among the dense outputs of "
                f"{model.spec.name!r}, which yields stages {', '.join(map(str, yields))} "
                f"(its stages: 0 to {len(model.stages) - 1})")
        self.stem = model.stem
        self.stages = model.stages[: chosen[-1] + 1]
        self.dense = DenseNorms({i: dense[f"stage{i}"] for i in chosen})
        self.outputs: List[int] = chosen
        self.out_channels: List[int] = [model.feature_info[i]["num_chs"] for i in chosen]
        self.strides: List[int] = [model.feature_info[i]["reduction"] for i in chosen]
        self.names: List[str] = [str(k) for k in range(len(chosen))]
        self.in_chans: int = model.in_chans
        self.mean: List[float] = list(model.pretrained_cfg["mean"])
        self.std: List[float] = list(model.pretrained_cfg["std"])
        self.spec_name: str = model.spec.name

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{self.spec_name} backbone takes (B, {self.in_chans}, H, W) "
                             f"images, got shape {tuple(x.shape)}")
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.outputs:
                norm = self.dense[f"stage{i}"]
                out[self.names[len(out)]] = norm(x).permute(0, 3, 1, 2)
        return out


def dense_features(source: Union[SpecLike, nn.Module], outputs: Optional[Sequence[int]] = None,
                   **build_kwargs: Any) -> DenseFeatures:
    """:class:`DenseFeatures` of a built model, or of a spec (a ``.mf``/``.yaml`` path or a
    ModelSpec) built here with ``mfdsl.build_model(spec, **build_kwargs)``.

    A spec without a ``dense`` line gets ``dense outputs <outputs>`` (the default norm on
    each) when ``outputs`` is given; a spec with one keeps its norms and ``outputs`` picks
    among its outputs."""
    from ..api import build_model

    if isinstance(source, nn.Module):
        if build_kwargs:
            raise TypeError(f"build arguments {sorted(build_kwargs)} apply to a spec, not to "
                            "a built model")
        return DenseFeatures(source, outputs)
    spec = source if isinstance(source, ModelSpec) else load_spec(source)
    if spec.dense is None:
        if outputs is None:
            raise ValueError(f"spec {spec.name!r} has no dense outputs: pass outputs=(...) "
                             "(stage indices) or add a `dense outputs (...)` line")
        chosen = _check_outputs(outputs, "outputs")
        if chosen[-1] >= len(spec.stages):
            raise ValueError(f"outputs {chosen!r}: {spec.name!r} has stages 0 to "
                             f"{len(spec.stages) - 1}")
        spec = with_overrides(spec, dense=DenseSpec(outputs=chosen))
    return DenseFeatures(build_model(spec, **build_kwargs), outputs)
