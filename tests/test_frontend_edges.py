"""Edges of the language (issue 8's classes), each fixed at its root:

* a norm that is right in the blocks must be right (per image) in the head, or refused;
* numbers too large for Python or for float32 are located errors at validate time;
* activation memory has a limit beside params and MACs;
* checking cost grows with distinct blocks, not depth;
* the recipe (augmentation string, combinations) is validated whole at validate time.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mfdsl.run_options import CROP_SCALE_MIN
from mfdsl.api import build_model, check_spec, load_spec
from mfdsl.data.augment import AugmentError, parse_augment
from mfdsl.errors import SpecError
from mfdsl.registry import MAP, POOLED, register_norm, registry

from conftest import ROOT, cli, error_of as spec_error_of, write
from conftest import mf_file as mf
from tolerances import assert_close, tolerance


def spec_file(tmp_path: Path, body: str, name: str = "t.mf") -> Path:
    return write(tmp_path, name, body)


def error_of(path: Path) -> SpecError:
    return spec_error_of(check_spec, path)


# --- norms on the pooled (B, C) features ------------------------------------------------

@pytest.mark.parametrize("lines", [
    ("output_norm modified_layernorm(eps=1e-6)",),
    ("head mlp(norm=modified_layernorm)",),
    ("output_norm batchnorm", "head mlp(norm=batchnorm)"),
    ("output_norm layernorm", "head mlp(norm=identity)"),
])
def test_head_norms_are_per_image_in_eval(tmp_path, lines):
    """One image's logits must not depend on the other images in its batch."""
    model = build_model(mf(tmp_path, "stage pooling x1 @16", "stage pooling x1 @32",
                           *lines)).eval()
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32) * torch.linspace(0.2, 5.0, 6).view(6, 1, 1, 1)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(6)])
    # widths up to 32 (MLP head hidden 4 x 32), ~8 chained products
    assert_close(alone, together, k=128, steps=8)


def test_modified_layernorm_on_a_vector_normalises_each_sample():
    from mfdsl.layers.norms import ModifiedLayerNorm

    n = ModifiedLayerNorm(8)
    x = torch.randn(4, 8) * 3 + 1
    y = n(x)
    # reductions over the 8 channels: the mean, the variance, then the mean of y
    torch.testing.assert_close(y.mean(1), torch.zeros(4), **tolerance(torch.float32, 8, y.abs().max(), 3))
    assert_close(n(x[1:2]), y[1:2], k=8, steps=2)


def test_batchnorm_head_trains_on_batches(tmp_path):
    model = build_model(mf(tmp_path, "stage pooling x1 @16", "output_norm batchnorm"))
    assert isinstance(model.head.norm, nn.BatchNorm1d)
    model.train()(torch.randn(4, 3, 32, 32)).sum().backward()


def test_a_norm_that_does_not_declare_the_head_is_refused_there(tmp_path):
    class RmsOverAll(nn.Module):  # statistics over every dim: wrong on a (B, C) batch
        def forward(self, x):
            return x / x.pow(2).mean().sqrt()

    @register_norm("test_rms_all")
    def _rms(ctx):
        return RmsOverAll()

    try:
        assert registry.get("norm", "test_rms_all").positions == (MAP,)
        check_spec(mf(tmp_path, "stage pooling x1 @16", "norm test_rms_all"))  # blocks: fine
        err = error_of(mf(tmp_path, "stage pooling x1 @16", "output_norm test_rms_all"))
        assert (err.line, err.column) == (5, 15) and "pooled" in err.message
        err = error_of(mf(tmp_path, "stage pooling x1 @16", "head mlp(norm=test_rms_all)"))
        assert err.line == 5 and "pooled" in err.message
    finally:
        registry.unregister("norm", "test_rms_all")


def test_a_norm_declared_for_the_head_is_accepted(tmp_path):
    @register_norm("test_ln_pooled", positions=(MAP, POOLED))
    def _ln(ctx):
        return nn.LayerNorm(ctx.dim)

    try:
        build_model(mf(tmp_path, "stage pooling x1 @16", "output_norm test_ln_pooled"))
    finally:
        registry.unregister("norm", "test_ln_pooled")


# --- numbers too large ----------------------------------------------------------------

HUGE = "9" * 5000


@pytest.mark.parametrize("line, col", [
    (f"classes {HUGE}", 11),
    (f"stage pooling x{HUGE} @8", 17),
    (f"stage pooling x1 @{HUGE}", 21),
    (f"stage pooling(pool_size={HUGE}) x1 @8", 27),
    (f"limits {{ params {HUGE}G }}", 19),
    (f"stage pooling x1 @8  layer_scale 1.{HUGE}", 36),
], ids=["classes", "depth", "width", "arg", "count", "float"])
def test_huge_numbers_in_mf_are_located_errors(tmp_path, line, col):
    p = spec_file(tmp_path, f"model t {{\n  input 3x32x32\n  {line}\n  stage pooling x1 @8\n}}\n")
    err = error_of(p)
    assert (err.line, err.column) == (3, col) and "too long" in err.message
    result = cli("validate", p)
    assert result.exit_code == 2 and ":3:" in result.output


