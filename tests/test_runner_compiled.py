"""The runner with the CUDA defaults emulated on CPU (torch.compile + channels_last + bf16
autocast, gloo DDP): it trains, validates (a partial last batch included), resumes, and
the global-filter hybrid trains channels-last. On a GPU machine the same runs with the
real CUDA defaults (NCCL, GPU autocast, the device-side input step on the GPU)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from devices import needs_cuda
from conftest import (ROOT, runner as mfdsl, runner_env as _env, train_spec as tiny_spec,
                      weights, write_colour_folder, write_spec)

pytestmark = pytest.mark.slow


def _killed_then_resumed(cmd: list, out: Path, world_size: int) -> None:
    """Run ``cmd`` killed after step 3 (its step-2 checkpoint stays), resume it to the end,
    and check that the run resolved the GPU defaults."""
    p = subprocess.run(cmd, cwd=ROOT, env=_env(MFDSL_TEST_KILL_AFTER_STEP="3"),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    state = torch.load(out / "checkpoints" / "last.state.pt", weights_only=True)
    assert state["step"] == 2
    r = subprocess.run(cmd + ["--resume", "auto"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "resumed from" in r.stdout and "Traceback" not in r.stderr
    resolved = json.loads((out / "recipe.json").read_text())["resolved"]
    assert resolved["world_size"] == world_size and resolved["compile"] is True
    assert resolved["channels_last"] is True and resolved["amp"] is True


def test_two_process_ddp_compiled_trains_and_resumes(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", n_train=11, n_val=4)  # 33 train, 12 val
    spec = write_spec(tmp_path / "aug.mf", tiny_spec(
        name="aug", mixup=0.8, cutmix=1.0, drop_path=0.1, label_smoothing=0.1))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "mfdsl.runner", "train", spec, "--data", str(data), "-o", str(out),
           "--workers", "0", "--per-device-batch", "4", "--log-every", "1", "--device", "cpu",
           "--compile", "--channels-last", "--amp", "--ckpt-every", "2"]
    _killed_then_resumed(cmd, out, world_size=2)
    summary = json.loads((out / "summary.json").read_text())
    # 12 val images over 2 ranks at batch 4: each rank's last batch is partial (4 + 2)
    assert summary["steps"] == 8 and summary["final_val"]["images"] == 12
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text()
              .splitlines() if json.loads(line)["kind"] == "train"]
    assert len(losses) == 8 and all(0 < v < 10 for v in losses)
    assert all(torch.isfinite(t).all()
               for t in weights(out / "checkpoints" / "last.safetensors").values())


def test_global_filter_hybrid_trains_channels_last(tmp_path: Path) -> None:
    """The zoo's GFNet hybrid with channels_last + bf16 (it used to stop with 'Tensor must
    have a last dimension with stride 1': the whole model was converted)."""
    data = write_colour_folder(tmp_path / "data", n_train=4, n_val=2)
    out = tmp_path / "gf"
    p = mfdsl("train", str(ROOT / "specs" / "hybrid_gfnet_caformer.mf"), "--img-size", "64",
              "--max-steps", "2", "--channels-last", "--amp", "--data", str(data),
              "--batch-size", "4", "--workers", "0", "-o", str(out), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final_val"]["images"] == 6
    resolved = json.loads((out / "recipe.json").read_text())["resolved"]
    assert resolved["channels_last"] is True


@needs_cuda
def test_cuda_defaults_ddp_train_resume_and_eval(tmp_path: Path) -> None:
    """On a GPU with no flags, the configuration users train with: torch.compile +
    channels_last + bf16 autocast, DDP over NCCL under torchrun, uint8 batches from pinned
    memory normalised and erased on the GPU. Killed after step 3 and resumed, the run
    finishes; eval of its checkpoint on the GPU (a partial last batch) reproduces the final
    validation."""
    data = write_colour_folder(tmp_path / "data", n_train=11, n_val=5)  # 33 train, 15 val
    spec = write_spec(tmp_path / "aug.mf", tiny_spec(
        name="aug", randaugment="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0,
        random_erasing=1.0, drop_path=0.1, label_smoothing=0.1, amp=True))
    out = tmp_path / "cuda"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "1", "-m", "mfdsl.runner", "train", spec, "--data", str(data), "-o", str(out),
           "--workers", "2", "--per-device-batch", "4", "--log-every", "1", "--ckpt-every", "2"]
    _killed_then_resumed(cmd, out, world_size=1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["final_val"]["images"] == 15  # accum 2
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text()
              .splitlines() if json.loads(line)["kind"] == "train"]
    assert len(losses) == 8 and all(0 < v < 10 for v in losses)
    e = mfdsl("eval", spec, "--checkpoint", str(out / "checkpoints" / "last.safetensors"),
              "--data", str(data), "--json", "--workers", "0", "--batch-size", "4",
              timeout=600)
    assert e.returncode == 0, e.stderr[-3000:]
    res, final = json.loads(e.stdout), summary["final_val"]
    assert res["images"] == 15 and "cuda" in res.get("device", "cuda")
    # bf16 autocast in both; one image's worth of top-1 at most
    assert abs(res["top1"] - final["top1"]) <= 100 / 15 + 1e-6
    # tolerance: bf16 autocast on both sides (eps 7.8e-3) through a whole model
    assert res["loss"] == pytest.approx(final["loss"], rel=2e-2, abs=2e-2)


