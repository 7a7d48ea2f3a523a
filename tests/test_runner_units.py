"""Unit tests of the runner's parts: batch planning, LR schedule, weight-decay groups,
atomic checkpoints, corrupt-image handling across workers, sampler resume, the embedded
dataset, and the CLI's error paths."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mfdsl.run_options import CROP_SCALE_MIN
from mfdsl import ir
from mfdsl.cli import main
from mfdsl.runner import checkpointing as ckpt
from mfdsl.runner.errors import DataError, RunError
from mfdsl.data.dataset import (ResumableDistributedSampler, ShardSampler,
                                      SkippingImageFolder, UnreadableImages, make_loader)
from mfdsl.runner.optim import create_optimizer, param_groups
from mfdsl.runner.schedule import schedule_for
from mfdsl.runner.options import plan_batches, scaled_lr


def test_plan_batches_derives_the_missing_number() -> None:
    assert plan_batches(8, 4096, per_device=128).accum == 4
    assert plan_batches(8, 4096, accum=4).per_device == 128
    p = plan_batches(2, 4096, global_batch=None, per_device=32, accum=2)
    assert p.global_batch == 128
    auto = plan_batches(1, 4096)  # only the recipe's batch: capped micro-batch
    assert auto.per_device * auto.accum == 4096 and auto.per_device <= 128
    with pytest.raises(RunError, match="not a multiple"):
        plan_batches(3, 4096, per_device=128)
    with pytest.raises(RunError, match="does not equal"):
        plan_batches(1, 4096, global_batch=100, per_device=10, accum=2)


def test_lr_is_scaled_to_the_real_batch() -> None:
    r = ir.RecipeSpec(lr=4e-3, lr_batch=4096)
    assert scaled_lr(r, 1024) == pytest.approx(1e-3)


def test_schedule_warmup_cosine_and_constant() -> None:
    r = ir.RecipeSpec(epochs=11, warmup_epochs=1, warmup_lr=0.0, min_lr=0.1, sched_unit="step",
                      warmup_mode="prefix")
    s = schedule_for(r, 1.0, steps_per_epoch=10)
    assert s.lr_at(0) == 0.0 and s.lr_at(5) == pytest.approx(0.5)
    assert s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(60) == pytest.approx(0.55)
    lrs = [s.lr_at(i) for i in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] > 0.1
    c = schedule_for(ir.RecipeSpec(epochs=10, warmup_epochs=0, sched="constant",
                                   cooldown_epochs=0), 0.3, steps_per_epoch=10)
    assert c.lr_at(0) == c.lr_at(99) == 0.3


def test_no_weight_decay_on_1d_params_and_frozen_params_left_out() -> None:
    from mfdsl.api import build_model

    spec = ir.ModelSpec(name="r", img_size=(32, 32), num_classes=3, stages=[
        ir.StageSpec(depth=1, width=16, mixers=[ir.call("random")], res_scale=1.0)])
    model = build_model(spec)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert any(n.endswith("act.scale") for n in nd) and any("res_scale" in n for n in nd)
    assert any(n.endswith("norm1.weight") for n in nd) and "head.fc.bias" in nd
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen, "RandomMixing's matrix should be frozen"
    in_opt = {id(p) for g in (decay, no_decay) for p in g["params"]}
    assert not any(id(p) in in_opt for p in frozen)
    for name in ("adamw", "lamb", "sgd"):
        opt = create_optimizer(model, ir.RecipeSpec(optimizer=name), 1e-3)
        assert len(opt.param_groups) == 2
    assert type(create_optimizer(model, ir.RecipeSpec(optimizer="lamb"), 1e-3)).__name__ \
        == "FusedLamb"


def test_checkpoint_pairs_atomic_links_prune_and_weights_only(tmp_path: Path) -> None:
    w = ckpt.CheckpointWriter(str(tmp_path), keep_recent=2)
    for step in (1, 2, 3):
        sd = {"a": torch.full((2,), float(step))}
        w.save(step, 0, sd, {"rng": [ckpt.capture_rng()], "batches_in_epoch": step},
               is_best=step == 2)
    names = sorted(os.listdir(tmp_path))
    assert "ckpt-00000001.safetensors" not in names  # pruned: keep_recent=2
    assert {"ckpt-00000002.safetensors", "ckpt-00000003.state.pt", "last.safetensors",
            "best.safetensors"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    assert ckpt.pair_step(str(tmp_path / "best")) == 2
    assert ckpt.find_latest(str(tmp_path)) == str(tmp_path / "last")
    state = torch.load(tmp_path / "last.state.pt", weights_only=True)
    assert state["step"] == 3 and state["format"] == ckpt.STATE_FORMAT
    # A mismatched pair (as after a crash between the two renames) is not used.
    os.replace(tmp_path / "ckpt-00000002.state.pt", tmp_path / "last.state.pt")
    assert ckpt.pair_step(str(tmp_path / "last")) is None
    assert ckpt.find_latest(str(tmp_path)).endswith("ckpt-00000003")
    with pytest.raises(RunError, match="not found"):
        ckpt.resolve_resume(str(tmp_path / "nope.safetensors"), str(tmp_path))


def test_rng_capture_restore_roundtrip() -> None:
    import random

    import numpy as np

    st = ckpt.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def _folder(root: Path, n: int = 6) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / c / f"{i}.png")
    return root


def test_corrupt_images_replaced_and_counted_across_workers(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    (root / "a" / "2.png").write_bytes(b"not an image")
    (root / "b" / "junk.jpg").write_bytes(random.Random(0).randbytes(64))
    import torchvision.transforms as T

    ds = SkippingImageFolder(str(root), T.ToTensor())
    assert ds.classes == ["a", "b"] and len(ds) == 13
    loader = make_loader(ds, ShardSampler(len(ds)), 4, 2, 0, drop_last=False, pin_memory=False)
    log = UnreadableImages("train")
    for _, _, failures in loader:
        log.add_batch(ds, failures)
    assert sorted(os.path.basename(p) for p in log.paths()) == ["2.png", "junk.jpg"]
    img, target, failures = ds[2]
    assert [ds.samples[j][0] for j, _ in failures] == [str(root / "a" / "2.png")]
    assert img.shape == (3, 8, 8) and "UnidentifiedImageError" in failures[0][1]
    for f in (root / "a").iterdir():
        f.write_bytes(b"x")
    for f in (root / "b").iterdir():
        f.write_bytes(b"x")
    with pytest.raises(DataError, match="could be decoded"):
        ds[0]
    # From a worker process, the same error arrives as its own message, not a traceback.
    with pytest.raises(DataError) as info:
        next(iter(make_loader(ds, ShardSampler(len(ds)), 4, 1, 0, drop_last=False,
                              pin_memory=False)))
    assert str(info.value).startswith("none of") and "Traceback" not in str(info.value)


def test_data_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        SkippingImageFolder(str(tmp_path / "missing"))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no image files"):
        SkippingImageFolder(str(tmp_path / "empty"))


def test_sampler_resumes_mid_epoch_and_shards() -> None:
    ds = list(range(20))
    full = list(ResumableDistributedSampler(ds, 1, 0, seed=3).__iter__())
    s = ResumableDistributedSampler(ds, 1, 0, seed=3)
    s.set_position(0, 8)
    assert list(s) == full[8:] and len(s) == 12
    s.set_position(1, 0)
    assert [k[0] for k in s] != [k[0] for k in full]  # a new epoch reshuffles
    r0 = [k[0] for k in ResumableDistributedSampler(ds, 2, 0, seed=3)]
    r1 = [k[0] for k in ResumableDistributedSampler(ds, 2, 1, seed=3)]
    assert sorted(r0 + r1) == list(range(20))


def test_tinyshapes_is_deterministic_real_files(tmp_path: Path) -> None:
    from mfdsl.data.tinyshapes import CLASSES, generate

    a = generate(tmp_path / "a", 2, 1, size=32)
    b = generate(tmp_path / "b", 2, 1, size=32)
    files = sorted(p.relative_to(a) for p in a.rglob("*.*"))
    assert len(files) == len(CLASSES) * 3
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes()
    assert Image.open(a / "val" / "star" / "star_0000.jpg").format == "JPEG"
    assert Image.open(a / "train" / "ring" / "ring_0001.png").size == (32, 32)


def test_cli_errors_exit_nonzero_without_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "t.mf"
    spec.write_text("model t {\n  input 3x32x32\n  classes 3\n  stage pooling x1 @16\n}\n")
    runner = CliRunner()
    r = runner.invoke(main, ["train", str(spec), "--data", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such folder" in r.output
    bad = tmp_path / "bad.mf"
    bad.write_text("model t {\n  stage nosuchmixer x1 @16\n}\n")
    r = runner.invoke(main, ["train", str(bad), "--data", str(tmp_path)])
    assert r.exit_code == 2 and "error" in r.output
    r = runner.invoke(main, ["train", str(spec), "--data", str(tmp_path), "--lr", "-1"])
    assert r.exit_code == 2 and "command-line recipe value" in r.output
    _folder(tmp_path / "data" / "val")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"garbage")
    r = runner.invoke(main, ["eval", str(spec), "--checkpoint", str(junk), "--data",
                             str(tmp_path / "data"), "--workers", "0"])
    assert r.exit_code == 2 and "checkpoint" in r.output
    for res in (r,):
        assert res.exc_info is None or res.exc_info[0] is SystemExit


def test_paper_randaugment_never_crashes_on_max_posterize() -> None:
    # rand-m9-mstd0.5 reaches level 10, where timm asks Pillow for 0-bit posterize.
    from mfdsl.data.transforms import _posterize, train_transform

    assert _posterize(Image.new("RGB", (4, 4), (200, 10, 10)), 0).getpixel((0, 0)) == (0, 0, 0)
    tf = train_transform(ir.RecipeSpec(randaugment="rand-m10-mstd0.5-inc1"), (16, 16),
                         (0.5,) * 3, (0.5,) * 3, crop_scale_min=CROP_SCALE_MIN)
    img = Image.new("RGB", (16, 16), (100, 50, 200))
    torch.manual_seed(0)
    for _ in range(400):
        tf(img)
