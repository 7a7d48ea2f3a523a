"""The paper specs train as the official scripts do, step for step (docs/training.md,
"The official recipe, step for step").

The official side is built from timm's (and torch's) own objects, configured as the official
train.py configures them from the flags of ``scripts/*/train_*.sh`` and
``finetune_*_384.sh``: timm's ``CosineLRScheduler`` (``t_in_epochs=True``,
``warmup_prefix=False``, stepped once per epoch, ``--cooldown-epochs 10``), the optimizer
from ``timm.optim.create_optimizer_v2`` with no eps passed, and torch's
``DistributedSampler`` for the epoch length. The mfdsl side is ``mfdsl train --dry-run
--json``.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Dict, List

import pytest
import torch

from conftest import run
from mfdsl.runner.schedule import Schedule

IMAGENET_TRAIN = 1_281_167
PROCESSES = 8
# The flags each official script passes (the rest are train.py's defaults).
SCRIPT_FLAGS: Dict[str, Dict[str, Any]] = {
    "caformer_s18": dict(opt="lamb", lr=8e-3, warmup_epochs=20, drop_path=0.15,
                         head_dropout=0.0, batch_per_gpu=128, accum=4),
    "convformer_s18": dict(opt="adamw", lr=4e-3, warmup_epochs=20, drop_path=0.2,
                           head_dropout=0.0, batch_per_gpu=128, accum=4),
    "poolformerv2_s12": dict(opt="adamw", lr=4e-3, warmup_epochs=5, drop_path=0.1,
                             batch_per_gpu=128, accum=4),
    "identityformer_s12": dict(opt="adamw", lr=4e-3, warmup_epochs=5, drop_path=0.1,
                               batch_per_gpu=128, accum=4),
    "caformer_s18_384": dict(opt="lamb", lr=1e-4, sched=None, drop_path=0.3, head_dropout=0.4,
                             batch_per_gpu=32, accum=4, ema=0.9999, epochs=30,
                             mixup=0.0, cutmix=0.0, finetune_from="caformer_s18"),
    "convformer_s18_384": dict(opt="adamw", lr=5e-5, sched=None, drop_path=0.3,
                               head_dropout=0.4, batch_per_gpu=32, accum=4, ema=0.9999,
                               epochs=30, mixup=0.0, cutmix=0.0,
                               finetune_from="convformer_s18"),
}
# train.py's defaults the scripts leave in place.
TRAIN_PY = dict(epochs=300, cooldown_epochs=10, warmup_lr=1e-6, min_lr=1e-5,
                weight_decay=0.05, sched="cosine")
DONE_CHECK = ["caformer_s18", "convformer_s18", "poolformerv2_s12", "identityformer_s12",
              "caformer_s18_384"]


@lru_cache(maxsize=None)
def dry_plan(name: str, *extra: str) -> Dict[str, Any]:
    code, out = run("train", f"specs/{name}.mf", "--dry-run", "--json", "--dataset-size",
                    IMAGENET_TRAIN, "--world-size", PROCESSES, *extra)
    assert code == 0, out
    return json.loads(out)


def official_updates_per_epoch(flags: Dict[str, Any]) -> int:
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(IMAGENET_TRAIN), num_replicas=PROCESSES, rank=0)
    return len(sampler) // flags["batch_per_gpu"] // flags["accum"]  # drop_last loader


def official_lrs(name: str) -> List[float]:
    """The lr of every optimizer step of the official run of ``name``."""
    from timm.scheduler import CosineLRScheduler

    flags = dict(TRAIN_PY, **SCRIPT_FLAGS[name])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=flags["lr"])
    per_epoch = official_updates_per_epoch(flags)
    if flags["sched"] is None:  # --sched None: no scheduler, the optimizer's lr throughout
        return [opt.param_groups[0]["lr"]] * (flags["epochs"] * per_epoch)
    sched = CosineLRScheduler(opt, t_initial=flags["epochs"], lr_min=flags["min_lr"],
                              warmup_lr_init=flags["warmup_lr"],
                              warmup_t=flags["warmup_epochs"], cycle_limit=1,
                              t_in_epochs=True, warmup_prefix=False)
    num_epochs = sched.get_cycle_length() + flags["cooldown_epochs"]
    out: List[float] = []
    updates = 0
    for epoch in range(num_epochs):
        for _ in range(per_epoch):
            out.append(opt.param_groups[0]["lr"])
            updates += 1
            sched.step_update(num_updates=updates)
        sched.step(epoch + 1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", DONE_CHECK)
def test_dry_run_lr_equals_the_official_schedule_at_every_step(name: str) -> None:
    plan = dry_plan(name)
    want = official_lrs(name)
    assert plan["steps_per_epoch"] == official_updates_per_epoch(
        dict(TRAIN_PY, **SCRIPT_FLAGS[name]))
    got = Schedule.from_record(plan["schedule"]).lrs()  # the plan's record is the schedule
    assert plan["total_steps"] == len(want) == len(got)
    worst = max(abs(a - b) / b for a, b in zip(got, want))
    assert worst <= 1e-15, f"{name}: relative lr difference up to {worst}"
    assert plan["deviations_from_official"] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", DONE_CHECK + ["convformer_s18_384"])
def test_optimizer_arguments_equal_the_official(name: str) -> None:
    from timm.optim import create_optimizer_v2

    flags = dict(TRAIN_PY, **SCRIPT_FLAGS[name])
    # train.py: create_optimizer_v2(model, opt, lr, weight_decay) with no eps/betas given.
    ref = create_optimizer_v2(torch.nn.Linear(2, 2), opt=flags["opt"], lr=flags["lr"],
                              weight_decay=flags["weight_decay"])
    plan = dry_plan(name)
    assert plan["optimizer"]["name"] == flags["opt"]
    args = plan["optimizer"]["args"]
    assert args["lr"] == ref.defaults["lr"] and args["eps"] == ref.defaults["eps"]
    assert tuple(args["betas"]) == tuple(ref.defaults["betas"])
    assert args["weight_decay"] == flags["weight_decay"]
    for k, v in args.items():  # every other argument the plan names, as timm resolves it
        if k in ref.defaults and k not in ("weight_decay",):
            assert ref.defaults[k] == (tuple(v) if isinstance(v, list) else v), k


@pytest.mark.slow
@pytest.mark.parametrize("name", ["caformer_s18_384", "convformer_s18_384"])
def test_fine_tune_settings_equal_the_official(name: str) -> None:
    flags = SCRIPT_FLAGS[name]
    plan = dry_plan(name)
    assert plan["global_batch"] == flags["batch_per_gpu"] * flags["accum"] * PROCESSES
    assert plan["ema"]["decay"] == flags["ema"]
    assert plan["regularisation"]["drop_path"] == flags["drop_path"]
    assert plan["regularisation"]["head_dropout"] == flags["head_dropout"]
    assert (plan["augmentation"]["mixup"], plan["augmentation"]["cutmix"]) == (0.0, 0.0)
    assert plan["init_from"]["finetune_from"] == flags["finetune_from"]
    assert plan["init_from"]["source"] == flags["finetune_from"] + ".sail_in1k"
    assert plan["precision"] == "fp32"


@pytest.mark.slow
def test_changed_recipe_lists_its_deviations() -> None:
    plan = dry_plan("caformer_s18", "--batch-size", "1024", "--amp", "--sched-unit", "step")
    items = {d["item"]: d for d in plan["deviations_from_official"]}
    assert set(items) == {"global_batch", "lr", "sched_unit", "precision"}
    assert items["lr"]["official"] == 8e-3 and items["lr"]["this_run"] == 2e-3
    assert items["precision"]["this_run"] == "bf16"
    ft = dry_plan("caformer_s18_384", "--from-scratch")
    assert [d["item"] for d in ft["deviations_from_official"]] == ["init_from"]


def test_dry_run_only_options_need_dry_run(tmp_path) -> None:
    code, out = run("train", "specs/demo_tiny.mf", "--json")
    assert code == 2 and "--json" in out and "--dry-run" in out


def test_dry_run_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    import shutil
    from pathlib import Path

    spec = Path(__file__).resolve().parent.parent / "specs" / "identityformer_s12.mf"
    shutil.copy(spec, tmp_path / "s.mf")
    code, out = run("train", "s.mf", "--dry-run", "--dataset-size", "5000", "--world-size", "2")
    assert code == 0, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.mf"]
    assert "steps: 1 per epoch x 310 epochs (300 + 10 cooldown) = 310" in out


def test_bad_dry_run_numbers_are_clear_errors() -> None:
    code, out = run("train", "specs/demo_tiny.mf", "--dry-run", "--dataset-size", "0")
    assert code == 2 and "--dataset-size must be >= 1" in out
    code, out = run("train", "specs/demo_tiny.mf", "--dry-run", "--dataset-size", "10")
    assert code == 2 and "smaller than one global batch" in out
