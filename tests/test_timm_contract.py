"""timm's model contract on models built from specs (after timm's tests/test_models.py:
default cfgs, classifier reset, pre-logits, forward_intermediates, pruning, checkpointing),
and, for the families timm ports, every method's outputs against timm's under the same
weights."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Tuple

import pytest
import torch
import torch.nn as nn

from mfdsl.api import build_model
from mfdsl.ckptformats.weights import load_checkpoint
from mfdsl.ir import RecipeSpec, StageSpec, call, default_downsample, with_overrides

import specs_py
from tolerances import EXACT_FLOAT64, rel_max_diff as rel, rel_tolerance

timm = pytest.importorskip("timm")
from timm.models import group_parameters  # noqa: E402
from timm.models import metaformer as tm  # noqa: E402
from timm.optim import param_groups_layer_decay  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
# The small caformer in fp32 (tests/tolerances.py): the longest reduction is the last
# MLP's hidden width (4 x 128), a forward chains ~26 products; a backward twice that, its
# weight gradients summing over B x H x W = 2 x 16 x 16 at most.
K, STEPS = 512, 26
TOL = rel_tolerance(torch.float32, K, STEPS)
GRAD_TOL = rel_tolerance(torch.float32, K, 2 * STEPS)


@torch.no_grad()
def perturb_(model: nn.Module, seed: int) -> None:
    """Every parameter off its init (norm weights, scales, biases included)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() > 1 else 0.1))


def image(model: nn.Module, batch: int = 2, side: int = 0, seed: int = 0) -> torch.Tensor:
    side = side or model.spec.img_size[0]
    return torch.randn(batch, model.spec.in_chans, side, side,
                       generator=torch.Generator().manual_seed(seed))


# --- the contract, on any spec -----------------------------------------------------------

