"""The paper's model families (its model definitions) as ModelSpecs built in Python.

Used by the checkpoint and equivalence tests, independently of the ``.mf`` zoo, so that a
broken front end cannot hide a broken lowering (and vice versa).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

import torch

from mfdsl.ir import Call, ModelSpec, StageSpec, call, default_downsample

DEPTHS = {
    "s12": [2, 2, 6, 2], "s24": [4, 4, 12, 4], "s36": [6, 6, 18, 6],
    "m36": [6, 6, 18, 6], "m48": [8, 8, 24, 8],
}
DIMS = {"s": [64, 128, 320, 512], "m": [96, 192, 384, 768]}
# ConvFormer / CAFormer sizes differ from the other three families.
CA_DEPTHS = {"s18": [3, 3, 9, 3], "s36": [3, 12, 18, 3], "m36": [3, 12, 18, 3],
             "b36": [3, 12, 18, 3]}
CA_DIMS = {"s18": [64, 128, 320, 512], "s36": [64, 128, 320, 512],
           "m36": [96, 192, 384, 576], "b36": [128, 256, 512, 768]}

MODIFIED_LN = call("modified_layernorm", eps=1e-6)
CHANNEL_LN = call("layernorm", bias=False, eps=1e-6)
# The official MlpHead norm eps is torch's default 1e-5; timm's port uses 1e-6.
MLP_HEAD_OFFICIAL = call("mlp", norm=call("layernorm", bias=True, eps=1e-5))
MLP_HEAD_TIMM = call("mlp", norm=call("layernorm", bias=True, eps=1e-6))


def metaformer_spec(
    name: str,
    depths: Sequence[int],
    dims: Sequence[int],
    mixers: Sequence[Call],
    norm: Call,
    head: Call,
    *,
    res_scale_stages: Sequence[int] = (2, 3),
    num_classes: int = 1000,
    img_size: int = 224,
) -> ModelSpec:
    """A four-stage (or any-stage) MetaFormer: one mixer per stage, baseline scales."""
    stages: List[StageSpec] = []
    for i, (d, w, m) in enumerate(zip(depths, dims, mixers)):
        stages.append(StageSpec(
            depth=d, width=w, mixers=[m], norm=norm,
            res_scale=1.0 if i in res_scale_stages else None,
            downsample=None if i == 0 else default_downsample(),
        ))
    return ModelSpec(name=name, num_classes=num_classes, img_size=(img_size, img_size),
                     stages=stages, head=head)


def _size(size: str, depths: Optional[Sequence[int]]) -> tuple:
    if size not in DEPTHS:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(DEPTHS)}")
    return list(depths or DEPTHS[size]), DIMS[size[0]]


def identityformer(size: str = "s12", depths: Optional[Sequence[int]] = None, **kw) -> ModelSpec:
    d, w = _size(size, depths)
    return metaformer_spec(f"identityformer_{size}", d, w, [call("identity")] * 4,
                           MODIFIED_LN, call("linear"), **kw)


def randformer(size: str = "s12", depths: Optional[Sequence[int]] = None, **kw) -> ModelSpec:
    d, w = _size(size, depths)
    mixers = [call("identity"), call("identity"), call("random"), call("random")]
    return metaformer_spec(f"randformer_{size}", d, w, mixers, MODIFIED_LN, call("linear"), **kw)


def poolformerv2(size: str = "s12", depths: Optional[Sequence[int]] = None, **kw) -> ModelSpec:
    d, w = _size(size, depths)
    return metaformer_spec(f"poolformerv2_{size}", d, w, [call("pooling")] * 4,
                           MODIFIED_LN, call("linear"), **kw)


def _ca_size(size: str, depths: Optional[Sequence[int]]) -> tuple:
    if size not in CA_DEPTHS:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(CA_DEPTHS)}")
    return list(depths or CA_DEPTHS[size]), CA_DIMS[size]


def convformer(size: str = "s18", depths: Optional[Sequence[int]] = None,
               head: Call = MLP_HEAD_OFFICIAL, **kw) -> ModelSpec:
    d, w = _ca_size(size, depths)
    return metaformer_spec(f"convformer_{size}", d, w, [call("sepconv")] * 4,
                           CHANNEL_LN, head, **kw)


def caformer(size: str = "s18", depths: Optional[Sequence[int]] = None,
             head: Call = MLP_HEAD_OFFICIAL, **kw) -> ModelSpec:
    d, w = _ca_size(size, depths)
    mixers = [call("sepconv"), call("sepconv"), call("attention"), call("attention")]
    return metaformer_spec(f"caformer_{size}", d, w, mixers, CHANNEL_LN, head, **kw)


FAMILIES = {
    "identityformer": identityformer, "randformer": randformer,
    "poolformerv2": poolformerv2, "convformer": convformer, "caformer": caformer,
}


def paper_spec(model_name: str, **kw) -> ModelSpec:
    """``paper_spec("caformer_s18")`` -> the ModelSpec of that table row."""
    family, _, size = model_name.rpartition("_")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[family](size, **kw)


def to_official_layout(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mfdsl/timm key names -> the official release's."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stem\.", "downsample_layers.0.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = re.sub(r"^head\.norm\.", "norm.", k)
        k = re.sub(r"^head\.fc\.", "head.", k)
        out[k] = v.clone()
    return out
