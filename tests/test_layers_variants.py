"""Speed variants against their reference layers: same parameters and state dict, same
forward and gradients (float64, to rounding), and the per-target choice is well formed."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from mfdsl.api import build_model
from mfdsl.ir import ModelSpec, StageSpec, call, default_downsample
from mfdsl.layers.activations import StarReLU
from mfdsl.layers.block import Block, Mlp
from mfdsl.layers.depthwise import DepthwiseConv2d, depthwise_grad_weight
from mfdsl.layers.mixers import DepthwiseConv, Pooling, SepConv
from mfdsl.layers.norms import LayerNorm, ModifiedLayerNorm
from mfdsl.layers.pointwise import Pointwise
from mfdsl.layers.variants import VARIANTS, VARIANTS_FOR, select_variants, variants_in_use

from devices import DEVICES
from tolerances import EXACT_FLOAT64, assert_close

D = torch.float64


def _star(scale: float = -0.7, bias: float = 0.3):
    return lambda d: StarReLU(scale, bias)


# One layer per variant, with every parameter the variant rewrites off its init (a
# negative StarReLU scale, non-zero biases, non-unit scales).
LAYERS = {
    "pointwise_conv1x1": lambda: Pointwise(6, 10, bias=True),
    "mlp_starrelu_into_fc2": lambda: Mlp(6, 12, StarReLU(-0.7, 0.3), bias=True),
    "sepconv_starrelu_into_convs": lambda: SepConv(6, 2, 3, _star(), _star(1.3, -0.2),
                                                   bias=True),
    "modified_layernorm_groupnorm": lambda: ModifiedLayerNorm(6, bias=True),
    "modified_layernorm_groupnorm_op": lambda: ModifiedLayerNorm(6, bias=True),
    "starrelu_addcmul": lambda: StarReLU(-0.7, 0.3),
    "pooling_as_depthwise_conv": lambda: Pooling(3),
    "depthwise_backward_by_shifts": lambda: DepthwiseConv(6, 7, bias=True),
    "block_addcmul": lambda: Block(6, LayerNorm(6), Pooling(), LayerNorm(6),
                                   Mlp(6, 12, nn.GELU()), layer_scale=0.5, res_scale=1.5),
}


def test_every_variant_is_tested_and_every_choice_exists() -> None:
    assert set(LAYERS) == set(VARIANTS)
    for key, names in VARIANTS_FOR.items():
        assert set(names) <= set(VARIANTS), key
    assert VARIANTS_FOR[("reference", False)] == VARIANTS_FOR[("reference", True)] == ()


@pytest.mark.parametrize("device", DEVICES)
def test_reference_pooling_gradients_are_right_on_every_device(device: str) -> None:
    """The reference Pooling on ``device`` against the CPU in float64, through a whole
    training-mode model, the path users of build_model take with their own loop. (CUDA's
    channels-last avg_pool2d backward is wrong, pytorch#188344; Pooling avoids it.)"""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 6, dtype=D)
    grads = []
    for dev in ("cpu", device):
        xx = x.to(dev, copy=True).requires_grad_()
        Pooling(3).to(dev)(xx).backward(torch.arange(x.numel(), dtype=D, device=dev)
                                        .reshape(x.shape))
        grads.append(xx.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], **EXACT_FLOAT64)
    ref = build_model(tiny_poolformer(), target="reference").to(dtype=D)
    on_dev = copy.deepcopy(ref).to(device)
    img = torch.randn(2, 3, 32, 32, dtype=D)
    ref(img).sum().backward()
    on_dev(img.to(device)).sum().backward()
    for (n, pr), (_, pd) in zip(ref.named_parameters(), on_dev.named_parameters()):
        # not a rewrite but two devices' kernels, float64: a 2x32x32 reduction per weight
        # gradient, ~16 layers
        assert_close(pd.grad.cpu(), pr.grad, k=2 * 32 * 32, steps=16, msg=n)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_variant_matches_reference_float64(name: str, device: str) -> None:
    """The variant on ``device`` against the reference on the CPU (the ground truth)."""
    torch.manual_seed(0)
    ref = LAYERS[name]().to(dtype=D)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fast = copy.deepcopy(ref).to(device)
    used = select_variants(fast, [name])
    assert used, f"{name} did not apply to its test layer"
    assert any(type(m) is VARIANTS[name].fast for m in fast.modules())
    # same state dict: keys, shapes, values
    sr, sf = ref.state_dict(), fast.state_dict()
    assert list(sr) == list(sf)
    for k in sr:
        assert torch.equal(sr[k], sf[k].cpu()), k
    x = torch.randn(2, 5, 4, 6, dtype=D) if name != "starrelu_addcmul" else \
        torch.randn(2, 5, 4, 12, dtype=D)
    xr, xf = x.clone().requires_grad_(), x.to(device, copy=True).requires_grad_()
    yr, yf = ref(xr), fast(xf)
    torch.testing.assert_close(yf.cpu(), yr, **EXACT_FLOAT64)
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g.to(device))
    torch.testing.assert_close(xf.grad.cpu(), xr.grad, **EXACT_FLOAT64)
    for (n, pr), (_, pf) in zip(ref.named_parameters(), fast.named_parameters()):
        if pr.requires_grad:
            torch.testing.assert_close(pf.grad.cpu(), pr.grad, **EXACT_FLOAT64, msg=n)
    # under no_grad too (the MLP variant works in place there)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.to(device)).cpu(), ref(x), **EXACT_FLOAT64)
    # and back to the reference class
    select_variants(fast, ())
    assert all(type(a) is type(b) for a, b in zip(ref.modules(), fast.modules()))


