"""mfdsl.runner.device_plan: one resolver for the device decisions of train and eval, and
a training run that lowers its model once, for the device that runs it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mfdsl.lower
from mfdsl.ir import RecipeSpec
from mfdsl.layers.variants import variants_for, variants_in_use
from mfdsl.runner.device_plan import resolve_device_plan
from mfdsl.runner.errors import RunError

from conftest import SPECS, run, two_class_folder

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_defaults_per_device_and_purpose():
    r = RecipeSpec(amp=True)
    gpu = resolve_device_plan(CUDA, r)
    assert (gpu.channels_last, gpu.amp, gpu.compile, gpu.mode) == (True, True, True, "default")
    assert gpu.dtype == "bf16" and gpu.torch_amp_dtype == torch.bfloat16
    assert gpu.variants == variants_for("cuda", True)
    assert gpu.target() == dict(target=CUDA, channels_last=True, dtype="bf16")
    ev = resolve_device_plan(CUDA, r, training=False)
    assert (ev.compile, ev.mode, ev.variants) == (False, "eager", variants_for("cuda", False))
    cpu = resolve_device_plan(CPU, r)
    assert (cpu.channels_last, cpu.amp, cpu.compile, cpu.dtype) == (False, False, False, "fp32")
    assert cpu.variants == variants_for("cpu", False)
    # The recipe's amp off, and no recipe at all (eval of a foreign checkpoint).
    assert not resolve_device_plan(CUDA, RecipeSpec(amp=False)).amp
    assert resolve_device_plan(CUDA, None, training=False).amp


def test_explicit_options_win():
    p = resolve_device_plan(CPU, RecipeSpec(amp=False), amp=True, amp_dtype="float16",
                            channels_last=True, compile=True)
    assert (p.amp, p.dtype, p.channels_last, p.compile) == (True, "fp16", True, True)
    assert p.variants == variants_for("cpu", True)
    p = resolve_device_plan(CUDA, RecipeSpec(amp=True), amp=False, channels_last=False,
                            compile=False)
    assert (p.amp, p.dtype, p.channels_last, p.mode) == (False, "fp32", False, "eager")


def test_bad_amp_dtype_is_a_run_error():
    with pytest.raises(RunError, match="--amp-dtype must be bfloat16 or float16"):
        resolve_device_plan(CPU, None, amp_dtype="int8")


@pytest.fixture
def lowered(monkeypatch):
    """The models lowered while the test runs, with a device plan that names CUDA eager's
    variants (no pointwise_conv1x1): a model that runs them shows the plan's choice was
    kept, not made again for the CPU."""
    import mfdsl.runner.device_plan as dp

    models = []
    real_lower = mfdsl.lower.lower

    def counting(spec, target="cpu", variants=None):
        model = real_lower(spec, target, variants)
        # The size check measures a shape-only sample on the meta device; that is no model.
        if next(model.parameters()).device.type != "meta":
            models.append(model)
        return model

    monkeypatch.setattr(mfdsl.lower, "lower", counting)
    monkeypatch.setattr(dp, "variants_for", lambda device, compiled: variants_for("cuda", False))
    return models


def _lowered_once_with_the_plans_variants(models) -> None:
    assert len(models) == 1
    used = variants_in_use(models[0])
    assert used and set(used) <= set(variants_for("cuda", False))
    assert "pointwise_conv1x1" not in used


@pytest.mark.slow  # a whole (one-step) training run in-process: ~5 s on 2 cores
def test_train_lowers_the_model_once_with_its_plans_variants(tmp_path: Path, lowered):
    data = two_class_folder(tmp_path / "data", 4)
    code, out = run("train", SPECS / "demo_tiny.mf", "--data", data, "-o", tmp_path / "r",
                    "--max-steps", "1", "--epochs", "1", "--warmup-epochs", "0",
                    "--workers", "0", "--no-tensorboard", "--batch-size", "4")
    assert code == 0, out
    _lowered_once_with_the_plans_variants(lowered)


def test_eval_lowers_the_model_once_with_its_plans_variants(tmp_path: Path, lowered):
    """Eval, like train: one lowering, with the variants of the device plan it resolved
    (not the CPU's first and others chosen again when preparing)."""
    from safetensors.torch import save_file

    from conftest import solid_folder
    from mfdsl.api import build_model, load_spec
    from mfdsl.runner import api

    spec = load_spec(str(SPECS / "demo_tiny.mf"))
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(spec).state_dict().items()},
              str(weights))
    data = solid_folder(tmp_path / "data", 1, {f"c{i}": 20 * i for i in range(10)})
    lowered.clear()  # the weights' own model above is not the evaluation's
    res = api.evaluate(str(weights), spec, data=str(data), workers=0)
    assert res["images"] == 10
    _lowered_once_with_the_plans_variants(lowered)


def test_cuda_graphs_compile_reduce_overhead_on_one_gpu():
    p = resolve_device_plan(CUDA, RecipeSpec(amp=True), cuda_graphs=True)
    assert (p.compile, p.cuda_graphs, p.mode) == (True, True, "reduce-overhead")
    assert not resolve_device_plan(CUDA, RecipeSpec(amp=True)).cuda_graphs


@pytest.mark.parametrize("device, kw, message", [
    (CPU, {}, "--cuda-graphs needs a CUDA device; this run is on cpu"),
    (CPU, {"compile": True}, "--cuda-graphs needs a CUDA device"),
    (CUDA, {"compile": False}, "cannot go with --no-compile"),
    (CUDA, {"processes": 2}, "not verified under DDP"),
])
def test_cuda_graphs_refused_where_unsafe(device, kw, message):
    with pytest.raises(RunError, match=message):
        resolve_device_plan(device, RecipeSpec(), cuda_graphs=True, **kw)


def test_cuda_graphs_on_cpu_is_refused_by_the_command(tmp_path: Path):
    """Refused before anything is built or written, with the reason."""
    data = two_class_folder(tmp_path / "data", 8)
    code, out = run("train", str(SPECS / "demo_tiny.mf"), "--data", str(data), "--device",
                    "cpu", "--compile", "--cuda-graphs", "--batch-size", "4", "--dry-run")
    assert code != 0 and "--cuda-graphs needs a CUDA device" in out, out
    code, out = run("train", str(SPECS / "demo_tiny.mf"), "--data", str(data), "--device",
                    "cpu", "--compile", "--batch-size", "4", "--dry-run")
    assert code == 0, out  # the same run without the flag plans
