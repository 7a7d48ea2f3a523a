"""Fine-tuning recipes: layer-wise lr decay, freezing, linear probe, low-rank adapters."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from mfdsl import runs
from mfdsl.api import build_model
from mfdsl.ir import with_overrides
from mfdsl.layers.adapters import LowRankDelta
from mfdsl.passes.fold import fold_for_inference
from mfdsl.runner import api
from mfdsl.runner.errors import RunError
from mfdsl.runner.finetune import apply_finetune, lr_scales
from mfdsl.runner.optim import create_optimizer

from conftest import SPECS, mf_file, run, train_spec, two_class_folder, weights
from test_ckptformats_weights import tiny
from tolerances import assert_close


def _dry_run(spec: str, *args) -> dict:
    code, out = run("train", spec, "--dry-run", "--json", "--dataset-size", 1281167, *args)
    assert code == 0, out
    return json.loads(out)


@pytest.mark.parametrize("name", [pytest.param("caformer_s18", marks=pytest.mark.slow),
                                  "poolformerv2_s12"])
def test_layer_decay_scales_equal_timms_by_parameter_name(name: str) -> None:
    """The zoo spec built as timm's model (``mfdsl.timm``: its ``group_matcher``, per
    stage and block) through timm's own param_groups_layer_decay. (timm's MetaFormer port
    has no group_matcher: timm falls back to groups of 12 parameters there.)"""
    import timm
    from timm.optim import param_groups_layer_decay

    import mfdsl.timm  # noqa: F401 - registers the zoo with timm.create_model

    plan = _dry_run(str(SPECS / f"{name}.mf"), "--layer-decay", "0.75")
    ours = {n: g["lr_scale"] for g in plan["finetune"]["layer_decay"]["groups"]
            for n in g["params"]}
    tm = timm.create_model(f"mfdsl_{name}", pretrained=False)
    named = {id(p): n for n, p in tm.named_parameters()}
    theirs = {named[id(p)]: g["lr_scale"]
              for g in param_groups_layer_decay(tm, layer_decay=0.75) for p in g["params"]}
    assert ours == theirs
    assert len({round(v, 12) for v in ours.values()}) == plan["finetune"]["layer_decay"]["layers"]
    assert "layer decay 0.75" in run("train", str(SPECS / f"{name}.mf"), "--dry-run",
                                     "--dataset-size", 1281167, "--layer-decay", 0.75)[1]


@pytest.mark.slow  # ~5 s: a hybrid built twice
def test_layer_decay_counts_the_blocks_of_a_hybrid() -> None:
    spec = SPECS / "hybrid_conv_attn_interleave.mf"
    model = build_model(spec)
    scales = lr_scales(model, 0.5)
    blocks = sum(len(s.blocks) for s in model.stages)
    assert scales["stem.conv.weight"] == 0.5 ** (blocks + 1)
    assert all(v == 1.0 for n, v in scales.items() if n.startswith("head."))
    first = next(n for n in scales if n.startswith("stages.1.downsample"))
    assert scales[first] == scales[next(n for n in scales if n.startswith("stages.1.blocks.0."))]


def _optimizer_ids(opt: torch.optim.Optimizer) -> set:
    return {id(p) for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("recipe,trains", [
    (dict(freeze="stem stage0"), lambda n: not n.startswith(("stem.", "stages.0."))),
    (dict(freeze="norm"), lambda n: "norm" not in n),
    (dict(freeze="stage1.block0.mlp"), lambda n: not n.startswith("stages.1.blocks.0.mlp.")),
    (dict(linear_probe=True), lambda n: n.startswith("head.fc.")),
    (dict(adapters="mlp", layer_decay=0.75),
     lambda n: n.startswith("head.fc.") or n.endswith(("lora_a", "lora_b"))),
])
def test_the_optimizer_holds_exactly_the_unfrozen_parameters(recipe, trains) -> None:
    spec = train_spec(**recipe)
    model = build_model(spec)
    record = apply_finetune(model, spec.recipe)
    params = dict(model.named_parameters())
    want = {n for n in params if trains(n)}
    assert set(record["trainable"]) == want and want
    scales = lr_scales(model, 0.75) if spec.recipe.layer_decay else None
    opt = create_optimizer(model, spec.recipe, 1e-3, scales)
    assert _optimizer_ids(opt) == {id(params[n]) for n in want}
    if scales:
        assert {g["lr_scale"] for g in opt.param_groups} == {scales[n] for n in want}


def test_selections_are_checked_where_written(tmp_path: Path) -> None:
    code, out = run("validate", mf_file(tmp_path, "stage pooling x1 @16",
                                        'train { freeze "stage1-0" }'))
    assert code == 2 and "backwards" in out and "t.mf:5:18" in out, out
    code, out = run("validate", mf_file(tmp_path, "stage pooling x1 @16",
                                        'train {\n freeze "stem"\n linear_probe true }'))
    assert code == 2 and "keep one" in out, out
    code, out = run("validate", mf_file(tmp_path, "stage pooling x1 @16",
                                        "train { adapter_rank 4 }"))
    assert code == 2 and "no adapters" in out, out
    spec = train_spec(adapters="mixer")  # pooling mixers have no linear layer
    with pytest.raises(RunError, match="'mixer' names no linear or 1x1-conv layer"):
        apply_finetune(build_model(spec), spec.recipe)


@pytest.mark.parametrize("suffix", [".mf", ".yaml"])
def test_adapter_dropout_is_read_by_both_front_ends_and_needs_adapters(tmp_path: Path,
                                                                       suffix: str) -> None:
    from mfdsl.api import check_spec
    from mfdsl.errors import SpecError

    def text(train: str) -> str:
        if suffix == ".mf":
            body = "".join(f"    {line}\n" for line in train.splitlines())
            return ("model m {\n  input 3x32x32\n  classes 3\n  stage pooling x1 @16\n"
                    f"  train {{\n{body}  }}\n}}\n")
        body = "".join(f"  {k}: {v}\n" for k, v in
                       (line.split(" ", 1) for line in train.splitlines()))
        return ("model: m\nstages:\n  - {mixer: pooling, depth: 1, width: 16}\n"
                f"head: linear\ntrain:\n{body}")

    path = tmp_path / f"m{suffix}"
    path.write_text(text("adapters mlp\nadapter_dropout 0.1"))
    assert check_spec(str(path)).recipe.adapter_dropout == 0.1
    path.write_text(text("lr 0.001\nadapter_dropout 0.1"))
    with pytest.raises(SpecError, match="adapter_dropout is set but there are no adapters") as e:
        check_spec(str(path))
    assert e.value.line == 7
    path.write_text(text("adapters mlp\nadapter_dropout 1"))
    with pytest.raises(SpecError, match="adapter_dropout"):
        check_spec(str(path))


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_merged_adapters_give_the_unmerged_logits_and_leave_none(dropout: float) -> None:
    model = tiny("caformer", seed=4)
    spec_recipe = with_overrides(train_spec().recipe, adapters="mixer mlp",
                                 adapter_dropout=dropout)
    record = apply_finetune(model, spec_recipe)
    assert record["adapters"]["on"]
    with torch.no_grad():  # B starts at zero: give the adapters something to merge
        for m in model.modules():
            if isinstance(m, LowRankDelta):
                m.lora_b.normal_(0, 0.1)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        want = model(x)
        folded = fold_for_inference(copy.deepcopy(model))
        got = folded(x)
    assert "adapters" in folded.folded["passes"]
    assert not any(isinstance(m, LowRankDelta) for m in folded.modules())
    assert not any("lora" in k or "parametrizations" in k for k in folded.state_dict())
    assert not any(m._forward_hooks for m in folded.modules())
    assert_close(got, want, k=4 * 64, steps=12)


@pytest.mark.slow  # ~10 s: a few real training steps
def test_an_adapter_run_trains_only_adapters_and_head(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    spec = train_spec(adapters="mlp", adapter_dropout=0.1, mixup=0.0, cutmix=0.0,
                      randaugment=None, random_erasing=0.0, batch_size=4, lr_batch=4, epochs=1)
    start = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(spec).state_dict().items()},
              str(start))
    data = two_class_folder(tmp_path / "data", 6)
    spec = with_overrides(spec, num_classes=2)
    save_file({k: v.contiguous() for k, v in build_model(spec).state_dict().items()},
              str(start))
    api.train(spec, data=str(data), output=str(tmp_path / "r"), workers=0, tensorboard=False,
              progress=False, init_from=str(start), max_steps=3)
    before = weights(start)
    after = weights(tmp_path / "r" / runs.LAST_WEIGHTS)
    lora = [k for k in after if k.endswith(("lora_a", "lora_b"))]
    assert lora
    for k, v in after.items():
        base = k.replace(".parametrizations.weight.original", ".weight")
        if k in lora:
            continue
        if base.startswith("head.fc."):
            assert not torch.equal(v, before[base]), k
        else:
            assert torch.equal(v, before[base]), k
    assert any(not torch.equal(after[k], torch.zeros_like(after[k]))
               for k in lora if k.endswith("lora_b"))