def test_huge_input_size_in_mf_is_located(tmp_path):
    p = spec_file(tmp_path, f"model t {{\n  input 3x{HUGE}x32\n  stage pooling x1 @8\n}}\n")
    assert error_of(p).line == 2


@pytest.mark.parametrize("value", [HUGE, f'"{HUGE}G"', f"{HUGE}.5"], ids=["int", "count", "float"])
def test_huge_numbers_in_yaml_are_located_errors(tmp_path, value):
    key = "limits:\n  params: " if "G" in value else "classes: "
    p = spec_file(tmp_path, f"model: t\n{key}{value}\nstages:\n  - {{mixer: pooling, depth: 1,"
                            " width: 8}\n", "t.yaml")
    result = cli("validate", p)
    assert result.exit_code == 2 and "t.yaml:" in result.output


@pytest.mark.parametrize("line", [
    "stage pooling x1 @8  layer_scale 1e39",
    "stage pooling x1 @8  res_scale -4e38",
    "stage sepconv(act=starrelu(scale=1e39)) x1 @8",
    "eval { mean (1e39, 0.5, 0.5) }",
])
def test_values_beyond_float32_fail_validate_not_training(tmp_path, line):
    err = error_of(mf(tmp_path, line, *(["stage pooling x1 @8"] if "eval" in line else [])))
    assert err.line == 4 and "float32" in err.message


def test_float32_limit_in_yaml(tmp_path):
    p = spec_file(tmp_path, "model: t\nstages:\n  - {mixer: pooling, depth: 1, width: 8, "
                            "layer_scale: 1.0e+39}\n", "t.yaml")
    err = error_of(p)
    assert err.line == 3 and "float32" in err.message


# --- activation memory ------------------------------------------------------------------

def test_activation_memory_has_a_located_limit_that_can_be_raised(tmp_path):
    # ~11 K params and ~100 GMACs, inside those limits, but ~30 GiB of activations per image.
    body = ("model big_act {\n  input 3x12288x12288\n  classes 10\n  stage pooling x2 @16\n"
            "  stage pooling x2 @16  downsample none\n}\n")
    p = spec_file(tmp_path, body)
    err = error_of(p)
    assert "activations" in err.message and "limits { activations" in err.hint
    assert err.line == 1
    check_spec(spec_file(tmp_path, body[:-2] + "  limits { activations 1T }\n}\n", "r.mf"))
    assert cli("validate", p).exit_code == 2
    assert cli("validate", "--max-activations", "1T", p).exit_code == 0


def test_activation_limit_is_located_at_its_setting(tmp_path):
    err = error_of(mf(tmp_path, "stage pooling x1 @8", "limits { activations 1K }"))
    assert (err.line, err.column) == (5, 24) and "over the limit of 1.0K" in err.message


def test_size_estimate_matches_the_full_model():
    """The size step builds one block per distinct mixer; its totals equal the full build."""
    from mfdsl.analysis.counting import count_macs_meta, count_params_meta, meta_model
    from mfdsl.analysis.memory import measure_saved
    from mfdsl.size_limits import estimate_size

    for name in ("caformer_s18.mf", "hybrid_conv_attn_interleave.mf", "demo_tiny.mf"):
        spec = check_spec(ROOT / "specs" / name, size_limits=False)
        est = estimate_size(spec)
        assert est.params == count_params_meta(spec), name
        assert est.macs == count_macs_meta(spec), name
        x = torch.empty(1, spec.in_chans, *spec.img_size, device="meta")
        full = measure_saved(meta_model(spec), x, spec.num_classes).total_bytes
        assert abs(est.activation_bytes - full) <= 0.01 * full, (name, est, full)


# --- checking cost ----------------------------------------------------------------------

def test_checking_cost_follows_distinct_blocks_not_depth(tmp_path, monkeypatch):
    """20 stages x 1000 blocks: the size step builds 20 blocks, the checks stay linear."""
    import mfdsl.checks as checks
    import mfdsl.lower as lower

    built = []
    real = lower.make_component
    monkeypatch.setattr(lower, "make_component",
                        lambda kind, *a, **k: (built.append(kind), real(kind, *a, **k))[1])
    calls = []
    real_check = checks.check_call
    monkeypatch.setattr(checks, "check_call",
                        lambda *a, **k: (calls.append(1), real_check(*a, **k))[1])
    lines = ["downsample none"] + ["stage [pooling, identity] x1000 @8"] * 20
    p = mf(tmp_path, *lines, header="input 3x16x16\n  classes 10")
    start = time.perf_counter()
    check_spec(p)
    elapsed = time.perf_counter() - start
    assert built.count("mixer") == 40  # one block per (stage, mixer), not 20,000
    assert len(calls) <= 20 * (2 + 2) + 10  # mixers listed + norm + act per stage + head
    # Generous (the old cost was ~14 s per 1000 blocks), but quadratic or per-block
    # building would not fit.
    assert elapsed < 30, elapsed


