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
    names = timm.list_models("mfdsl_*")
    assert {f"mfdsl_{p.stem}" for p in SPECS.glob("*.mf")} == set(names)
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
    with pytest.raises(ValueError, match="in_chans"):
        timm.create_model("mfdsl_poolformerv2_s12", pretrained=True, in_chans=1)
