"""`inspect` (aten-graph counting) and `compile` (FlopCounterMode on the meta model) are
two independent counts of the same model: they must agree part by part."""
from __future__ import annotations

from pathlib import Path

import pytest

from mfdsl.analysis.inspect import analyse
from mfdsl.api import check_spec
from mfdsl.summary import summarize

SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.mark.parametrize("name", ["caformer_s18.mf", "randformer.yaml", "hybrid_dwconv_pool.mf"])
def test_inspect_and_compile_agree(name):
    spec = check_spec(SPECS / name)
    compiled = summarize(spec)
    inspected = analyse(spec)
    assert inspected.params == compiled.params
    assert inspected.frozen_params == compiled.frozen_params
    assert inspected.macs == compiled.macs
    assert len(inspected.stages) == len(compiled.stages)
    for a, b in zip(inspected.stages, compiled.stages):
        assert (a.params, a.frozen_params, a.macs) == (b.params, b.frozen_params, b.macs), a.name
        assert tuple(a.out_shape) == (1, *b.out_shape), a.name  # inspect keeps the batch dim
