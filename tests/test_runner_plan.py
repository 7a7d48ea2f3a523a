"""The run plan in real runs, the schedule's other shapes, fine-tune init, EMA selection and
random erasing on the mixed batch."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import run, smooth_cosine_lr, tiny_mf
from tolerances import assert_close
from mfdsl.ir import RecipeSpec
from mfdsl.runner.schedule import Schedule, schedule_for
from mfdsl.data.transforms import BatchPreprocess, PendingErasing

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "specs" / "demo_tiny.mf")
FAST = ["--epochs", "1", "--warmup-epochs", "0", "--workers", "0", "--no-tensorboard",
        "--batch-size", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for split in ("train", "val"):
        for cls, colour in (("a", 30), ("b", 220)):
            (root / split / cls).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (20, 20), (colour, 40 * i % 256, 0)).save(
                    root / split / cls / f"{i}.png")
    return root


# --- schedule ---------------------------------------------------------------------------
def test_per_step_prefix_schedule_is_the_smooth_cosine() -> None:
    """sched_unit step + warmup_mode prefix: warmup, then a cosine over the remaining steps."""
    r = RecipeSpec(epochs=11, warmup_epochs=1, warmup_lr=0.0, min_lr=0.1, sched_unit="step",
                   warmup_mode="prefix")
    s = schedule_for(r, 1.0, steps_per_epoch=10)
    assert s.total_steps == 110 and s.warmup_steps == 10
    assert [s.lr_at(i) for i in range(110)] == pytest.approx(
        [smooth_cosine_lr(i, 1.0, 110, 10, 0.0, 0.1) for i in range(110)])
    assert len({s.lr_at(i) for i in range(10, 110)}) == 100  # changes at every step


def test_epoch_schedule_changes_only_at_epoch_boundaries_and_cools_down() -> None:
    r = RecipeSpec(epochs=10, warmup_epochs=2, cooldown_epochs=3, min_lr=1e-5)
    s = schedule_for(r, 1e-3, steps_per_epoch=4)
    lrs = s.lrs()
    assert s.total_epochs == 13 and len(lrs) == 52
    for e in range(13):
        assert len(set(lrs[4 * e:4 * e + 4])) == 1
    assert lrs[0] == r.warmup_lr  # epoch 0 runs at warmup_lr
    assert max(lrs) < 1e-3  # warmup inside the cosine: the peak is never reached
    assert lrs[-12:] == [1e-5] * 12  # the cooldown epochs
    assert lrs[4 * 2] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.2)))


def test_max_steps_compresses_the_schedule() -> None:
    r = RecipeSpec(epochs=10, warmup_epochs=2, cooldown_epochs=2)
    full = schedule_for(r, 1e-3, steps_per_epoch=10)
    short = schedule_for(r, 1e-3, steps_per_epoch=10, max_steps=12)
    assert short.total_steps == 12 and full.total_steps == 120
    assert [short.lr_at(i) for i in range(12)] == [full.lr_at(i * 10) for i in range(12)]
    assert short.warmup_steps == 2


def test_cooldown_or_warmup_mode_with_a_constant_schedule_is_refused(tmp_path) -> None:
    no_mode = tmp_path / "no_mode.mf"
    no_mode.write_text("".join(line for line in Path(DEMO).read_text().splitlines(True)
                               if "warmup_mode" not in line))
    code, out = run("train", no_mode, "--dry-run", "--sched", "constant", "--cooldown-epochs", "2")
    assert code == 2 and "cooldown_epochs" in out, out
    spec = tmp_path / "c.mf"
    spec.write_text(no_mode.read_text().replace("    epochs          30\n",
                                                   "    epochs          30\n    sched constant\n"
                                                   "    warmup_mode prefix\n"))
    code, out = run("validate", spec)
    assert code != 0 and "c.mf:" in out and "warmup_mode is set but the constant" in out


# --- random erasing on the mixed batch ----------------------------------------------------
def test_erasing_fills_the_mixed_batch_with_each_samples_noise() -> None:
    from timm.data import Mixup

    torch.manual_seed(0)
    imgs = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    regions = torch.tensor([[2, 3, 5, 6, 11], [0, 0, 0, 0, 0], [1, 1, 4, 4, 12], [0, 0, 0, 0, 0]])
    prep = BatchPreprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, pending = prep.prepare(PendingErasing(imgs, regions))
    assert torch.equal(pending, regions)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, mode="batch", num_classes=4)
    mixed, _ = mixup(x.clone(), torch.arange(4))
    expected_outside = mixed.clone()
    prep.erase(mixed, pending)
    # Inside a region: the sample's own noise, unblended; outside: the mixed images.
    alone = prep(PendingErasing(imgs, regions))  # erased before any mixing
    assert torch.equal(mixed[0, :, 2:7, 3:9], alone[0, :, 2:7, 3:9])
    assert torch.equal(mixed[2, :, 1:5, 1:5], alone[2, :, 1:5, 1:5])
    keep = torch.ones_like(mixed, dtype=torch.bool)
    keep[0, :, 2:7, 3:9] = False
    keep[2, :, 1:5, 1:5] = False
    assert torch.equal(mixed[keep], expected_outside[keep])


# --- real runs ------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_run_is_its_dry_run_plan_step_for_step_and_ema_selects_best(data, tmp_path
                                                                         ) -> None:
    out = tmp_path / "run"
    args = ["--data", data, *FAST, "--ema", "0.9", "--epochs", "2", "--warmup-epochs", "1",
            "--log-every", "1"]
    code, text = run("train", DEMO, *args, "-o", out)
    assert code == 0, text
    plan = json.loads((out / "plan.json").read_text())
    code, dry = run("train", DEMO, *args, "--dry-run", "--json")
    assert code == 0, dry
    assert json.loads(dry) == plan  # the dry run is the plan the run was built from
    # ... and the run did what it planned: the lr of every step, the steps, the batch.
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    used = [r["lr"] for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(
        range(1, plan["total_steps"] + 1))
    assert used == Schedule.from_record(plan["schedule"]).lrs()
    assert used[0] < used[plan["warmup_steps"]]  # a warmup was planned and run
    recipe = json.loads((out / "recipe.json").read_text())["resolved"]
    assert (recipe["global_batch"], recipe["total_steps"]) == (plan["global_batch"],
                                                               plan["total_steps"])
    assert plan["ema"] == {"decay": 0.9} and plan["best_selected_by"] == "EMA top-1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_selected_by"] == plan["best_selected_by"]
    assert summary["best_checkpoint"].endswith("best.ema.safetensors")
    assert Path(summary["best_checkpoint"]).exists()
    assert {"top1", "ema_top1"} <= set(summary["final_val"])
    assert summary["best_top1"] == summary["final_val"]["ema_top1"]


@pytest.mark.slow
def test_finetune_from_starts_from_the_named_run_or_refuses(data, tmp_path) -> None:
    first = tmp_path / "first"
    code, text = run("train", DEMO, "--data", data, *FAST, "-o", first)
    assert code == 0, text
    code, text = run("train", DEMO, "--data", data, *FAST, "--finetune-from", first,
                     "-o", tmp_path / "second")
    assert code == 0, text
    assert f"fine-tuning from {first}" in text
    plan = json.loads((tmp_path / "second" / "plan.json").read_text())
    assert plan["init_from"]["kind"] == "finetune_from"
    code, text = run("train", DEMO, "--data", data, *FAST, "--finetune-from",
                     tmp_path / "nothing", "-o", tmp_path / "third")
    assert code == 2 and "finetune_from" in text and "not a known release name" in text
    assert not (tmp_path / "third" / "checkpoints").exists()
    code, text = run("train", DEMO, "--data", data, *FAST, "--finetune-from",
                     tmp_path / "nothing", "--from-scratch", "-o", tmp_path / "fourth")
    assert code == 0, text


@pytest.mark.slow
def test_paper_model_run_says_where_it_deviates(data, tmp_path) -> None:
    out = tmp_path / "run"
    code, text = run("train", str(ROOT / "specs" / "identityformer_s12.mf"), "--data", data,
                     *FAST, "--max-steps", "1", "--img-size", "32", "--amp", "-o", out)
    assert code == 0, text
    assert "deviates from the official recipe" in text
    assert "precision: official fp32, this run bf16" in text
    devs = {d["item"] for d in json.loads((out / "plan.json").read_text())
            ["deviations_from_official"]}
    assert {"precision", "img_size", "global_batch", "epochs"} <= devs


# --- attention(heads=N) ---------------------------------------------------------------------
def _attention_pair(dim: int, heads: int):
    from timm.models.metaformer import Attention as TimmAttention

    from mfdsl.api import build_model
    from mfdsl.frontend.mf import parse_mf

    spec = parse_mf(f"model a {{\n  input 3x32x32\n  classes 5\n"
                    f"  stage attention(heads={heads}) x1 @{dim}\n}}\n", "a.mf")
    mine = next(m for m in build_model(spec).modules() if type(m).__name__ == "Attention")
    ref = TimmAttention(dim, head_dim=32, num_heads=heads)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    mine.load_state_dict({k: v.reshape(mine.state_dict()[k].shape)
                          for k, v in ref.state_dict().items()})
    return mine, ref


@pytest.mark.parametrize("dim,heads", [(64, 4), (64, 1), (96, 5), (64, 2), (128, 4)])
def test_attention_heads_build_what_timm_num_heads_builds(dim: int, heads: int) -> None:
    """heads=N keeps head_dim 32: attention width N x 32, whatever the stage width."""
    mine, ref = _attention_pair(dim, heads)
    assert (mine.num_heads, mine.head_dim) == (ref.num_heads, ref.head_dim) == (heads, 32)
    assert {k: v.shape for k, v in mine.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()}
    assert mine(torch.randn(2, 4, 4, dim)).shape == (2, 4, 4, dim)


@pytest.mark.parametrize("dim,heads", [(64, 2), (128, 4), (320, 10)])
def test_attention_heads_compute_what_timm_computes(dim: int, heads: int) -> None:
    # timm's forward reshapes the heads back to `dim` channels, so it runs only where
    # heads x head_dim == dim (the official code's reshape to attention_dim runs always).
    mine, ref = _attention_pair(dim, heads)
    x = torch.randn(2, 4, 4, dim)
    with torch.no_grad():
        want = ref(x.reshape(2, 16, dim)).reshape(2, 4, 4, dim)  # timm's takes (B, N, C)
        # four chained products (qkv, q.k, weights.v, proj), the longest over `dim`
        assert_close(mine(x), want, k=dim, steps=4)


# --- the plan as a new user meets it (issue: the new paths, tried as a new user would) -----
def test_a_huge_dry_run_is_described_not_enumerated() -> None:
    """A schedule of billions of steps is a record of its shape (one entry per epoch), not
    a list of every step's lr; the lr of any step is still exact from that record."""
    import time

    t0 = time.perf_counter()
    code, out = run("train", "specs/caformer_s18.mf", "--dry-run", "--json",
                    "--dataset-size", 10**11)
    assert code == 0, out
    assert time.perf_counter() - t0 < 60
    assert len(out) < 200_000
    plan = json.loads(out)
    assert "lr_per_step" not in plan and plan["total_steps"] > 10**9
    sched = Schedule.from_record(plan["schedule"])
    assert len(plan["lr_milestones"]) <= plan["total_epochs"] + 1
    for mark in plan["lr_milestones"]:
        assert sched.lr_at(mark["step"]) == mark["lr"]


