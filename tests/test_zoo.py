"""The model zoo in specs/: every paper model matches the paper's table.

Parameter and MAC counts come from the lowered model on the meta device and are compared
at the table's own rounding (11.9M -> one decimal in millions, 27M -> whole millions,
1.8G -> one decimal in billions). The recipes are checked against the official scripts'
values.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Tuple

import pytest

from mfdsl.analysis.counting import count_macs_meta, macs_by_module, meta_model, param_counts
from mfdsl.api import check_spec, load_spec
from mfdsl.ir import call, default_downsample
from mfdsl.paper_table import PAPER_TABLE

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
ALL_SPECS = sorted(SPECS_DIR.glob("*.mf"))

# The paper's figures as printed (mfdsl.paper_table, also read by mfdsl compare).
TABLE = PAPER_TABLE

DROP_PATH = {
    "identityformer": {"s12": 0.1, "s24": 0.1, "s36": 0.2, "m36": 0.3, "m48": 0.4},
    "randformer": {"s12": 0.1, "s24": 0.1, "s36": 0.2, "m36": 0.3, "m48": 0.3},
    "poolformerv2": {"s12": 0.1, "s24": 0.1, "s36": 0.2, "m36": 0.3, "m48": 0.4},
    "convformer": {"s18": 0.2, "s36": 0.3, "m36": 0.4, "b36": 0.6},
    "caformer": {"s18": 0.15, "s36": 0.3, "m36": 0.4, "b36": 0.6},
}
HEAD_DROPOUT = {"caformer": {"s18": 0.0, "s36": 0.4, "m36": 0.4, "b36": 0.5}}
# The 384 fine-tune scripts raise them: (drop path, head dropout).
FINETUNE_DROP = {
    "convformer": {"s18": (0.3, 0.4), "s36": (0.5, 0.4), "m36": (0.8, 0.5), "b36": (0.8, 0.5)},
    "caformer": {"s18": (0.3, 0.4), "s36": (0.5, 0.4), "m36": (0.7, 0.4), "b36": (0.8, 0.5)},
}


def _matches(value: float, printed: str, scale: float) -> bool:
    """``value`` rounds to the table's ``printed`` figure at the table's precision."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return round(value / scale, decimals) == float(printed)


@lru_cache(maxsize=None)
def _counts(name: str) -> Tuple[int, int, int]:
    spec = load_spec(SPECS_DIR / f"{name}.mf")
    model = meta_model(spec)
    trainable, frozen = param_counts(model)
    return trainable, frozen, macs_by_module(model, spec)["Global"]


def test_the_zoo_holds_every_paper_model() -> None:
    names = {p.stem for p in ALL_SPECS}
    missing = set(TABLE) - names
    assert not missing, f"missing specs: {sorted(missing)}"
    hybrids = [n for n in names if n.startswith("hybrid_")]
    assert len(hybrids) >= 3 and "demo_tiny" in names


