"""Low-rank adapters' dropout: LoRA's formula on every adaptable layer kind, and the speed
variants stepping aside for it."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mfdsl.ir import with_overrides
from mfdsl.layers.adapters import (AdapterInputDropout, LowRankDelta, add_adapters,
                                   merge_adapters)
from mfdsl.layers.pointwise import Conv1x1Pointwise, Pointwise
from mfdsl.layers.variants import select_variants, variants_in_use
from mfdsl.runner.finetune import apply_finetune, describe

from conftest import train_spec
from test_ckptformats_weights import tiny
from tolerances import assert_close

P = 0.3


def _layer(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(6, 5).double()
    if kind == "pointwise":
        return Pointwise(6, 5).double()
    if kind == "pointwise_conv1x1":
        m = Pointwise(6, 5).double()
        m.__class__ = Conv1x1Pointwise
        return m
    return nn.Conv2d(6, 5, 1).double()


def _input(kind: str) -> torch.Tensor:
    shape = (2, 6, 3, 4) if kind == "conv1x1" else (2, 3, 4, 6)  # channels on dim 1 / last
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _lora_reference(kind: str, x: torch.Tensor, w0: torch.Tensor, bias: torch.Tensor,
                    a: torch.Tensor, b: torch.Tensor, scale: float,
                    train: bool) -> torch.Tensor:
    """y = W0 x + bias + scale * B A dropout(x), written out (peft's LoRA Linear)."""
    xd = F.dropout(x, P, train)
    if kind == "conv1x1":
        w0, xs, xds = w0.flatten(1), x.movedim(1, -1), xd.movedim(1, -1)
        return (xs @ w0.T + bias + scale * (xds @ a.T @ b.T)).movedim(-1, 1)
    return x @ w0.T + bias + scale * (xd @ a.T @ b.T)


@pytest.mark.parametrize("kind", ["linear", "pointwise", "pointwise_conv1x1", "conv1x1"])
def test_adapter_dropout_is_loras_dropout_on_the_adapter_input(kind: str) -> None:
    m = _layer(kind)
    w0 = m.weight.detach().clone()
    add_adapters(m, [""], rank=3, alpha=6.0, dropout=P)
    delta = m.parametrizations["weight"][0]
    with torch.no_grad():
        delta.lora_b.normal_(0, 0.5)  # B starts at zero: make the adapter's term count
    x = _input(kind)
    a = delta.lora_a.detach().clone().requires_grad_(True)
    b = delta.lora_b.detach().clone().requires_grad_(True)
    for train in (True, False):
        m.train(train)
        torch.manual_seed(7)
        got = m(x)
        torch.manual_seed(7)
        want = _lora_reference(kind, x, w0, m.bias.detach(), a, b, delta.scale, train)
        assert_close(got, want, k=6, steps=3)
        if train:  # the dropout changes the output: the hook is not a no-op
            assert not torch.allclose(got, _lora_reference(kind, x, w0, m.bias.detach(), a,
                                                           b, delta.scale, False))
            g = torch.randn_like(got)
            ga, gb = torch.autograd.grad(got, (delta.lora_a, delta.lora_b), g)
            wa, wb = torch.autograd.grad(want, (a, b), g)
            assert_close(ga, wa, k=6, steps=3)
            assert_close(gb, wb, k=6, steps=3)


def test_no_dropout_adds_no_hook_and_merging_removes_it() -> None:
    m = _layer("linear")
    add_adapters(m, [""], rank=2, alpha=2.0)
    assert not m._forward_hooks
    m = _layer("linear")
    add_adapters(m, [""], rank=2, alpha=2.0, dropout=0.1)
    assert any(isinstance(h, AdapterInputDropout) for h in m._forward_hooks.values())
    merge_adapters(m)
    assert not m._forward_hooks and not any(isinstance(x, LowRankDelta) for x in m.modules())
    with pytest.raises(ValueError, match=r"not in \[0, 1\)"):
        add_adapters(_layer("linear"), [""], rank=2, alpha=2.0, dropout=1.0)


def test_speed_variants_that_skip_an_adapted_layers_forward_step_aside() -> None:
    """The fused MLP and SepConv variants run fc2 / pwconv1 with other weights, without
    calling them: with adapter dropout they would drop nothing. In training, the model
    lowered for the CPU (variants) must then give what the reference layers give."""
    fast = tiny("caformer", seed=3)
    assert {"mlp_starrelu_into_fc2", "sepconv_starrelu_into_convs"} <= set(variants_in_use(fast))
    ref = copy.deepcopy(fast)
    select_variants(ref, ())
    recipe = with_overrides(train_spec().recipe, adapters="mixer mlp", adapter_dropout=0.2)
    records = []
    for m in (fast, ref):
        torch.manual_seed(11)  # the adapters' A
        records.append(apply_finetune(m, recipe))
        with torch.no_grad():
            torch.manual_seed(12)
            for d in m.modules():
                if isinstance(d, LowRankDelta):
                    d.lora_b.normal_(0, 0.2)
    in_use = variants_in_use(fast)
    assert "mlp_starrelu_into_fc2" not in in_use and "sepconv_starrelu_into_convs" not in in_use
    assert "starrelu_addcmul" in in_use  # the others stay
    # and choosing the variants again does not bring them back
    select_variants(fast, ("mlp_starrelu_into_fc2", "sepconv_starrelu_into_convs"))
    assert not variants_in_use(fast).keys() & {"mlp_starrelu_into_fc2",
                                               "sepconv_starrelu_into_convs"}
    assert records[0]["adapters"]["dropout"] == 0.2
    assert "dropout 0.2" in describe(records[0])
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    outs = []
    for m in (fast, ref):
        m.train()
        torch.manual_seed(5)
        outs.append(m(x))
    assert_close(outs[0], outs[1], k=4 * 64, steps=12)
    # the same models without dropout differ from these outputs: the masks mattered
    ref.eval()
    with torch.no_grad():
        # tolerance: a floor for "different", far above the 1e-6 float32 noise of equality
        assert not torch.allclose(ref(x), outs[1], atol=1e-3)
