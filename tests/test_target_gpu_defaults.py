"""The GPU defaults (torch.compile + channels_last + bf16 autocast) run on CPU, through the
same device preparation a CUDA run uses (mfdsl.target.compile_for_target).

Two tiny models cover every built-in mixer (identity, random, pooling, sepconv,
attention, dwconv, global_filter), every norm (layernorm, modified_layernorm,
batchnorm, identity) and both heads. For each: a few training steps compiled with
fullgraph=True match eager fp32 losses within bf16 tolerance, and after warm-up (one
training step, one eval batch) nothing recompiles across a changing lr, train/eval
switches and a partial last eval batch.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._inductor.exc import InductorError
import torch.nn.functional as F

from mfdsl.api import build_model
from mfdsl.ir import ModelSpec, StageSpec, call, default_downsample
from mfdsl.target import compile_for_target
from mfdsl.target.prepare import TargetModel

from devices import DEVICES

pytestmark = pytest.mark.slow  # two models through inductor: ~1-2 min each on 2 cores


def _stage(width, mixers, norm, **kw) -> StageSpec:
    return StageSpec(depth=len(mixers), width=width, mixers=[call(*m) if isinstance(m, tuple)
                                                             else call(m) for m in mixers],
                     norm=call(norm), mlp_ratio=2.0, **kw)


SPECS = {
    # conv-like mixers, LayerNorm then BatchNorm, the MLP head, both scales
    "conv_attn_fft": ModelSpec(
        name="matrix_a", img_size=(64, 64), num_classes=5, head=call("mlp"),
        stages=[
            _stage(16, ["sepconv", "dwconv"], "layernorm", layer_scale=0.5),
            _stage(32, ["attention", "global_filter"], "batchnorm", res_scale=1.0,
                   downsample=default_downsample()),
        ]),
    # parameter-free and frozen mixers, modified LayerNorm then no norm, the linear head
    "id_random_pool": ModelSpec(
        name="matrix_b", img_size=(64, 64), num_classes=5, head=call("linear"),
        stages=[
            _stage(16, ["identity", "random"], "modified_layernorm", res_scale=1.0),
            _stage(32, ["pooling", "sepconv"], "identity", layer_scale=1.0,
                   downsample=default_downsample()),
        ]),
}


def test_matrix_covers_every_builtin() -> None:
    from mfdsl.registry import registry

    mixers, norms, heads = set(), set(), set()
    for spec in SPECS.values():
        heads.add(spec.head.name)
        for st in spec.stages:
            norms.add(st.norm.name)
            mixers.update(m.name for m in st.mixers)
    builtin = {kind: {n for n in registry.names(kind)
                      if registry.get(kind, n).factory.__module__.startswith("mfdsl.layers")}
               for kind in ("mixer", "norm", "head")}
    assert len(builtin["mixer"]) >= 7 and len(builtin["norm"]) >= 4
    assert builtin["mixer"] <= mixers, builtin["mixer"] - mixers
    assert builtin["norm"] <= norms, builtin["norm"] - norms
    assert builtin["head"] <= heads, builtin["head"] - heads


def _step(model, opt, lr, x, y) -> float:
    for g in opt.param_groups:
        g["lr"] = lr
    model.train()
    loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_compiled_channels_last_bf16_matches_eager_without_recompiles(name: str,
                                                                      device: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = build_model(SPECS[name], target=device).to(device)
    fast = compile_for_target(copy.deepcopy(eager), device, dtype="bf16", mode="default",
                              channels_last=True, fullgraph=True)
    assert isinstance(fast, TargetModel)
    lrs = [1e-3, 5e-4, 2e-4, 1e-4]  # a changing lr must not recompile (it is not in a graph)
    x = torch.randn(len(lrs), 4, 3, 64, 64, device=device)
    y = torch.randint(0, 5, (len(lrs), 4), device=device)
    opt_e = torch.optim.AdamW(eager.parameters())
    want = [_step(eager, opt_e, lr, x[i], y[i]) for i, lr in enumerate(lrs)]

    opt = torch.optim.AdamW(fast.parameters())
    # warm-up: one training step and one eval batch compile the two graphs
    try:
        got = [_step(fast, opt, lrs[0], x[0], y[0])]
    except InductorError as exc:
        if device == "cuda" and "PassManager::run failed" in str(exc):
            # Upstream: the bf16 persistent-reduction kernel of the modified LayerNorm
            # backward (16x16x16 map) fails in Triton's compiler (torch 2.11 + Triton 3.6,
            # H100); fp32, triton.persistent_reductions=False and the GroupNorm form all
            # compile. The CLI reports it as a compiler failure (test_runner_scenarios).
            pytest.xfail(f"Triton could not compile a kernel here: {str(exc).splitlines()[0]}")
        raise
    fast.eval()
    with torch.no_grad():
        fast(x[0])
    with torch._dynamo.config.patch(error_on_recompile=True):
        got.append(_step(fast, opt, lrs[1], x[1], y[1]))
        fast.eval()  # train -> eval -> train between steps, as the runner validates
        with torch.no_grad():
            full = fast(x[1])
            part = fast(x[1][:3])  # a last partial batch: padded, not recompiled
        got += [_step(fast, opt, lrs[i], x[i], y[i]) for i in (2, 3)]
    # bf16 autocast vs fp32 eager: the losses agree to bf16 precision
    # tolerance: bf16 (eps 7.8e-3) through a whole training step, against fp32
    assert got == pytest.approx(want, rel=3e-2, abs=3e-2), (got, want)
        # tolerance: bf16 autocast, a padded batch against the full one
    torch.testing.assert_close(part, full[:3], rtol=2e-2, atol=2e-2)
    # the state dict is the plain model's: checkpoints move between the two
    assert list(fast.state_dict()) == list(eager.state_dict())
    # channels_last converted conv weights only (global_filter's keeps its layout)
    for mod in fast.model.modules():
        if type(mod).__name__ == "GlobalFilter":
            assert mod.complex_weight.is_contiguous()
