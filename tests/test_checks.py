"""Semantic checks on the IR: each problem is a SpecError at the offending field."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mfdsl.api import build_model, check_spec
from mfdsl.checks import check
from mfdsl.errors import Loc, SpecError
from mfdsl.ir import Call, ModelSpec, RecipeSpec, StageSpec, call, default_downsample
from mfdsl.registry import Param, register_mixer, registry


def L(line: int, col: int = 1) -> Loc:
    return Loc("t.mf", line, col)


def located_call(name: str, line: int, **args) -> Call:
    c = call(name, **args)
    c.locs[""] = L(line, 9)
    for i, k in enumerate(args):
        c.locs[k] = L(line, 20 + i)
    return c


def small(mixers=("pooling", "pooling", "attention", "attention"), size=64, **kw) -> ModelSpec:
    stages = []
    for i, (m, w) in enumerate(zip(mixers, (16, 32, 64, 64))):
        st = StageSpec(depth=1, width=w, mixers=[located_call(m, 10 + i)],
                       downsample=None if i == 0 else default_downsample())
        st.locs.update({"": L(10 + i), "depth": L(10 + i, 20), "width": L(10 + i, 24)})
        stages.append(st)
    spec = ModelSpec(name="t", img_size=(size, size), num_classes=10, stages=stages, **kw)
    spec.locs.update({"": L(1), "img_size": L(2, 9)})
    return spec


def test_valid_small_spec_builds_and_runs():
    model = build_model(small())
    y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10)


def test_unknown_mixer_has_nearest_name_hint():
    spec = small(mixers=("pooling", "poling", "attention", "attention"))
    with pytest.raises(SpecError) as e:
        check(spec)
    assert (e.value.line, e.value.column) == (11, 9)
    assert "unknown mixer 'poling'" in e.value.message
    assert "pooling" in e.value.hint


def test_unknown_argument_is_located_with_hint():
    spec = small()
    spec.stages[2].mixers = [located_call("attention", 12, head_dimm=16)]
    with pytest.raises(SpecError) as e:
        check(spec)
    assert (e.value.line, e.value.column) == (12, 20)
    assert "head_dim" in e.value.hint


def test_wrong_type_and_range():
    spec = small()
    spec.stages[0].mixers = [located_call("pooling", 10, pool_size="big")]
    with pytest.raises(SpecError, match="must be an integer"):
        check(spec)
    spec.stages[0].mixers = [located_call("pooling", 10, pool_size=0)]
    with pytest.raises(SpecError) as e:
        check(spec)
    # The settings' wording (one checker): below the minimum says the bound.
    assert "pool_size' of mixer 'pooling' must be >= 1, got 0" in e.value.message
    assert ">= 1" in e.value.hint
    spec.stages[0].mixers = [located_call("pooling", 10, pool_size=32)]
    with pytest.raises(SpecError) as e:
        check(spec)
    assert "is out of range: 32" in e.value.message and "<= 31" in e.value.hint


def test_depth_below_one():
    spec = small()
    spec.stages[1].depth = 0
    with pytest.raises(SpecError) as e:
        check(spec)
    assert "depth must be >= 1" in e.value.message
    assert (e.value.line, e.value.column) == (11, 20)


def test_width_not_divisible_into_heads():
    spec = small()
    spec.stages[2].mixers = [located_call("attention", 12, head_dim=24)]
    with pytest.raises(SpecError) as e:
        check(spec)
    assert "not divisible into heads" in e.value.message
    assert (e.value.line, e.value.column) == (12, 20)


def test_input_size_not_divisible_by_downsampling_runs():
    spec = check(small(size=100))  # 100 / 4 = 25, then the strided convs floor: 13, 7
    assert spec.stage_resolutions()[:3] == [(25, 25), (13, 13), (7, 7)]


def test_kernel_larger_than_feature_map():
    spec = small()
    spec.stages[3].mixers = [located_call("sepconv", 13, kernel=7)]
    with pytest.raises(SpecError) as e:  # 64x64 input -> 2x2 in stage 3
        check(spec)
    assert "larger than the 2x2 feature map" in e.value.message


def test_size_limit_can_be_raised():
    spec = small()
    spec.limits.max_params = 1000
    check(spec)  # the semantic checks leave sizes to the size-limits step
    with pytest.raises(SpecError, match="over the limit"):
        check_spec(spec)
    spec.limits.max_params = 10**9
    check_spec(spec)


def test_recipe_fields_checked():
    spec = small(recipe=RecipeSpec(optimizer="adamm"))
    spec.recipe.locs["optimizer"] = L(30, 15)
    with pytest.raises(SpecError) as e:
        check(spec)
    assert (e.value.line, e.value.column) == (30, 15) and "adamw" in e.value.hint
    with pytest.raises(SpecError, match="drop_path is out of range"):
        check(small(recipe=RecipeSpec(drop_path=1.5)))


def test_nested_component_checked():
    spec = small()
    spec.stages[0].mixers = [located_call("sepconv", 10, act="starrelux")]
    with pytest.raises(SpecError, match="unknown activation 'starrelux'"):
        check(spec)


def test_registry_plugin_mixer_can_be_named():
    class Shift(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def forward(self, x):
            return torch.roll(x, self.n, dims=1)

    @register_mixer("test_shift", Param("n", int, 1, min=1))
    def _shift(ctx, n):
        return Shift(n)

    try:
        spec = small(mixers=("test_shift", "pooling", "attention", "attention"))
        spec.stages[0].mixers = [call("test_shift", n=2)]
        model = build_model(spec)
        assert isinstance(model.stages[0].blocks[0].token_mixer, Shift)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    finally:
        registry.unregister("mixer", "test_shift")


def test_render_shows_source_line_and_caret(tmp_path):
    p = tmp_path / "x.mf"
    p.write_text("model x {\n  stage poling x2 @64\n}\n")
    err = SpecError("unknown mixer 'poling'", Loc(str(p), 2, 9), hint="did you mean 'pooling'?")
    text = err.render()
    lines = text.splitlines()
    assert lines[0] == f"{p}:2:9: error: unknown mixer 'poling'"
    assert lines[1] == "    stage poling x2 @64"
    assert lines[2] == "  " + " " * 8 + "^"
    assert lines[3] == "  hint: did you mean 'pooling'?"


@pytest.mark.parametrize("field, value", [("depth", 10**12), ("width", 10**9)])
def test_absurd_sizes_are_errors_not_crashes(field, value):
    spec = small()
    setattr(spec.stages[1], field, value)
    with pytest.raises(SpecError) as e:
        check(spec)
    assert "out of range" in e.value.message and e.value.line == 11


def test_nan_in_recipe_or_stage_is_rejected():
    with pytest.raises(SpecError, match="finite"):
        check(small(recipe=RecipeSpec(head_dropout=float("nan"))))
    spec = small()
    spec.stages[0].mlp_ratio = float("nan")
    with pytest.raises(SpecError, match="mlp_ratio"):
        check(spec)