def test_a_max_steps_plan_says_it_is_shortened() -> None:
    code, out = run("train", "specs/caformer_s18.mf", "--dry-run", "--dataset-size",
                    1281167, "--max-steps", 100)
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith("steps:"))
    assert line.startswith("steps: 100 (--max-steps;") and "96720" in line, line


def test_the_dry_run_refuses_the_data_the_run_refuses(tmp_path) -> None:
    """The dry run opens --data as training does: more classes than the head, and a val
    class that training lacks, are refused by both with one message."""
    from conftest import solid_folder

    spec = tmp_path / "t.mf"
    spec.write_text(tiny_mf())  # 3 classes
    many = solid_folder(tmp_path / "many", 1, {f"c{i}": 20 * i for i in range(4)})
    odd = solid_folder(tmp_path / "odd", 2, {"a": 10, "b": 200})
    (odd / "val" / "zzz").mkdir()
    Image.new("RGB", (20, 20)).save(odd / "val" / "zzz" / "0.png")
    for data, want in ((many, "4 classes but the spec's head has num_classes 3"),
                       (odd, "zzz")):
        code, dry = run("train", spec, "--data", data, "--dry-run")
        assert code == 2 and want in dry, dry
        code, real = run("train", spec, "--data", data, "-o", tmp_path / "r", "--workers",
                         "0", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "2")
        assert code == 2 and want in real, real
        assert dry.splitlines()[-1] == real.splitlines()[-1]
        assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.slow
def test_a_run_shorter_than_an_epoch_validates_and_keeps_its_best(data, tmp_path) -> None:
    """The end of a run cut by --max-steps is validated before its last checkpoint, so the
    final figure can be the best, and a run shorter than an epoch has a best at all."""
    out = tmp_path / "r"
    code, text = run("train", DEMO, "--data", data, *FAST, "--max-steps", "2", "-o", out)
    assert code == 0, text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped_at_max_steps" and summary["steps"] == 2
    assert summary["best_top1"] == summary["final_val"]["top1"]
    assert Path(summary["best_checkpoint"]).exists()