@torch.no_grad()
def check_contract(model: nn.Module, x: torch.Tensor) -> None:
    """What timm's contract tests ask of every model, on ``model`` (eval mode)."""
    model.eval()
    b, _, h, w = x.shape
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes",
                "first_conv", "classifier"):
        assert key in cfg, key
    assert cfg["first_conv"] + ".weight" in model.state_dict()
    # timm's cfg names the Linear that gives the class scores, inside the classifier
    scores = model.get_submodule(cfg["classifier"])
    assert isinstance(scores, nn.Linear) and scores.out_features == model.num_classes
    assert any(scores is m for m in model.get_classifier().modules())
    assert cfg["input_size"][0] == model.in_chans

    logits = model(x)
    assert logits.shape == (b, model.num_classes)
    feats = model.forward_features(x)
    assert feats.shape[:2] == (b, model.num_features)
    torch.testing.assert_close(model.forward_head(feats), logits)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (b, model.head_hidden_size)

    # feature_info: reductions never shrink; forward_intermediates follows it
    info = model.feature_info
    assert len(info) == len(model.stages)
    assert all(a["reduction"] <= c["reduction"] for a, c in zip(info, info[1:]))
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, feats)
    assert len(inter) == len(info)
    for t, fi in zip(inter, info):
        assert t.shape == (b, fi["num_chs"], h // fi["reduction"], w // fi["reduction"])
    torch.testing.assert_close(inter[-1], feats)
    last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [t.shape for t in last2] == [t.shape for t in inter[-2:]]
    first = model.forward_intermediates(x, indices=[0], stop_early=True)
    torch.testing.assert_close(first[0], inter[0])  # stopped after stage 0
    torch.testing.assert_close(first[1][0], inter[0])
    nhwc = model.forward_intermediates(x, indices=[-1], output_fmt="NHWC",
                                       intermediates_only=True)
    torch.testing.assert_close(nhwc[0].permute(0, 3, 1, 2), inter[-1])
    for bad in (len(info), -len(info) - 1):
        with pytest.raises(ValueError, match="out of range"):
            model.forward_intermediates(x, indices=[bad])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")

    # pruning keeps what was asked for and drops the head
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([0]) == [0]
    assert len(pruned.stages) == 1 and pruned.num_features == info[0]["num_chs"]
    torch.testing.assert_close(pruned.forward_intermediates(x, [0], intermediates_only=True)[0],
                               inter[0])
    assert pruned(x).shape == inter[0].shape  # no pooling, no norm, no classifier left

    # classifier reset, timm's semantics
    m = copy.deepcopy(model)
    m.reset_classifier(0)
    assert m.num_classes == 0 and isinstance(m.get_classifier(), nn.Identity)
    torch.testing.assert_close(m(x), pre)
    m.reset_classifier(0, "")
    out = m(x)
    assert out.shape == feats.shape
    torch.testing.assert_close(out.mean((2, 3)).shape, pre.shape)
    m.reset_classifier(7, "avg")
    assert m(x).shape == (b, 7) and m.num_classes == 7
    assert type(m.get_classifier()) is type(model.get_classifier())
    m.reset_classifier(3, "max")
    assert m(x).shape == (b, 3)
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(3, "catavgmax")
    with pytest.raises(ValueError, match="num_classes"):
        m.reset_classifier(-1)

    # layer-wise lr decay groups: stem first, blocks in order, head last, all covered
    names = [n for n, _ in model.named_parameters()]
    for coarse in (False, True):
        layer = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
        assert set(layer) == set(names)
        # in parameter order, but a dense output's norm sits after its stage's blocks
        ids = [layer[n] for n in names if not n.startswith("dense.")]
        assert ids == sorted(ids) and ids[0] == 0
        for n in (n for n in names if n.startswith("dense.stage")):
            stage = n.split(".")[1][len("stage"):]
            own = [layer[m] for m in names if m.startswith(f"stages.{stage}.")]
            later = [layer[m] for m in names if m.startswith(f"stages.{int(stage) + 1}.")]
            assert max(own) <= layer[n] and all(layer[n] <= x for x in later), n
        assert all(layer[n] == ids[-1] for n in names if n.startswith("head."))
        assert all(layer[n] < ids[-1] for n in names if not n.startswith("head."))
    stage_ids = [group_parameters(model, model.group_matcher(True), reverse=True)
                 [f"stages.{i}.blocks.0.norm1.weight"] for i in range(len(model.stages))]
    assert stage_ids == list(range(1, len(model.stages) + 1))
    nwd = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert nwd and nwd <= set(params) and all(params[n].ndim <= 1 for n in nwd)
    assert all(n in nwd for n, p in params.items() if p.ndim <= 1)


def small_caformer_spec(depths=(1, 1, 2, 1), dims=(32, 64, 96, 128)):
    return specs_py.metaformer_spec(
        "caformer_small", depths, dims,
        [call("sepconv"), call("sepconv"), call("attention"), call("attention")],
        specs_py.CHANNEL_LN, specs_py.MLP_HEAD_TIMM, img_size=64)


def three_stage_with_a_flat_stage():
    """Non-4-stage, and a stage without downsampling (the same reduction twice)."""
    stages = [
        StageSpec(depth=1, width=16, mixers=[call("pooling")], norm=specs_py.MODIFIED_LN),
        StageSpec(depth=1, width=16, mixers=[call("sepconv")], norm=specs_py.CHANNEL_LN,
                  downsample=None),
        StageSpec(depth=2, width=24, mixers=[call("attention", head_dim=8)],
                  norm=specs_py.CHANNEL_LN, downsample=default_downsample()),
    ]
    from mfdsl.ir import ModelSpec

    return ModelSpec(name="flat3", num_classes=5, img_size=(32, 32), stages=stages,
                     head=call("linear"))


FAST_SPECS = ["demo_tiny.mf", "hybrid_tiny_attn.mf"]


@pytest.mark.parametrize("source", FAST_SPECS)
def test_contract_on_small_zoo_specs(source: str) -> None:
    torch.manual_seed(0)
    model = build_model(SPECS / source)
    check_contract(model, image(model))


@pytest.mark.parametrize("make", [small_caformer_spec, three_stage_with_a_flat_stage],
                         ids=["caformer_small", "flat3"])
def test_contract_on_python_specs(make) -> None:
    torch.manual_seed(0)
    model = build_model(make())
    if model.spec.name == "flat3":
        assert [f["reduction"] for f in model.feature_info] == [4, 4, 8]
    check_contract(model, image(model))


# The ImageNet-21K specs build their model's architecture (tests/test_zoo_in21k.py): left out.
ZOO = sorted(p.name for p in SPECS.glob("*.mf") if "_in21" not in p.name)


@pytest.mark.slow
@pytest.mark.parametrize("source", [s for s in ZOO if s not in FAST_SPECS])
def test_contract_on_the_zoo(source: str) -> None:
    torch.manual_seed(0)
    model = build_model(SPECS / source)
    # 64 px, except where a mixer is sized by the spec's input (random mixing, FFT filters)
    sized = {"random", "global_filter"}
    fixed = any(m.name in sized for st in model.spec.stages for m in st.mixers)
    side = 0 if fixed else 64
    check_contract(model, image(model, batch=1, side=side))


# --- the same outputs as timm's ----------------------------------------------------------

def small_timm_caformer() -> nn.Module:
    return tm.MetaFormer(
        depths=(1, 1, 2, 1), dims=(32, 64, 96, 128),
        token_mixers=[tm.SepConv, tm.SepConv, tm.Attention, tm.Attention],
        norm_layers=[tm.LayerNorm2dNoBias] * 2 + [tm.LayerNormNoBias] * 2)


@pytest.fixture(scope="module")
def twins() -> Tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    ref = small_timm_caformer().eval()
    perturb_(ref, 1)
    model = build_model(small_caformer_spec()).eval()
    report = load_checkpoint(model, ref.state_dict())
    assert report.ok and not report.missing
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    return ref, model, x


@torch.no_grad()
@pytest.mark.parametrize("timm_name,spec_file", [
    ("caformer_s18", "caformer_s18.mf"),            # MLP head: head.fc.fc2
    ("poolformerv2_s12", "poolformerv2_s12.mf"),    # Linear head: head.fc
])
def test_pretrained_cfg_names_the_layers_timms_does(timm_name: str, spec_file: str) -> None:
    """first_conv and classifier as timm's own cfg for the same model, read off the built
    model (timm loads pretrained weights by these names)."""
    from mfdsl.pipeline import load_spec

    with torch.device("meta"):
        model = build_model(load_spec(SPECS / spec_file), check_sizes=False)
    want = timm.models.get_pretrained_cfg(timm_name)
    assert model.pretrained_cfg["classifier"] == want.classifier
    assert model.pretrained_cfg["first_conv"] == want.first_conv
    assert model.pretrained_cfg["pool_size"] == want.pool_size


def test_every_method_matches_timm(twins) -> None:
    ref, model, x = twins
    assert ref(x).std(-1).min() > 1e-2  # outputs that could tell a wrong method apart
    assert model.feature_info == [dict(f) for f in ref.feature_info]
    assert (model.num_features, model.head_hidden_size, model.num_classes) == \
        (ref.num_features, ref.head_hidden_size, ref.num_classes)
    f_ref, f = ref.forward_features(x), model.forward_features(x)
    assert f.shape == f_ref.shape and rel(f, f_ref) < TOL
    for pre in (False, True):
        assert rel(model.forward_head(f, pre_logits=pre),
                   ref.forward_head(f_ref, pre_logits=pre)) < TOL
    for kw in (dict(), dict(indices=2), dict(indices=[0, -1], stop_early=True),
               dict(indices=[1], stop_early=True, norm=True)):
        final_ref, inter_ref = ref.forward_intermediates(x, **kw)
        final, inter = model.forward_intermediates(x, **kw)
        assert rel(final, final_ref) < TOL and len(inter) == len(inter_ref)
        assert all(a.shape == b.shape and rel(a, b) < TOL for a, b in zip(inter, inter_ref))
    # the classifier module holds the same weights
    torch.testing.assert_close(model.get_classifier().fc2.weight, ref.get_classifier().fc2.weight)


@torch.no_grad()
def test_reset_classifier_and_prune_match_timm(twins) -> None:
    ref, model, x = copy.deepcopy(twins[0]), copy.deepcopy(twins[1]), twins[2]
    for args in ((0,), (0, ""), (0, "max"), (0, "avgmax")):
        ref.reset_classifier(*args)
        model.reset_classifier(*args)
        out_ref, out = ref(x), model(x)
        assert out.shape == out_ref.shape and rel(out, out_ref) < TOL, args
    ref.reset_classifier(5, "avg")
    model.reset_classifier(5, "avg")
    load_checkpoint(model, ref.state_dict())  # the new heads' weights, shared
    assert rel(model(x), ref(x)) < TOL
    for idx in ([1], 2, [0, 2]):
        r, m = copy.deepcopy(ref), copy.deepcopy(model)
        assert m.prune_intermediate_layers(idx) == r.prune_intermediate_layers(idx)
        assert (m.num_features, m.num_classes) == (r.num_features, r.num_classes)
        assert rel(m(x), r(x)) < TOL
        a = m.forward_intermediates(x, idx, intermediates_only=True)
        b = r.forward_intermediates(x, idx, intermediates_only=True)
        assert all(rel(u, v) < TOL for u, v in zip(a, b))


def test_grad_checkpointing_matches_timm_and_itself(twins) -> None:
    ref, model = copy.deepcopy(twins[0]).train(), copy.deepcopy(twins[1]).train()
    grads, x_grads = {}, {}
    for ckpt in (False, True):
        for name, m in (("timm", ref), ("mfdsl", model)):
            x = twins[2].clone().requires_grad_(True)
            m.zero_grad()
            m.set_grad_checkpointing(ckpt)
            m(x).square().mean().backward()
            grads[name, ckpt] = {n: p.grad.clone() for n, p in m.named_parameters()}
            x_grads[name, ckpt] = x.grad
    for name in ("timm", "mfdsl"):  # each the same with and without
        for n, v in grads[name, False].items():
            assert rel(grads[name, True][n], v) < GRAD_TOL, (name, n)
    for ckpt in (False, True):  # and the same as each other (through the input)
        assert rel(x_grads["mfdsl", ckpt], x_grads["timm", ckpt]) < GRAD_TOL
    assert all(s.grad_checkpointing for s in model.stages)


def test_grad_checkpointing_same_gradients_float64_with_drop_path() -> None:
    """Recomputed blocks replay the RNG: drop-path masks and so gradients are the same."""
    spec = with_overrides(small_caformer_spec(), recipe=RecipeSpec(drop_path=0.3))
    model = build_model(spec).double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        torch.manual_seed(7)
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        # the same float64 computation replayed: equal up to a reordered sum at most
        torch.testing.assert_close(grads[1][n], grads[0][n], **EXACT_FLOAT64)
    # and the masks do matter: another seed gives other gradients
    model.zero_grad()
    torch.manual_seed(8)
    model(x).square().mean().backward()
    assert any(not torch.allclose(p.grad, grads[0][n]) for n, p in model.named_parameters())


def test_layer_decay_groups_through_timm(twins) -> None:
    model = twins[1]
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5,
                                      no_weight_decay_list=model.no_weight_decay())
    scales = sorted({g["lr_scale"] for g in groups})
    n_layers = 1 + sum(len(s.blocks) for s in model.stages) + 1  # stem, blocks, head
    assert len(scales) == n_layers and scales[-1] == 1.0
    assert scales[0] == pytest.approx(0.5 ** (n_layers - 1))
    assert all(g["weight_decay"] == 0.0 for g in groups
               if all(p.ndim <= 1 for p in g["params"]))