@needs_cuda
@pytest.mark.parametrize("flags", [(), ("--no-compile",)])
def test_cuda_demo_trains_with_builtin_data(tmp_path: Path, flags: tuple) -> None:
    """The README's main job on a GPU: the built-in offline data, the CUDA defaults (and
    eager), a finite loss and a checkpoint."""
    out = tmp_path / "demo"
    p = mfdsl("train", str(ROOT / "specs" / "demo_tiny.mf"), "--max-steps", "12", "-o",
              str(out), "--no-tensorboard", "--no-progress", *flags, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and 0 < summary["final_val"]["loss"] < 10
    resolved = json.loads((out / "recipe.json").read_text())["resolved"]
    assert resolved["compile"] is (not flags) and resolved["channels_last"] is True


@needs_cuda
def test_cuda_graphs_step_equals_the_compiled_step(tmp_path: Path) -> None:
    """--cuda-graphs replays the compiled step: the same losses as without it, with
    gradient accumulation (a replay per micro-batch) and EMA, and the same validation."""
    data = write_colour_folder(tmp_path / "data", n_train=6, n_val=3)  # 18 train, 9 val
    spec = write_spec(tmp_path / "s.mf", tiny_spec(name="cg", ema=0.99, amp=True))
    runs = {}
    for name, flags in (("plain", ()), ("graphs", ("--cuda-graphs",))):
        out = tmp_path / name
        p = mfdsl("train", spec, "--data", str(data), "-o", str(out), "--workers", "0",
                  "--per-device-batch", "4", "--accum", "2", "--log-every", "1",
                  "--max-steps", "4", "--no-tensorboard", "--no-progress", *flags,
                  timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        runs[name] = [json.loads(line) for line in (out / "metrics.jsonl").read_text()
                      .splitlines()]
        resolved = json.loads((out / "recipe.json").read_text())["resolved"]
        assert resolved["cuda_graphs"] is (name == "graphs")
    losses = {k: [r["loss"] for r in v if r["kind"] == "train"] for k, v in runs.items()}
    assert len(losses["plain"]) == 4
    # tolerance: bf16 autocast; the same kernels replayed, so usually bit-equal
    assert losses["graphs"] == pytest.approx(losses["plain"], rel=1e-2, abs=1e-3)
    vals = {k: [r["top1"] for r in v if r["kind"] == "val"] for k, v in runs.items()}
    assert vals["graphs"] == vals["plain"]
