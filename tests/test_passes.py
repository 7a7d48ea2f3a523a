"""Inference folding passes: each pass alone and all together keep the outputs (float64
exactly up to rounding, float32 within tolerance) and remove the parameters they should."""
from __future__ import annotations

import copy
from typing import Callable, List

import pytest
import torch
import torch.nn as nn

from mfdsl.api import build_model
from mfdsl.ir import Call, DownsampleSpec, ModelSpec, StageSpec, call, default_downsample
from mfdsl.layers.activations import StarReLU
from mfdsl.layers.block import Block, Scale
from mfdsl.layers.mixers import SepConv
from mfdsl.layers.norms import LayerNorm, ModifiedLayerNorm
from tolerances import EXACT_FLOAT64, rel_max_diff, rel_tolerance, tolerance
from mfdsl.passes.fold import (
    ShiftedSquaredReLU, fold_for_inference, fold_layer_scale, fold_norm_affine,
    fold_res_scale, fold_starrelu,
)

LN = call("layernorm", bias=False, eps=1e-6)
LN_BIAS = call("layernorm", bias=True, eps=1e-6)
MLN = call("modified_layernorm", eps=1e-6)
MLN_BIAS = call("modified_layernorm", eps=1e-6, bias=True)


def small_spec(mixers: List[Call], head: Call, norm: Call = LN, *, layer_scale=1e-2,
               res_scale=1.0, mlp_act: Call = call("starrelu")) -> ModelSpec:
    """Two stages at 32x32 input (8x8 then 4x4 tokens), widths 16 / 32."""
    stages = [
        StageSpec(depth=len(mixers), width=16, mixers=mixers, norm=norm, mlp_ratio=2.0,
                  mlp_act=mlp_act, layer_scale=layer_scale, res_scale=res_scale),
        StageSpec(depth=len(mixers), width=32, mixers=mixers, norm=norm, mlp_ratio=2.0,
                  mlp_act=mlp_act, layer_scale=layer_scale, res_scale=res_scale,
                  downsample=default_downsample()),
    ]
    return ModelSpec(name="fold_test", img_size=(32, 32), num_classes=10, stages=stages,
                     head=head)


# For float32 comparisons: the longest reduction is the MLP's hidden width (2 x 32), and a
# forward chains ~16 products (stem, two stages of 1-3 blocks, downsample, head).
K, STEPS = 64, 16

SEPCONV = call("sepconv", kernel=3)
SEPCONV_ACT2 = call("sepconv", kernel=3, act2="starrelu", bias=True)
ATTN = call("attention", head_dim=8, qkv_bias=True, proj_bias=True)
MLP_HEAD = call("mlp", norm=LN_BIAS)

SPECS = {
    "sepconv_mlphead": lambda: small_spec([SEPCONV], MLP_HEAD),
    "sepconv_act2": lambda: small_spec([SEPCONV_ACT2], call("linear")),
    "attention_linear": lambda: small_spec([ATTN], call("linear")),
    "pool_mln": lambda: small_spec([call("pooling")], call("linear"), MLN_BIAS),
    "random_identity": lambda: small_spec([call("random"), call("identity")],
                                          call("linear"), MLN),
    "mixed_no_scales": lambda: small_spec([SEPCONV, ATTN, call("pooling")], MLP_HEAD,
                                          layer_scale=None, res_scale=None),
    "dwconv_gelu": lambda: small_spec([call("dwconv", kernel=3)], call("linear"),
                                      mlp_act=call("gelu")),
}