def test_the_zoo_validates_quickly():
    start = time.perf_counter()
    zoo = sorted(p for p in (ROOT / "specs").iterdir() if p.suffix in (".mf", ".yaml"))
    assert len(zoo) > 30
    for p in zoo:
        check_spec(p)
    assert time.perf_counter() - start < 60


# --- the recipe -------------------------------------------------------------------------

VALID_AUGMENT = ["rand-m9-mstd0.5-inc1", "rand-m9-n3-mstd0.5", "rand-mstd1-tweights",
                 "rand-n2-m10-p0.7-mmax12", "rand-t3a", "original", "originalr-mstd0.5", "v0",
                 "v0r", "3a", "augmix-m5-w4-d2", "augmix-a0.5-b1"]
INVALID_AUGMENT = {
    "rand-w0": "w0", "rand-mxx": "mxx", "rand-m9x": "9x", "rand-txyz": "xyz",
    "rand-m9-m7": "twice", "randy-m9": "first section", "rand--m9": "empty section",
    "rand-m11": "clip", "rand-p1.5": "out of range", "rand-inc2": "out of range",
    "rand-mmax0": "out of range", "rand-n20-tweights": "without replacement",
    "original-m9": "m9", "v1": "unknown augmentation", "augmix-a0": "alpha",
    "augmix-x3": "x3", "": "empty", "rand-n0": "out of range",
}


@pytest.mark.parametrize("text", VALID_AUGMENT)
def test_valid_augment_strings_run_in_the_training_pipeline(text):
    """What validates also runs: timm parses it, and no op fails on any image (timm's
    posterize asks Pillow for 0 bits at some magnitudes; the runner's pipeline must cope)."""
    import random
    from types import SimpleNamespace

    from PIL import Image

    from mfdsl.data.dataset import train_transform

    parse_augment(text)
    recipe = SimpleNamespace(randaugment=text, train_interpolation="bicubic",
                             random_erasing=0.0)
    tf = train_transform(recipe, (32, 32), (0.5,) * 3, (0.5,) * 3, crop_scale_min=CROP_SCALE_MIN)
    random.seed(0)
    img = Image.new("RGB", (40, 40), (120, 30, 200))
    for _ in range(300):
        tf(img)


@pytest.mark.parametrize("text, words", INVALID_AUGMENT.items())
def test_invalid_augment_strings_are_refused(text, words):
    with pytest.raises(AugmentError) as e:
        parse_augment(text)
    assert words in e.value.message


@pytest.mark.parametrize("value, words", [('"rand-w0"', "w0"), ('"rand-mxx"', "mxx"),
                                          ('""', "empty")])
def test_recipe_augment_is_checked_at_validate(tmp_path, value, words):
    err = error_of(mf(tmp_path, "stage pooling x1 @8", f"train {{ randaugment {value} }}"))
    assert (err.line, err.column) == (5, 23) and words in err.message


@pytest.mark.parametrize("setting, words", [
    ("optimizer adamw  momentum 0.8", "momentum"),
    ("optimizer sgd  betas (0.8, 0.9)", "betas"),
    ("sched constant  min_lr 1e-4", "min_lr"),
    ("warmup_epochs 0  warmup_lr 1e-4", "warmup_lr"),
    ("mixup 0  mixup_switch_prob 0.3", "mixup_switch_prob"),
    ("epochs 5  warmup_epochs 6", "warmup_epochs"),
])
def test_recipe_settings_that_would_be_ignored_are_refused(tmp_path, setting, words):
    err = error_of(mf(tmp_path, "stage pooling x1 @8", f"train {{ {setting} }}"))
    assert err.line == 5 and words in err.message


def test_recipe_in_yaml_is_checked_the_same(tmp_path):
    p = spec_file(tmp_path, "model: t\nstages:\n  - {mixer: pooling, depth: 1, width: 8}\n"
                            "train:\n  randaugment: rand-w0\n", "t.yaml")
    err = error_of(p)
    assert err.line == 5 and "w0" in err.message


def test_cli_recipe_override_is_checked(tmp_path):
    p = mf(tmp_path, "stage pooling x1 @8")
    result = cli("train", p, "--randaugment", "rand-mxx", "--max-steps", "1")
    assert result.exit_code == 2 and "mxx" in result.output


def test_mlp_head_without_hidden_units_is_refused(tmp_path):
    err = error_of(mf(tmp_path, "stage pooling x1 @8", "head mlp(ratio=1e-300)"))
    assert err.line == 5 and "no hidden units" in err.message


def test_limits_accept_the_ir_field_names_as_before(tmp_path):
    spec = load_spec(mf(tmp_path, "stage pooling x1 @8", "limits { max_params 2G  activations 1T }"))
    assert spec.limits.max_params == 2 * 10**9 and spec.limits.max_activations == 10**12


def test_a_crop_pct_that_would_blow_up_the_eval_resize_is_refused(tmp_path):
    err = error_of(mf(tmp_path, "stage pooling x1 @8", "eval { crop_pct 1e-6 }"))
    assert (err.line, err.column) == (5, 19) and "resize" in err.message
