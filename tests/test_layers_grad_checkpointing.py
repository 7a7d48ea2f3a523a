"""``mfdsl train --grad-checkpointing``: the same training as without (eager fp32: the
same weights after the same steps), and it runs with torch.compile + channels_last + bf16
autocast and under two-process CPU DDP; the activation memory it saves, by the analysis
tooling. The float64 gradient identity is in tests/test_timm_contract.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import (ROOT, runner as mfdsl, runner_env as _env, train_spec as tiny_spec, weights,
                      write_colour_folder, write_spec)

ARGS = ["--workers", "0", "--batch-size", "6", "--max-steps", "3", "--log-every", "1",
        "--device", "cpu", "--no-tensorboard"]


def _train(spec: str, data: Path, out: Path, *flags: str) -> dict:
    p = mfdsl("train", spec, "--data", str(data), "-o", str(out), *ARGS, *flags, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    return json.loads((out / "recipe.json").read_text())["resolved"]


@pytest.mark.slow
@pytest.mark.parametrize("flags, tol", [
    ((), 0.0),  # eager fp32: recomputation repeats the same kernels, bit for bit
    (("--compile", "--channels-last", "--amp"), 2e-2),  # other fusions, bf16 rounding
], ids=["eager", "compile-channels_last-bf16"])
def test_same_training_with_and_without(tmp_path: Path, flags: tuple, tol: float) -> None:
    data = write_colour_folder(tmp_path / "data", n_train=4, n_val=2)
    spec = write_spec(tmp_path / "t.mf", tiny_spec(drop_path=0.2, mixup=0.0, cutmix=0.0))
    plain = _train(spec, data, tmp_path / "plain", *flags)
    ckpt = _train(spec, data, tmp_path / "ckpt", *flags, "--grad-checkpointing")
    assert plain["grad_checkpointing"] is False and ckpt["grad_checkpointing"] is True
    a = weights(tmp_path / "plain" / "checkpoints" / "last.safetensors")
    b = weights(tmp_path / "ckpt" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    if tol == 0.0:
        assert all(torch.equal(a[k], b[k]) for k in a)
        return
    # Compiled with bf16 autocast the two graphs fuse differently, and Adam-style updates
    # amplify rounding in near-zero gradients: compare the losses the steps saw instead.
    assert all(torch.isfinite(t).all() for t in b.values())
    la, lb = _losses(tmp_path / "plain"), _losses(tmp_path / "ckpt")
    assert len(la) == len(lb) == 3
    assert all(abs(u - v) <= tol * abs(u) for u, v in zip(la, lb)), (la, lb)


def _losses(out: Path) -> list:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


@pytest.mark.slow
def test_two_process_ddp_with_grad_checkpointing(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", n_train=4, n_val=2)
    spec = write_spec(tmp_path / "t.mf", tiny_spec(drop_path=0.1))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "mfdsl.runner", "train", spec, "--data", str(data), "-o", str(out),
           "--workers", "0", "--batch-size", "8", "--per-device-batch", "4", "--max-steps", "2",
           "--device", "cpu",
           "--grad-checkpointing", "--no-tensorboard"]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    resolved = json.loads((out / "recipe.json").read_text())["resolved"]
    assert resolved["world_size"] == 2 and resolved["grad_checkpointing"] is True
    assert all(torch.isfinite(t).all()
               for t in weights(out / "checkpoints" / "last.safetensors").values())


def test_the_option_is_offered() -> None:
    p = subprocess.run([sys.executable, "-m", "mfdsl", "train", "--help"], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "--grad-checkpointing" in p.stdout


# --- the memory it saves, by the analysis tooling ------------------------------------------

@pytest.mark.slow
def test_checkpointing_memory_by_analysis() -> None:
    """Checkpointed, a step holds every block's input and what the parts outside the blocks
    save, and no block's internals: checked against the plain per-part tally."""
    from mfdsl.analysis.checkpoint_memory import measure_checkpointing
    from mfdsl.analysis.memory import measure_saved
    from mfdsl.api import load_spec
    from mfdsl.lower import lower
    from mfdsl.pipeline import check_spec

    spec = check_spec(load_spec(ROOT / "specs" / "hybrid_tiny_attn.mf"))
    with torch.device("meta"):
        model = lower(spec)
    x = torch.empty(4, 3, 64, 64, device="meta")
    r = measure_checkpointing(model, x, spec.num_classes)
    blocks = [(f"stages.{i}.blocks.{j}", b) for i, st in enumerate(model.stages)
              for j, b in enumerate(st.blocks)]
    per_block = measure_saved(model, x, spec.num_classes, parts=blocks).by_part
    outside = sum(v for k, v in per_block.items() if not k.startswith("stages."))
    inputs = []
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for _, b in blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    block_inputs = sum(t.untyped_storage().nbytes() for t in inputs)
    # Each block input is a fresh tensor (a block's output or a downsampling's), and a
    # part outside the blocks may save it as well: counted once.
    assert max(outside, block_inputs) <= r.held_bytes <= outside + block_inputs
    assert r.recompute_bytes == max(v for k, v in per_block.items() if k.startswith("stages."))
    assert r.plain_bytes == measure_saved(model, x, spec.num_classes).total_bytes
    # even three one-block stages gain (deep stages gain far more: docs/benchmarks.md)
    assert r.held_bytes < 0.3 * r.plain_bytes and r.peak_bytes < 0.8 * r.plain_bytes
    assert not model.grad_checkpointing  # left as it was
