"""Dense outputs: the PoolFormer-v1 S12 zoo spec's backbone against the official
``fork_feat`` backbone (sail-sg/poolformer), written here in plain torch from its formulas,
under the same random weights in the release's key layout; the language around it."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F

from mfdsl.api import build_model, check_spec
from mfdsl.ckptformats.weights import load_checkpoint
from mfdsl.emit.mf import to_mf
from mfdsl.emit.yaml import to_yaml
from mfdsl.frontend.mf import parse_mf
from mfdsl.frontend.yaml_spec import parse_yaml

from conftest import error_of, mf_file
from tolerances import assert_close

ROOT = Path(__file__).resolve().parent.parent
DIMS, DEPTHS = [64, 128, 320, 512], [2, 2, 6, 2]
# fp32; the longest reduction is the MLP's fc2 (4 x 512); two products per block, plus the
# stem and the downsamplings (tests/tolerances.py).
K, STEPS = 4 * 512, 2 * sum(DEPTHS) + 4


def v1_state_dict(seed: int, fork_norms: Optional[List[int]] = None) -> Dict[str, torch.Tensor]:
    """Random values under the sail-sg/poolformer release's keys (classification; with
    ``fork_norms``, also a detection checkpoint's output norms ``norm{2i}``)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    sd = {"patch_embed.proj.weight": w(64, 3, 7, 7, std=0.05),
          "patch_embed.proj.bias": w(64, std=0.1)}
    for i, (depth, d) in enumerate(zip(DEPTHS, DIMS)):
        if i > 0:
            sd[f"network.{2 * i - 1}.proj.weight"] = w(d, DIMS[i - 1], 3, 3, std=0.03)
            sd[f"network.{2 * i - 1}.proj.bias"] = w(d, std=0.1)
        for j in range(depth):
            p = f"network.{2 * i}.{j}."
            for n in ("norm1", "norm2"):
                sd[p + n + ".weight"] = w(d, std=0.1, mean=1.0)
                sd[p + n + ".bias"] = w(d, std=0.1)
            sd[p + "mlp.fc1.weight"] = w(4 * d, d, 1, 1, std=0.05)
            sd[p + "mlp.fc1.bias"] = w(4 * d, std=0.05)
            sd[p + "mlp.fc2.weight"] = w(d, 4 * d, 1, 1, std=0.05)
            sd[p + "mlp.fc2.bias"] = w(d, std=0.05)
            # trained layer scales are far from their 1e-5 init; keep the branches visible
            sd[p + "layer_scale_1"] = w(d, std=0.1, mean=0.3)
            sd[p + "layer_scale_2"] = w(d, std=0.1, mean=0.3)
    sd["norm.weight"] = w(512, std=0.1, mean=1.0)
    sd["norm.bias"] = w(512, std=0.1)
    sd["head.weight"] = w(1000, 512, std=0.05)
    sd["head.bias"] = w(1000, std=0.1)
    for i in fork_norms or []:
        sd[f"norm{2 * i}.weight"] = w(DIMS[i], std=0.1, mean=1.0)
        sd[f"norm{2 * i}.bias"] = w(DIMS[i], std=0.1)
    return sd