def randomised(spec: ModelSpec, dtype=torch.float64, seed: int = 0) -> nn.Module:
    """The lowered model with every small parameter (scales, norm affines, StarReLU s/b)
    moved away from its init, so that a fold that ignores one of them fails."""
    torch.manual_seed(seed)
    model = build_model(spec, check_sizes=False).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 and p.requires_grad:
                p.copy_(p + 0.3 * torch.randn_like(p))
        # a negative StarReLU scale must fold too
        for m in model.modules():
            if isinstance(m, SepConv) and isinstance(m.act1, StarReLU):
                m.act1.scale.fill_(-0.7)
                break
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_pass(spec_name: str, fold: Callable[[nn.Module], nn.Module]) -> tuple:
    spec = SPECS[spec_name]()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    model = randomised(spec)
    with torch.no_grad():
        ref = model(x)
    folded = fold(copy.deepcopy(model))
    with torch.no_grad():
        out = folded(x)
    err = rel_max_diff(out, ref)
    assert err < EXACT_FLOAT64["rtol"], f"{spec_name}: float64 fold changed the output ({err:.2e})"
    # float32: the same fold within float tolerance
    m32 = randomised(spec, torch.float32)
    with torch.no_grad():
        ref32 = m32(x.float())
        out32 = fold(copy.deepcopy(m32))(x.float())
    err32 = rel_max_diff(out32, ref32)
    assert err32 < rel_tolerance(torch.float32, K, STEPS), f"{spec_name}: float32 fold {err32:.2e}"
    return model, folded


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("fold", [fold_starrelu, fold_layer_scale, fold_res_scale,
                                  fold_norm_affine, fold_for_inference],
                         ids=lambda f: f.__name__)
def test_fold_keeps_outputs(spec_name: str, fold) -> None:
    check_pass(spec_name, fold)


def test_starrelu_counts_mlp_and_sepconv() -> None:
    model, folded = check_pass("sepconv_mlphead", fold_starrelu)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    # Per block: MLP StarReLU (s, b) -> fc2 gains a bias of `dim` (b != 0);
    # sepconv act1: scale folds, b stays (zero padding) -> 1 scalar removed.
    expect = n_params(model)
    for blk in blocks:
        dim = blk.mlp.fc2.out_features
        expect += -2 + dim - 1
    assert n_params(folded) == expect
    acts = [m for m in folded.modules() if isinstance(m, (StarReLU,))]
    assert acts == []
    assert sum(isinstance(m, ShiftedSquaredReLU) for m in folded.modules()) == len(blocks)


def test_starrelu_zero_bias_needs_no_new_bias() -> None:
    # StarReLU b == 0 at init
    model = build_model(SPECS["sepconv_mlphead"](), check_sizes=False).double().eval()
    before = n_params(model)
    n_act = sum(isinstance(m, StarReLU) for m in model.modules())
    folded = fold_starrelu(copy.deepcopy(model))
    assert n_params(folded) == before - 2 * n_act
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), **EXACT_FLOAT64)


def test_starrelu_into_unpadded_conv_folds_bias() -> None:
    spec = small_spec([call("sepconv", kernel=1)], call("linear"), layer_scale=None,
                      res_scale=None)
    model, folded = check_pass_spec(spec, fold_starrelu)
    assert not any(isinstance(m, ShiftedSquaredReLU) for m in folded.modules())


def check_pass_spec(spec: ModelSpec, fold) -> tuple:
    model = randomised(spec)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    folded = fold(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), **EXACT_FLOAT64)
    return model, folded


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_layer_scale_all_removed(spec_name: str) -> None:
    model, folded = check_pass(spec_name, fold_layer_scale)
    n_ls = sum(m.scale.numel() for b in model.modules() if isinstance(b, Block)
               for m in (b.layer_scale1, b.layer_scale2) if isinstance(m, Scale))
    # every built-in mixer either ends in a linear layer or commutes with the scale
    assert n_params(folded) == n_params(model) - n_ls
    assert not any(isinstance(b.layer_scale1, Scale) or isinstance(b.layer_scale2, Scale)
                   for b in folded.modules() if isinstance(b, Block))


