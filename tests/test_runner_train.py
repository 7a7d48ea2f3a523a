"""End-to-end runner tests: `mfdsl train` / `mfdsl eval` in subprocesses on tiny image folders.

Covers: accuracy above chance, eval reproducing the final val accuracy, corrupt images
skipped and counted, SIGKILL + resume == uninterrupted (bitwise), NaN policies leaving the
last good checkpoint byte-identical, and a two-process CPU DDP run.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import (ROOT, runner as mfdsl, runner_env as _env, train_spec as tiny_spec, weights,
                      write_colour_folder, write_spec)


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.slow
def test_train_beats_chance_eval_reproduces_and_skips_corrupt(tmp_path: Path) -> None:
    data = write_colour_folder(tmp_path / "data", n_train=32, n_val=12)
    # Corrupt files: random bytes, a truncated PNG, an empty JPEG.
    good = next((data / "train" / "c0_red").glob("*.png")).read_bytes()
    # A newline in a name must not split the report.
    (data / "train" / "c0_red" / "bad\nrandom.png").write_bytes(random.Random(0).randbytes(500))
    (data / "train" / "c1_green" / "bad_trunc.png").write_bytes(good[: len(good) // 2])
    (data / "val" / "c2_blue" / "bad_empty.jpg").write_bytes(b"")
    # 98 train images: with per-device 14 and drop_last every image is visited each epoch.
    spec = write_spec(tmp_path / "tiny.mf", tiny_spec(
        epochs=6, batch_size=14, lr=1e-2, lr_batch=14, label_smoothing=0.0, randaugment=None,
        mixup=0.0, cutmix=0.0, random_erasing=0.0))
    out = tmp_path / "run"
    p = mfdsl("train", spec, "--data", str(data), "-o", str(out), "--workers", "2",
              "--log-every", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final_val"]
    assert final["images"] == 36
    assert final["top1"] > 60.0, summary  # chance is 33%
    # Two distinct unreadable training images, each failing once in each of 6 epochs;
    # one in val.
    assert summary["skipped_images"] == 2 and summary["skipped_image_fetches"] == 2 * 6
    assert final["skipped_images"] == 1
    assert "skipped 2 unreadable training image(s)" in p.stdout
    report = [json.loads(line) for line in
              (out / "skipped_images.txt").read_text().splitlines()]
    assert sorted((r["split"], os.path.basename(r["path"]), r["attempts"]) for r in report) == [
        ("train", "bad\nrandom.png", 6), ("train", "bad_trunc.png", 6),
        ("val", "bad_empty.jpg", 6)]
    # The run folder.
    for name in ("spec.mf", "recipe.json", "environment.json", "metrics.jsonl", "epochs.csv",
                 "curves.png", "checkpoints/last.safetensors", "checkpoints/last.state.pt",
                 "checkpoints/best.safetensors"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    env_json = json.loads((out / "environment.json").read_text())
    assert env_json["torch"] == torch.__version__ and "train" in env_json["command"]
    resolved = json.loads((out / "recipe.json").read_text())["resolved"]
    assert resolved["global_batch"] == 14 and resolved["lr"] == pytest.approx(1e-2)
    state = torch.load(out / "checkpoints" / "last.state.pt", weights_only=True)
    assert state["step"] == summary["steps"] == 6 * 7
    # eval of the saved checkpoint reproduces the final val metrics exactly.
    e = mfdsl("eval", spec, "--checkpoint", str(out / "checkpoints" / "last.safetensors"),
              "--data", str(data), "--json", "--workers", "0")
    assert e.returncode == 0, e.stderr[-3000:]
    res = json.loads(e.stdout)
    # tolerance: count ratios and a mean loss of the same weights on the same images
    assert res["top1"] == pytest.approx(final["top1"], abs=1e-9)
    assert res["top5"] == pytest.approx(final["top5"], abs=1e-9)
    assert res["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert res["skipped_images"] == 1 and res["img_s"] > 0
    # A finished run folder is not silently overwritten.
    again = mfdsl("train", spec, "--data", str(data), "-o", str(out), "--max-steps", "1")
    assert again.returncode == 2 and "--resume auto" in again.stderr
    assert "Traceback" not in again.stderr


# ----------------------------------------------------------------------------- resume / NaN
@pytest.fixture(scope="module", params=["adamw", "lamb"])
def resume_setup(request, tmp_path_factory):
    """Data + spec with every augmentation on (RandAugment, mixup/cutmix, random erasing,
    drop path) so that resuming must restore every RNG stream; 2 epochs x 4 steps. Once
    with each optimizer the runner implements its own way (fused AdamW, the foreach LAMB:
    their non-finite skip and state round trip differ)."""
    tmp = tmp_path_factory.mktemp("resume")
    data = write_colour_folder(tmp / "data", n_train=11, n_val=4)  # 33 -> 4 batches of 8
    # An unreadable file: its accounting must survive the SIGKILL + resume too.
    (data / "train" / "c1_green" / "zz_bad.png").write_bytes(b"")
    spec = write_spec(tmp / "aug.mf", tiny_spec(
        name="aug", randaugment="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0,
        random_erasing=0.25, drop_path=0.1, label_smoothing=0.1, optimizer=request.param))
    common = ["--data", str(data), "--ckpt-every", "3", "--keep-recent", "10",
              "--log-every", "1"]
    ref = tmp / "ref"
    p = mfdsl("train", spec, "-o", str(ref), "--workers", "0", *common)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp, spec, common, ref


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(resume_setup) -> None:
    tmp, spec, common, ref = resume_setup
    run = tmp / "killed"
    # Killed after step 7: the last checkpoint is step 6, two steps into epoch 2.
    # Two workers here vs none in the reference: per-sample seeding makes them equal.
    p = mfdsl("train", spec, "-o", str(run), "--workers", "2", *common,
              env=_env(MFDSL_TEST_KILL_AFTER_STEP="7"))
    assert p.returncode == -9, (p.returncode, p.stderr[-2000:])
    state = torch.load(run / "checkpoints" / "last.state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (6, 1, 2)
    r = mfdsl("train", spec, "-o", str(run), "--workers", "2", "--resume", "auto", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    a = weights(ref / "checkpoints" / "last.safetensors")
    b = weights(run / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Optimizer state continues identically too.
    sa = torch.load(ref / "checkpoints" / "last.state.pt", weights_only=True)
    sb = torch.load(run / "checkpoints" / "last.state.pt", weights_only=True)
    for i, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], sb["optimizer"]["state"][i]["exp_avg"])
    # The unreadable file is reported once, with the same fetch count as without the kill.
    ja = json.loads((ref / "summary.json").read_text())
    jb = json.loads((run / "summary.json").read_text())
    assert ja["skipped_images"] == jb["skipped_images"] == 1
    assert ja["skipped_image_fetches"] == jb["skipped_image_fetches"] >= 1
    assert (ref / "skipped_images.txt").read_text() == (run / "skipped_images.txt").read_text()
    # The metrics log holds each step once (records after the checkpoint were dropped).
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == list(range(1, 9))


@pytest.mark.slow
def test_nan_stop_leaves_last_good_checkpoint_intact(resume_setup) -> None:
    tmp, spec, common, ref = resume_setup
    run = tmp / "nan_stop"
    p = mfdsl("train", spec, "-o", str(run), "--workers", "0", "--nan-policy", "stop",
              *common, env=_env(MFDSL_TEST_NAN_AT_STEP="7"))
    assert p.returncode == 3, p.stderr[-2000:]
    assert "non-finite" in p.stderr and "Traceback" not in p.stderr
    last = run / "checkpoints" / "last.safetensors"
    state = torch.load(run / "checkpoints" / "last.state.pt", weights_only=True)
    assert state["step"] == 6
    assert all(torch.isfinite(t).all() for t in weights(last).values())
    # Bitwise the weights the uninterrupted run wrote at step 6 (the files' metadata name
    # different runs).
    good = weights(ref / "checkpoints" / "ckpt-00000006.safetensors")
    got = weights(last)
    assert got.keys() == good.keys() and all(torch.equal(got[k], good[k]) for k in good)


@pytest.mark.slow
def test_nan_skip_policy_skips_and_counts(resume_setup) -> None:
    tmp, spec, common, ref = resume_setup
    run = tmp / "nan_skip"
    p = mfdsl("train", spec, "-o", str(run), "--workers", "0", "--nan-policy", "skip",
              *common, env=_env(MFDSL_TEST_NAN_AT_STEP="2"))
    assert p.returncode == 0, p.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["nan_skipped_steps"] == 1 and summary["steps"] == 8
    assert "step skipped" in p.stdout
    assert all(torch.isfinite(t).all()
               for t in weights(run / "checkpoints" / "last.safetensors").values())


# ----------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_process_cpu_ddp(resume_setup, tmp_path: Path) -> None:
    tmp, spec, _, _ = resume_setup
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "mfdsl.runner", "train", spec, "--data", str(tmp / "data"), "-o",
           str(out), "--workers", "0", "--per-device-batch", "4", "--log-every", "1",
           "--device", "cpu"]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-4000:]
    resolved = json.loads((out / "recipe.json").read_text())["resolved"]
    assert resolved["world_size"] == 2 and resolved["accum"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["final_val"]["images"] == 12
    # Unreadable files are merged over ranks: distinct files, fetches summed.
    txt = out / "skipped_images.txt"
    report = [json.loads(line) for line in txt.read_text().splitlines()] if txt.exists() else []
    assert len(report) == summary["skipped_images"] <= 1
    assert sum(r["attempts"] for r in report) == summary["skipped_image_fetches"]
    state = torch.load(out / "checkpoints" / "last.state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # both ranks' RNG streams are kept
    assert all(torch.isfinite(t).all()
               for t in weights(out / "checkpoints" / "last.safetensors").values())