@pytest.mark.parametrize("kernel", [5, 7, 9])
def test_depthwise_shift_backward_inside_the_fused_sepconv(kernel: int) -> None:
    """The fused SepConv calls the depthwise layer's ``conv``: with both variants, eager and
    compiled whole (fullgraph), forward and every gradient equal the reference's (float64)."""
    torch.manual_seed(0)
    ref = SepConv(6, 2, kernel, _star(), _star(1.3, -0.2), bias=True).to(dtype=D)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 9, 7, 6, dtype=D)
    g = torch.randn(2, 9, 7, 6, dtype=D)

    def grads(model: nn.Module) -> list:
        xx = x.clone().requires_grad_()
        y = model(xx)
        y.backward(g)
        return [y.detach(), xx.grad] + [p.grad for p in model.parameters()]

    want = grads(ref)
    fast = copy.deepcopy(ref)
    fast.zero_grad()
    used = select_variants(fast, ["sepconv_starrelu_into_convs", "depthwise_backward_by_shifts"])
    assert {u.split(": ")[1] for u in used} == {"sepconv_starrelu_into_convs",
                                                 "depthwise_backward_by_shifts"}
    for got, exp in zip(grads(fast), want):
        torch.testing.assert_close(got, exp, **EXACT_FLOAT64)
    fast.zero_grad()
    for got, exp in zip(grads(torch.compile(fast, fullgraph=True)), want):
        torch.testing.assert_close(got, exp, **EXACT_FLOAT64)


def test_depthwise_grad_weight_by_shifts_is_the_convolution_weight_gradient() -> None:
    """Against ATen's convolution_backward on a non-square map with a channels-last input,
    and in float32 at least for a bf16 input."""
    x = torch.randn(3, 4, 6, 11, dtype=D).contiguous(memory_format=torch.channels_last)
    g = torch.randn(3, 4, 6, 11, dtype=D)
    w = torch.randn(4, 1, 5, 5, dtype=D)
    want = torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [2, 2], [1, 1], False,
                                               [0, 0], 4, [False, True, False])[1]
    torch.testing.assert_close(depthwise_grad_weight(x, g, 5), want, **EXACT_FLOAT64)
    assert depthwise_grad_weight(x.bfloat16(), g.bfloat16(), 5).dtype == torch.float32