def test_res_scale_only_ones_fold() -> None:
    spec = SPECS["attention_linear"]()
    # res_scale init 1.0 everywhere
    model = build_model(spec, check_sizes=False).double().eval()
    folded = fold_res_scale(copy.deepcopy(model))
    n_rs = sum(m.scale.numel() for b in model.modules() if isinstance(b, Block)
               for m in (b.res_scale1, b.res_scale2) if isinstance(m, Scale))
    assert n_rs > 0 and n_params(folded) == n_params(model) - n_rs
    # a trained (non-one) res_scale is not foldable: kept
    model, folded = check_pass("attention_linear", fold_res_scale)
    assert n_params(folded) == n_params(model)


def test_norm_affine_counts() -> None:
    model, folded = check_pass("attention_linear", fold_norm_affine)
    norms = [m for m in model.modules() if isinstance(m, (LayerNorm, ModifiedLayerNorm))]
    left = [m for m in folded.modules() if isinstance(m, (LayerNorm, ModifiedLayerNorm))]
    # only the stem's post-norm is left (it feeds a residual stream, not a linear)
    assert len(left) == 1
    assert n_params(folded) < n_params(model)
    removed = sum(p.numel() for m in norms for p in m.parameters()) - \
        sum(p.numel() for m in left for p in m.parameters())
    # the head norm has a bias; the head fc already had one, so nothing is gained there;
    # attention.qkv already has a bias too: only norm parameters disappear
    assert n_params(model) - n_params(folded) == removed


def test_fold_for_inference_refuses_training() -> None:
    model = fold_for_inference(randomised(SPECS["pool_mln"]()))
    assert model.folded["params_after"] < model.folded["params_before"]
    model.train()
    with pytest.raises(RuntimeError, match="inference"):
        model(torch.randn(1, 3, 32, 32, dtype=torch.float64))


def test_fold_full_caformer_like_float32() -> None:
    """All passes on a model shaped like caformer (sepconv, attention, MLP head)."""
    spec = small_spec([SEPCONV, ATTN], MLP_HEAD, layer_scale=None)
    model = randomised(spec, torch.float32)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = fold_for_inference(copy.deepcopy(model))(x)
    torch.testing.assert_close(out, ref, **tolerance(torch.float32, K, ref.abs().max(), STEPS))


class _PluginMixer(nn.Module):
    """A mixer that knows nothing of the folding protocol."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * self.w


class _PluginMixerWithProtocol(_PluginMixer):
    """The same, declaring the one linear map its output goes through."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.out = nn.Linear(dim, dim, bias=False).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(super().forward(x))

    def last_linear(self) -> nn.Module:
        return self.out


def test_unknown_mixer_is_reported_not_silently_skipped() -> None:
    model = randomised(SPECS["attention_linear"]())
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    blocks[0].token_mixer = _PluginMixer(16)
    blocks[1].token_mixer = _PluginMixerWithProtocol(32)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        folded = fold_for_inference(copy.deepcopy(model))
        torch.testing.assert_close(folded(x), ref, **EXACT_FLOAT64)
    kept = folded.folded["kept"]
    assert any("layer_scale1" in k and "_PluginMixer " in k for k in kept), kept
    fb = [m for m in folded.modules() if isinstance(m, Block)]
    assert isinstance(fb[0].layer_scale1, Scale)  # kept, and said so
    assert not isinstance(fb[1].layer_scale1, Scale)  # folded through last_linear()
    # the stem's post-norm feeds the residual stream: reported as kept too
    assert any(k.startswith("stem.post_norm") for k in kept), kept


def test_compile_for_target_summary_lists_what_fold_kept() -> None:
    from mfdsl.target import compile_for_target

    model = randomised(SPECS["attention_linear"]())
    [m for m in model.modules() if isinstance(m, Block)][0].token_mixer = _PluginMixer(16)
    out = compile_for_target(model, "cpu", mode="eager", fold=True)
    assert "kept:" in out.summary["applied"][0] and "_PluginMixer" in out.summary["applied"][0]