def group_norm_1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GroupNorm(1, C), eps 1e-5, on NCHW: statistics over (C, H, W)."""
    mu = x.mean((1, 2, 3), keepdim=True)
    var = ((x - mu) ** 2).mean((1, 2, 3), keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * weight[None, :, None, None] + bias[None, :, None, None]


def fork_feat_forward(sd: Dict[str, torch.Tensor], x: torch.Tensor,
                      identity_first: bool = False) -> List[torch.Tensor]:
    """The official PoolFormer with fork_feat=True: every stage's output through its own
    GroupNorm(1, C) (norm0/2/4/6; nn.GroupNorm's init, weight 1 and bias 0, unless the
    checkpoint has them), the first an identity with FORK_LAST3 (RetinaNet)."""
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4,
                 padding=2)
    outs = []
    for i, depth in enumerate(DEPTHS):
        if i > 0:
            x = F.conv2d(x, sd[f"network.{2 * i - 1}.proj.weight"],
                         sd[f"network.{2 * i - 1}.proj.bias"], stride=2, padding=1)
        for j in range(depth):
            p = f"network.{2 * i}.{j}."
            y = group_norm_1(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"])
            y = F.avg_pool2d(y, 3, 1, 1, count_include_pad=False) - y
            x = x + sd[p + "layer_scale_1"][None, :, None, None] * y
            y = group_norm_1(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"])
            y = F.conv2d(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])
            y = F.conv2d(F.gelu(y), sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
            x = x + sd[p + "layer_scale_2"][None, :, None, None] * y
        if i == 0 and identity_first:
            outs.append(x)
            continue
        key = f"norm{2 * i}"
        weight = sd.get(key + ".weight", torch.ones(DIMS[i]))
        bias = sd.get(key + ".bias", torch.zeros(DIMS[i]))
        outs.append(group_norm_1(x, weight, bias))
    return outs


def zoo_spec(extra: str = ""):
    text = (ROOT / "specs" / "poolformer_s12.mf").read_text()
    if extra:
        text = text.replace("dense outputs (0, 1, 2, 3)", extra)
    return parse_mf(text, "poolformer_s12.mf")


def image(h: int = 97, w: int = 131) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(3))


@pytest.mark.slow
def test_classification_weights_give_the_official_fork_feat_maps() -> None:
    sd = v1_state_dict(seed=11)
    model = build_model(zoo_spec()).eval()
    report = load_checkpoint(model, sd)  # strict: the dense norms are new, not missing
    assert report.format == "poolformer_v1" and report.ok
    assert report.new == [f"dense.stage{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    assert "new in the model, initialised (8)" in report.summary()
    x = image()
    with torch.no_grad():
        got = model.backbone()(x)
        want = fork_feat_forward(sd, x)
    assert [tuple(t.shape) for t in got] == [(2, 64, 24, 33), (2, 128, 12, 17),
                                             (2, 320, 6, 9), (2, 512, 3, 5)]
    for g, r in zip(got, want):
        assert_close(g, r, k=K, steps=STEPS)


def test_retinanet_identity_first_and_detection_norms_load() -> None:
    spec = zoo_spec("dense outputs (0, 1, 2, 3) stage0 identity")
    sd = v1_state_dict(seed=12, fork_norms=[1, 2, 3])  # a FORK_LAST3 detection checkpoint
    model = build_model(spec).eval()
    report = load_checkpoint(model, sd)
    assert report.ok and report.new == []
    assert report.renamed["dense.stage1.weight"] == "norm2.weight"
    x = image(128, 96)
    with torch.no_grad():
        got = model.backbone()(x)
        want = fork_feat_forward(sd, x, identity_first=True)
    for g, r in zip(got, want):
        assert_close(g, r, k=K, steps=STEPS)


def test_dense_outputs_round_trip_both_front_ends() -> None:
    spec = zoo_spec("dense outputs (1, 2, 3) norm layernorm(eps=1e-6) stage1 identity")
    assert spec.dense.outputs == (1, 2, 3) and spec.dense.norm_for(1).name == "identity"
    assert parse_mf(to_mf(spec), "a.mf") == spec
    text = to_yaml(spec)
    assert "dense: {outputs: [1, 2, 3], norm: {layernorm: {eps: 1.0e-06}}, stage1: identity}" \
        in text
    assert parse_yaml(text, "a.yaml") == spec
    model = build_model(spec).eval()
    with torch.no_grad():
        assert [t.shape[1] for t in model.backbone()(image(64, 64))] == [128, 320, 512]


def test_dense_mistakes_are_located(tmp_path: Path) -> None:
    base = ("stage pooling x1 @8", "stage pooling x1 @16")
    err = error_of(check_spec, mf_file(tmp_path, *base, "dense outputs (0, 2)"))
    assert "dense output 2 is not a stage" in str(err) and (err.line, err.column) == (6, 17)
    err = error_of(check_spec, mf_file(tmp_path, *base, "dense outputs (1, 0)"))
    assert "increasing" in str(err)
    err = error_of(check_spec, mf_file(tmp_path, *base, "dense outputs (1) stage0 identity"))
    assert "stage0" in str(err) and (err.line, err.column) == (6, 28)
    err = error_of(check_spec, mf_file(tmp_path, *base, "dense norm identity"))
    assert "dense needs its outputs" in str(err)
    err = error_of(check_spec, mf_file(tmp_path, *base, "dense outputs (0, 1) size 3"))
    assert "expected outputs, norm or stage<i>" in str(err)


def test_a_spec_without_dense_outputs_has_no_backbone() -> None:
    spec = zoo_spec()
    spec.dense = None
    model = build_model(spec)
    assert not any(k.startswith("dense.") for k in model.state_dict())
    try:
        model.backbone()
    except ValueError as exc:
        assert "no dense outputs" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("backbone() of a classification-only model")