@pytest.mark.parametrize("make,applies", [
    (lambda: DepthwiseConv2d(8, 7), True),
    (lambda: DepthwiseConv2d(8, 5, bias=False), True),
    (lambda: DepthwiseConv2d(8, 3), False),  # oneDNN's 3x3 weight gradient is faster
    (lambda: DepthwiseConv2d(8, 11), False),  # k * k sums too slow to compile
    (lambda: _strided_depthwise(), False),
])
def test_depthwise_shift_backward_applies_only_where_its_formula_holds(make, applies) -> None:
    m = make()
    assert bool(select_variants(m, ["depthwise_backward_by_shifts"])) is applies


def _strided_depthwise() -> nn.Module:
    m = DepthwiseConv2d(8, 7)
    m.stride = (2, 2)
    return m


def tiny_convformer() -> ModelSpec:
    stages = [
        StageSpec(depth=1, width=16, mixers=[call("sepconv", kernel=3)], mlp_ratio=2.0),
        StageSpec(depth=1, width=32, mixers=[call("sepconv", kernel=3)], mlp_ratio=2.0,
                  res_scale=1.0, downsample=default_downsample()),
    ]
    return ModelSpec(name="tiny_convformer", img_size=(32, 32), num_classes=5,
                     stages=stages, head=call("mlp"))


def tiny_poolformer() -> ModelSpec:
    return ModelSpec(name="tiny_poolformer", img_size=(32, 32), num_classes=5,
                     stages=[StageSpec(depth=1, width=16, mixers=[call("pooling")])],
                     head=call("linear"))


def test_build_targets_pick_their_variants() -> None:
    ref = build_model(tiny_convformer(), target="reference")
    assert variants_in_use(ref) == {}
    cpu = build_model(tiny_convformer(), target="cpu")
    assert set(variants_in_use(cpu)) == {
        n for n in VARIANTS_FOR[("cpu", False)]
        if any(isinstance(m, VARIANTS[n].reference) and VARIANTS[n].applies(m)
               for m in ref.modules())}
    assert list(ref.state_dict()) == list(cpu.state_dict())


def _aten_ops(model: nn.Module, device: str) -> list:
    ex = torch.randn(2, 3, 32, 32, device=device)
    ep = torch.export.export(model.to(device).eval(), (ex,))
    return [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]


def test_reference_export_graph_is_device_independent() -> None:
    """The reference layers have no device branch: exported on two devices (the meta
    device stands in for CUDA here), the graphs are the same op for op. The CPU eager
    variants do differ (1x1 convs), which is why export uses the reference."""
    torch.manual_seed(0)
    model = build_model(tiny_convformer(), target="reference")
    ops_cpu = _aten_ops(copy.deepcopy(model), "cpu")
    ops_meta = _aten_ops(copy.deepcopy(model), "meta")
    assert ops_cpu == ops_meta
    cpu_fast = build_model(tiny_convformer(), target="cpu")
    assert _aten_ops(cpu_fast, "cpu") != ops_cpu


@pytest.mark.parametrize("bias,shape", [(False, (3, 6, 5, 8)), (True, (3, 6, 5, 8)),
                                        (True, (1, 1, 1, 8))])
def test_opaque_groupnorm_op_compiles_whole_and_matches(bias: bool, shape: tuple) -> None:
    """The custom-op GroupNorm inside a compiled graph (fullgraph: inductor calls it as
    it is): same values and gradients as the reference eager, on a channels-last view,
    without and with a bias, and on a 1x1 map of one sample (strides that fit either
    memory format)."""
    torch.manual_seed(0)
    ref = ModifiedLayerNorm(8, bias=bias)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fast = copy.deepcopy(ref)
    select_variants(fast, ["modified_layernorm_groupnorm_op"])
    fn = torch.compile(lambda t: fast(t * 2.0) + 1.0, fullgraph=True)
    x = torch.randn(*shape)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr * 2.0) + 1.0, fn(xf)
    k = shape[1] * shape[2] * shape[3]  # the norm's reduction: C x H x W, mean then variance
    assert_close(yf, yr, k=k, steps=2)
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    assert_close(xf.grad, xr.grad, k=k, steps=4)
    for (n, pr), (_, pf) in zip(ref.named_parameters(), fast.named_parameters()):
        assert_close(pf.grad, pr.grad, k=k * shape[0], steps=4, msg=n)
