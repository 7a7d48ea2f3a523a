"""mfdsl specs as timm models: ``import mfdsl.timm`` registers the zoo, ``register`` a
user's spec; everything here goes through ``timm.create_model`` and timm's feature
wrappers, the way detection / segmentation code takes a backbone."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mfdsl import load_spec
from mfdsl.ckptformats.weights import load_checkpoint
from mfdsl.ir import with_overrides
from mfdsl.layers.block import DropPath
from mfdsl.errors import SpecError
from mfdsl.weights import WeightsError

timm = pytest.importorskip("timm")
import mfdsl.timm as mt  # noqa: E402
from timm.models._features import FeatureGetterNet, FeatureListNet  # noqa: E402

from conftest import put_in_cache, safetensors_bytes as _safetensors_bytes  # noqa: E402
from tolerances import rel_max_diff, rel_tolerance  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


# poolformerv2_s12 in fp32: MLP hidden 4 x 512, 12 blocks of two products (tolerances.py)
TOL = rel_tolerance(torch.float32, 2048, 2 * 12 + 2)


@torch.no_grad()
def perturb_(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() > 1 else 0.1))


def test_the_zoo_is_registered() -> None:
    # Other tests register their own specs in the same process-wide registry: the zoo's
    # names are the ones register_zoo gives (idempotent), and each is in timm's list.
    zoo = {f"mfdsl_{p.stem}" for p in SPECS.glob("*.mf")}
    assert set(mt.register_zoo()) == zoo
    assert zoo <= set(timm.list_models("mfdsl_*"))
    assert timm.is_model("mfdsl_caformer_s18") and timm.is_model("mfdsl_hybrid_gfnet_caformer")


def test_create_model_classifier_and_kwargs() -> None:
    m = timm.create_model("mfdsl_hybrid_tiny_attn", num_classes=4, global_pool="max").eval()
    assert m.num_classes == 4 and m.head.global_pool == "max"
    assert m.pretrained_cfg["architecture"] == "mfdsl_hybrid_tiny_attn"
    assert m.pretrained_cfg["input_size"] == (3, 64, 64)
    assert m.default_cfg is m.pretrained_cfg
    x = torch.randn(2, 3, 64, 64)
    assert m(x).shape == (2, 4)
    m0 = timm.create_model("mfdsl_hybrid_tiny_attn", num_classes=0)
    assert m0.eval()(x).shape == (2, m0.num_features)
    # a timm model's drop-path default is 0, not the recipe's (timm's train.py passes its own)
    spec = load_spec(SPECS / "hybrid_tiny_attn.mf")
    spec = with_overrides(spec, recipe=with_overrides(spec.recipe, drop_path=0.3))
    name = mt.register(spec, "tiny_with_drop_path")
    assert not any(isinstance(mod, DropPath) for mod in timm.create_model(name).modules())
    rates = [mod.p for mod in timm.create_model(name, drop_path_rate=0.2).modules()
             if isinstance(mod, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)
    with pytest.raises(TypeError):
        timm.create_model("mfdsl_hybrid_tiny_attn", no_such_option=1)


@pytest.mark.parametrize("out_indices", [None, (1, 2), (-1,), 2])
def test_features_only_hybrid(out_indices) -> None:
    kw = {} if out_indices is None else dict(out_indices=out_indices)
    m = timm.create_model("mfdsl_hybrid_tiny_attn", features_only=True, **kw).eval()
    assert isinstance(m, FeatureGetterNet)
    x = torch.randn(2, 3, 64, 64)
    feats = m(x)
    want = {None: [0, 1, 2], (1, 2): [1, 2], (-1,): [2], 2: [1, 2]}[out_indices]
    assert m.feature_info.channels() == [[32, 64, 96][i] for i in want]
    assert m.feature_info.reduction() == [[4, 8, 16][i] for i in want]
    assert [f.shape for f in feats] == [
        (2, c, 64 // r, 64 // r) for c, r in zip(m.feature_info.channels(),
                                                 m.feature_info.reduction())]
    # stages past the last one asked for are pruned, the head always
    assert len(m.model.stages) == want[-1] + 1
    assert isinstance(m.model.get_classifier(), nn.Identity)


def test_feature_cls_that_would_walk_channels_last_modules_is_refused() -> None:
    with pytest.raises(ValueError, match="forward_intermediates"):
        timm.create_model("mfdsl_hybrid_tiny_attn", features_only=True, feature_cls="list")


@pytest.mark.slow
def test_features_only_caformer_s18_equals_timms_feature_maps() -> None:
    """The done-check: timm's caformer_s18 feature maps under the same weights."""
    torch.manual_seed(0)
    ref = timm.create_model("caformer_s18", features_only=True).eval()
    assert isinstance(ref, FeatureListNet)
    perturb_(ref, 3)
    ours = timm.create_model("mfdsl_caformer_s18", features_only=True).eval()
    # FeatureListNet flattened timm's stages (stages_0 ...); name them back to load
    sd = {k.replace("stages_", "stages.", 1): v for k, v in ref.state_dict().items()}
    report = load_checkpoint(ours.model, sd)
    assert report.ok and not report.missing
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = ours(x), ref(x)
    assert ours.feature_info.channels() == ref.feature_info.channels()
    assert ours.feature_info.reduction() == ref.feature_info.reduction()
    assert len(a) == len(b) == 4
    for u, v in zip(a, b):
        assert u.shape == v.shape and rel_max_diff(u, v) < TOL