@pytest.mark.parametrize("name", sorted(TABLE))
def test_params_and_macs_match_the_paper_table(name: str) -> None:
    printed_params, printed_frozen, printed_macs = TABLE[name][:3]
    trainable, frozen, macs = _counts(name)
    assert _matches(trainable, printed_params, 1e6), f"{name}: {trainable} trainable params"
    if printed_frozen is None:
        assert frozen == 0, f"{name}: {frozen} frozen params"
    else:
        assert _matches(frozen, printed_frozen, 1e6), f"{name}: {frozen} frozen params"
    assert _matches(macs, printed_macs, 1e9), f"{name}: {macs} MACs"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_architecture_and_recipe_follow_the_paper(name: str) -> None:
    spec = load_spec(SPECS_DIR / f"{name}.mf")
    family, size = name.split("_")[:2]
    is_384 = name.endswith("_384")
    assert spec.img_size == ((384, 384) if is_384 else (224, 224))
    assert spec.num_classes == 1000 and len(spec.stages) == 4
    assert [st.res_scale for st in spec.stages] == [None, None, 1.0, 1.0]
    assert all(st.layer_scale is None for st in spec.stages)
    assert spec.stages[0].downsample is None
    assert all(st.downsample == default_downsample() for st in spec.stages[1:])
    conv_like = family in ("convformer", "caformer")
    norm = (call("layernorm", bias=False, eps=1e-6) if conv_like
            else call("modified_layernorm", bias=False, eps=1e-6))
    assert all(st.norm == norm for st in spec.stages)
    if conv_like:
        assert spec.head == call("mlp", ratio=4, act="squared_relu",
                                 norm=call("layernorm", bias=True, eps=1e-5))
    else:
        assert spec.head == call("linear")

    r = spec.recipe
    assert r is not None
    if is_384:
        assert (r.drop_path, r.head_dropout) == FINETUNE_DROP[family][size]
        assert (r.epochs, r.sched, r.warmup_epochs, r.mixup, r.cutmix) == (
            30, "constant", 0, 0, 0)
        assert (r.batch_size, r.lr_batch, r.ema, r.amp) == (1024, 1024, 0.9999, False)
        assert r.finetune_from == name[: -len("_384")]
        assert (r.optimizer, r.lr) == (("lamb", 1e-4) if family == "caformer"
                                       else ("adamw", 5e-5))
        assert spec.eval.crop_pct == 1.0
    else:
        assert r.drop_path == DROP_PATH[family][size]
        assert r.head_dropout == HEAD_DROPOUT.get(family, {}).get(size, 0.0)
        assert (r.epochs, r.batch_size, r.lr_batch, r.weight_decay, r.sched) == (
            300, 4096, 4096, 0.05, "cosine")
        assert (r.sched_unit, r.warmup_mode, r.cooldown_epochs, r.amp) == (
            "epoch", "inside", 10, False)
        assert (r.optimizer, r.lr, r.warmup_epochs) == (
            ("lamb", 8e-3, 20) if family == "caformer" else
            ("adamw", 4e-3, 20) if family == "convformer" else ("adamw", 4e-3, 5))
        assert (r.mixup, r.cutmix, r.randaugment, r.random_erasing, r.label_smoothing) == (
            0.8, 1.0, "rand-m9-mstd0.5-inc1", 0.25, 0.1)
        assert r.ema is None and r.finetune_from is None


@pytest.mark.parametrize("path", ALL_SPECS, ids=[p.stem for p in ALL_SPECS])
def test_every_spec_passes_the_checker(path: Path) -> None:
    check_spec(path)


def test_hybrids_use_what_the_paper_code_cannot_say() -> None:
    interleave = load_spec(SPECS_DIR / "hybrid_conv_attn_interleave.mf")
    assert [m.name for m in interleave.stages[2].mixers] == ["sepconv", "sepconv", "attention"]
    gf = load_spec(SPECS_DIR / "hybrid_gfnet_caformer.mf")
    assert gf.stages[0].mixers[0].name == "global_filter"
    assert gf.stages[0].mlp_act != gf.stages[3].mlp_act and gf.stages[0].norm != gf.stages[3].norm
    dp = load_spec(SPECS_DIR / "hybrid_dwconv_pool.mf")
    assert {m.name for st in dp.stages for m in st.mixers} == {"dwconv", "pooling", "random"}
    assert len({st.mlp_ratio for st in dp.stages}) > 1
    assert all(st.layer_scale is not None for st in dp.stages)


def test_demo_is_tiny_and_quick() -> None:
    """The README's first run must fit a few CPU minutes on the built-in 10-class data."""
    spec = load_spec(SPECS_DIR / "demo_tiny.mf")
    assert (spec.in_chans, spec.img_size, spec.num_classes) == (3, (64, 64), 10)
    r = spec.recipe
    assert r.randaugment is None and (r.mixup, r.cutmix, r.random_erasing) == (0, 0, 0)
    assert r.epochs * 1500 / r.batch_size <= 2000  # optimizer steps on the built-in data
    trainable, frozen = param_counts(meta_model(spec))
    assert trainable < 1_000_000 and frozen == 0
    assert count_macs_meta(spec) < 50_000_000
