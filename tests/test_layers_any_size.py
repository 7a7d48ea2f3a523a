"""Input size: a mixer that takes any input size runs at sizes that are no multiple of the
total stride; one sized for the spec's input is refused in a spec with dense outputs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mfdsl.api import build_model, check_spec
from mfdsl.ir import DenseSpec, ModelSpec, StageSpec, call, default_downsample
from mfdsl.registry import registry

from conftest import error_of, mf_file

ANY_SIZE = [n for n in registry.builtin_names("mixer") if registry.get("mixer", n).any_size]
FIXED = [n for n in registry.builtin_names("mixer") if not registry.get("mixer", n).any_size]


def test_the_sized_mixers_say_so() -> None:
    assert FIXED == ["global_filter", "random"]
    assert {"identity", "pooling", "sepconv", "attention", "dwconv"} <= set(ANY_SIZE)


@pytest.mark.parametrize("mixer", ANY_SIZE)
def test_any_size_mixer_runs_at_odd_sizes(mixer: str) -> None:
    spec = ModelSpec(name="t", img_size=(64, 64), num_classes=3, stages=[
        StageSpec(depth=1, width=32, mixers=[call(mixer)]),
        StageSpec(depth=1, width=64, mixers=[call(mixer)])])
    spec.stages[1].downsample = default_downsample()
    spec.dense = DenseSpec(outputs=(0, 1))
    model = build_model(spec).eval()
    for h, w in ((97, 131), (45, 33)):
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            maps = model.backbone()(x)
            logits = model(x)
        h0, w0 = (h + 4 - 7) // 4 + 1, (w + 4 - 7) // 4 + 1
        assert maps[0].shape == (1, 32, h0, w0)
        assert maps[1].shape == (1, 64, (h0 - 1) // 2 + 1, (w0 - 1) // 2 + 1)
        assert logits.shape == (1, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("mixer", FIXED)
def test_dense_spec_refuses_a_sized_mixer_at_the_mixer(tmp_path: Path, mixer: str) -> None:
    path = mf_file(tmp_path, "stage pooling x1 @8", f"stage {mixer} x1 @16",
                   "dense outputs (0, 1)")
    err = error_of(check_spec, path)
    assert f"mixer '{mixer}' is sized for the spec's input" in str(err)
    assert (err.line, err.column) == (5, 9)
    assert "pooling" in err.hint
    # without dense outputs the same spec is fine
    check_spec(mf_file(tmp_path, "stage pooling x1 @8", f"stage {mixer} x1 @16", name="u.mf"))