def test_register_a_user_spec(tmp_path: Path) -> None:
    src = (SPECS / "hybrid_tiny_attn.mf").read_text().replace(
        "model hybrid_tiny_attn", "model my_hybrid")
    path = tmp_path / "my_hybrid.mf"
    path.write_text(src)
    name = mt.register(path)
    assert name == "mfdsl_my_hybrid" and timm.is_model(name)
    assert mt.register(path, "my_backbone") == "my_backbone"
    m = timm.create_model("my_backbone", features_only=True, out_indices=(0, 2))
    assert [f.shape[1] for f in m(torch.randn(1, 3, 64, 64))] == [32, 96]
    spec = load_spec(path)
    assert timm.create_model(mt.register(spec, "from_ir")).spec.name == "my_hybrid"
    with pytest.raises(ValueError, match="identifier"):
        mt.register(path, "my-backbone")


def test_register_a_bad_spec_is_a_located_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.mf"
    path.write_text("model bad {\n  input 3x64x64\n  stage nosuchmixer x1 @32\n}\n")
    with pytest.raises(SpecError) as err:
        mt.register(path)
    assert "bad.mf:3" in str(err.value)


def test_register_names_the_model_after_its_model_line(tmp_path: Path) -> None:
    """The docs' rule: ``mfdsl_<model name>``, whatever the file is called, the same name a
    ModelSpec of it gets."""
    src = (SPECS / "hybrid_tiny_attn.mf").read_text().replace(
        "model hybrid_tiny_attn", "model line_name")
    path = tmp_path / "file_name.mf"
    path.write_text(src)
    assert mt.register(path) == "mfdsl_line_name" == mt.register(load_spec(path))
    assert not timm.is_model("mfdsl_file_name")
    # the zoo's names are its models' names too
    for p in SPECS.glob("*.mf"):
        assert timm.is_model(mt.PREFIX + load_spec(p).name)


def test_register_refuses_a_name_timm_has() -> None:
    before = timm.models.model_entrypoint("resnet50")
    with pytest.raises(ValueError, match="'resnet50' is already a timm model.*overwrite=True"):
        mt.register(SPECS / "hybrid_tiny_attn.mf", "resnet50")
    assert timm.models.model_entrypoint("resnet50") is before
    assert timm.models.get_pretrained_cfg("resnet50").architecture == "resnet50"
    # on purpose it replaces it; timm's own entry point is put back after
    try:
        assert mt.register(SPECS / "hybrid_tiny_attn.mf", "resnet50", overwrite=True)
        assert timm.models.model_entrypoint("resnet50").__module__ == "mfdsl.timm"
    finally:
        mt._SOURCES.pop("resnet50", None)
        mt.default_cfgs.pop("resnet50", None)
        timm.models.register_model(before)
    assert timm.models.model_entrypoint("resnet50") is before


def test_in_chans_adapts_mean_std_and_stem() -> None:
    """in_chans as timm's models take it: the zoo's 3-value eval mean no longer refuses 1."""
    from timm.data import resolve_data_config

    for n, mean in ((1, (0.449,)), (4, (0.485, 0.456, 0.406, 0.485))):
        m = timm.create_model("mfdsl_hybrid_tiny_attn", in_chans=n).eval()
        assert m.in_chans == n and m.stem.conv.in_channels == n
        assert m.pretrained_cfg["input_size"] == (n, 64, 64)
        assert m.pretrained_cfg["mean"] == pytest.approx(mean)
        assert tuple(m.spec.eval.mean) == pytest.approx(mean)
        assert len(m.pretrained_cfg["std"]) == n
        assert len(resolve_data_config(model=m)["mean"]) == n
        assert m(torch.randn(2, n, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="in_chans must be an int >= 1"):
        timm.create_model("mfdsl_hybrid_tiny_attn", in_chans=0)


def test_stem_weight_adapted_as_timms_adapt_input_conv() -> None:
    from timm.models import adapt_input_conv

    w = torch.randn(8, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    for n in (1, 2, 3, 4, 7):
        torch.testing.assert_close(mt.adapt_stem_weight(w, n), adapt_input_conv(n, w))


def test_pretrained_cfg_and_overlay_describe_the_model_not_its_weights() -> None:
    m = timm.create_model("mfdsl_hybrid_tiny_attn",
                          pretrained_cfg_overlay=dict(mean=(0.5, 0.5, 0.5), crop_pct=0.9))
    assert m.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and m.pretrained_cfg["crop_pct"] == 0.9
    for kw in (dict(pretrained_cfg_overlay=dict(file="x.pth")),
               dict(pretrained_cfg=dict(hf_hub_id="someone/weights"))):
        with pytest.raises(ValueError, match="release table"):
            timm.create_model("mfdsl_hybrid_tiny_attn", **kw)


# --- timm's pretrained-cfg registry ---------------------------------------------------------

def test_pretrained_cfgs_are_in_timms_registry() -> None:
    """Tools that enumerate timm's pretrained models see the released mfdsl ones, with
    their twins' facts (timm's caformer_s18 splits into our 224 and 384 specs)."""
    listed = set(timm.list_pretrained("mfdsl_*"))
    for twin in ("caformer_s18", "poolformerv2_s12", "convformer_s18"):
        for size, pick in (("", lambda t: not t.endswith("_384")),
                           ("_384", lambda t: t.endswith("_384"))):
            tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{twin}.*")
                    if pick(n.split(".", 1)[1])]
            for tag in tags:
                ours = timm.models.get_pretrained_cfg(f"mfdsl_{twin}{size}.{tag}")
                theirs = timm.models.get_pretrained_cfg(f"{twin}.{tag}")
                assert f"mfdsl_{twin}{size}.{tag}" in listed
                assert ours.architecture == f"mfdsl_{twin}{size}" and ours.tag == tag
                for key in ("hf_hub_id", "input_size", "num_classes", "mean", "std",
                            "crop_pct", "interpolation", "first_conv", "classifier",
                            "pool_size"):
                    assert getattr(ours, key) == getattr(theirs, key), (twin, tag, key)
    # the default cfg is the release pretrained=True loads
    assert timm.models.get_pretrained_cfg("mfdsl_caformer_s18").tag == "sail_in1k"
    assert "mfdsl_identityformer_s12.sail_in1k" in listed  # released outside timm
    # a spec without releases has a cfg, and no weights
    cfg = timm.models.get_pretrained_cfg("mfdsl_hybrid_tiny_attn")
    assert cfg is not None and not cfg.has_weights and cfg.input_size == (3, 64, 64)
    assert not any(n.startswith("mfdsl_hybrid") for n in listed)


# --- pretrained: mfdsl's released-weights table, offline -----------------------------------

# (the offline hub fixture `hub` is in conftest.py)

def test_pretrained_offline_with_nothing_cached_is_a_clear_error(hub: Path) -> None:
    with pytest.raises(WeightsError, match="not in the Hugging Face cache"):
        timm.create_model("mfdsl_caformer_s18", pretrained=True)
    with pytest.raises(WeightsError, match="names no released weights"):
        timm.create_model("mfdsl_demo_tiny", pretrained=True)
    with pytest.raises(WeightsError, match="unknown release"):
        timm.create_model("mfdsl_poolformerv2_s12.sail_in5k", pretrained=True)
    # the ImageNet-21k release needs its 21841-class head: asked for, it resolves (and
    # then is not cached here)
    with pytest.raises(WeightsError, match="21841-class head"):
        timm.create_model("mfdsl_caformer_s18.sail_in22k", pretrained=True)
    with pytest.raises(WeightsError, match=r"caformer_s18\.sail_in22k.*not in the Hugging Face"):
        timm.create_model("mfdsl_caformer_s18.sail_in22k", pretrained=True, num_classes=21841)


@pytest.mark.slow
def test_pretrained_from_the_cache_equals_timm(hub: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = timm.create_model("poolformerv2_s12").eval()
    perturb_(ref, 5)
    put_in_cache(hub, "timm/poolformerv2_s12.sail_in1k", "model.safetensors",
                 _safetensors_bytes(ref.state_dict(), tmp_path))
    m = timm.create_model("mfdsl_poolformerv2_s12.sail_in1k", pretrained=True).eval()
    assert m.pretrained_cfg["tag"] == "sail_in1k"
    assert m.pretrained_cfg["hf_hub_id"] == "timm/poolformerv2_s12.sail_in1k"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_max_diff(m(x), ref(x)) < TOL
    # a new class count keeps the trained backbone, as timm does
    m10 = timm.create_model("mfdsl_poolformerv2_s12", pretrained=True, num_classes=10).eval()
    with torch.no_grad():
        assert rel_max_diff(m10.forward_features(x), ref.forward_features(x)) < TOL
    assert m10(x).shape == (1, 10)
    feats = timm.create_model("mfdsl_poolformerv2_s12", pretrained=True, features_only=True,
                              out_indices=(3,)).eval()
    with torch.no_grad():
        assert rel_max_diff(feats(x)[0], ref.forward_features(x)) < TOL
    # another channel count: the release loads, the stem is adapted as timm adapts its own
    for n in (1, 4):
        ours = timm.create_model("mfdsl_poolformerv2_s12", pretrained=True, in_chans=n).eval()
        theirs = timm.create_model("poolformerv2_s12", pretrained=True, in_chans=n,
                                   pretrained_cfg_overlay=dict(state_dict=ref.state_dict()))
        torch.testing.assert_close(ours.stem.conv.weight, theirs.stem.conv.weight)
        xn = torch.randn(1, n, 64, 64)
        with torch.no_grad():
            assert rel_max_diff(ours(xn), theirs.eval()(xn)) < TOL
