"""The run plan: everything a training run resolves from spec, options, data and devices.

``mfdsl train SPEC --dry-run`` prints it without training or writing anything; a real run
writes the same record to ``plan.json`` in its run folder. For a paper model the plan lists
every place where the resolved recipe differs from the official training
(:mod:`mfdsl.runner.official`).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .. import runs
from ..ir import ModelSpec, RecipeSpec
from .errors import DataError, RunError
from .official import official_recipe
from .optim import optimizer_args
from .options import (EMBEDDED_MAX_BATCH, BatchPlan, TrainOptions, plan_batches, recipe_as_dict,
                      scaled_lr)
from .schedule import Schedule, schedule_for

# Erasing as the official applies it: timm's RandomErasing(0.25, mode='pixel', max_count=1)
# on the GPU, after mixup/cutmix.
ERASING_MODE, ERASING_COUNT = "pixel", 1
# The official fine-tunes start from the 224 ImageNet-1K release of the named model.


def plan_steps(recipe: RecipeSpec, opts: TrainOptions, world_size: int, dataset_size: int,
               embedded: bool) -> Tuple[BatchPlan, int, int, List[str]]:
    """(batch plan, micro-batches per epoch per process, optimizer steps per epoch, notes).

    Each process gets ceil(N / world) samples and drops its last partial micro-batch; an
    epoch is the whole accumulation rounds that fit (timm's loader with drop_last)."""
    notes: List[str] = []
    global_batch = opts.batch_size
    if (embedded and global_batch is None and opts.per_device_batch is None
            and opts.accum is None and recipe.batch_size > EMBEDDED_MAX_BATCH):
        notes.append(f"note: embedded dataset: global batch {recipe.batch_size} -> "
                     f"{EMBEDDED_MAX_BATCH} (set --batch-size to change)")
        global_batch = EMBEDDED_MAX_BATCH
    plan = plan_batches(world_size, recipe.batch_size, global_batch, opts.per_device_batch,
                        opts.accum)
    per_rank = math.ceil(dataset_size / world_size)
    micro = per_rank // plan.per_device
    steps = micro // plan.accum
    if steps < 1:
        raise DataError(f"the training set ({dataset_size} images) is smaller than one global "
                        f"batch ({plan.global_batch}); lower --batch-size")
    return plan, micro, steps, notes


def resolve_precision(recipe: RecipeSpec, opts: TrainOptions, device_type: str) -> str:
    """fp32, bf16 or fp16 (autocast), as the device plan of a run on ``device_type`` has it."""
    from .device_plan import resolve_device_plan

    return resolve_device_plan(torch.device(device_type), recipe, amp=opts.amp,
                               amp_dtype=opts.amp_dtype, compile=False).dtype


def finetune_source(name: str) -> str:
    """What ``finetune_from NAME`` starts from: an existing checkpoint file, a run folder's
    best (else last) checkpoint, a release name, or a zoo model's ImageNet-1K release."""
    from ..weights.sources import DEFAULT_TAG, require_weights

    return require_weights(name, "finetune_from", RunError, run_stems=(runs.BEST, runs.LAST),
                           default_tag=DEFAULT_TAG,
                           hint=f"; a zoo model's name means its {DEFAULT_TAG} release").ref


def resolve_init(recipe: RecipeSpec, opts: TrainOptions) -> Dict[str, Any]:
    """Where the starting weights come from. A fine-tune recipe (``finetune_from``) with
    no weights given is refused unless the user asked for random init (--from-scratch)."""
    from ..weights.sources import cache_note
    if opts.resume is not None:
        return {"kind": "resume", "source": opts.resume}
    if opts.init_from:
        return {"kind": "init_from", "source": opts.init_from}
    if opts.inherit:
        return {"kind": "inherit", "source": list(opts.inherit)}
    if recipe.finetune_from and not getattr(opts, "from_scratch", False):
        return {"kind": "finetune_from", "source": finetune_source(recipe.finetune_from),
                "finetune_from": recipe.finetune_from, **cache_note(recipe.finetune_from)}
    if recipe.finetune_from:
        return {"kind": "random", "source": None,
                "note": f"--from-scratch: random init although the recipe fine-tunes "
                        f"{recipe.finetune_from}"}
    return {"kind": "random", "source": None}


@dataclass
class RunPlan:
    """The resolved run. ``lr_per_step`` holds the lr of every optimizer step, in order."""

    model: str
    spec: Optional[str]
    dataset_size: int
    data: str
    world_size: int
    device: str
    global_batch: int
    per_device_batch: int
    accum: int
    steps_per_epoch: int
    epochs: int
    cooldown_epochs: int
    total_epochs: int
    total_steps: int
    warmup_steps: int
    lr: float
    schedule: Dict[str, Any]
    lr_per_step: List[float]
    optimizer: Dict[str, Any]
    augmentation: Dict[str, Any]
    regularisation: Dict[str, Any]
    ema: Optional[Dict[str, Any]]
    precision: str
    init_from: Dict[str, Any]
    img_size: List[int]
    recipe: Dict[str, Any]
    official: Optional[Dict[str, Any]]
    deviations_from_official: List[Dict[str, Any]]
    notes: List[str] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """The plan for a reader (the dry run without --json)."""
        lines: List[str] = [
            f"model {self.model} ({self.spec or 'no file'}) at {self.img_size[0]}x"
            f"{self.img_size[1]}",
            f"data: {self.data}, {self.dataset_size} training images",
            f"devices: {self.world_size} process(es) on {self.device}; precision "
            f"{self.precision}",
            f"batch: global {self.global_batch} = {self.per_device_batch} per device x "
            f"{self.accum} accumulation x {self.world_size}",
            f"steps: {self.steps_per_epoch} per epoch x {self.total_epochs} epochs "
            f"({self.epochs} + {self.cooldown_epochs} cooldown) = {self.total_steps}",
            f"lr: {self.schedule['text']}; first {self.lr_per_step[0]:.6g}, peak "
            f"{max(self.lr_per_step):.6g}, last {self.lr_per_step[-1]:.6g}",
            "optimizer: " + self.optimizer["name"] + " " + ", ".join(
                f"{k}={v}" for k, v in self.optimizer["args"].items()),
            "augmentation: " + ", ".join(f"{k}={v}" for k, v in self.augmentation.items()),
            "regularisation: " + ", ".join(f"{k}={v}" for k, v in self.regularisation.items()),
            "ema: " + (f"decay {self.ema['decay']}, best checkpoint by "
                       f"{self.ema['selects_best_by']}" if self.ema else "off"),
            "init: " + (f"{self.init_from['kind']} {self.init_from['source']}"
                        if self.init_from["source"] else "random"),
        ]
        if self.official is None:
            lines.append("official recipe: none (not a paper model)")
        elif not self.deviations_from_official:
            lines.append("official recipe: followed in every item")
        else:
            lines.append(f"deviations from the official recipe ({len(self.deviations_from_official)}):")
            lines += [f"  {d['item']}: official {d['official']}, this run {d['this_run']}"
                      for d in self.deviations_from_official]
        return "\n".join(lines + self.notes)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def deviations(resolved: Dict[str, Any], official: Optional[Dict[str, Any]]
               ) -> List[Dict[str, Any]]:
    """Every official item whose resolved value differs (floats to 1e-12 relative)."""
    if official is None:
        return []
    out = []
    for item, want in official.items():
        got = resolved.get(item)
        same = (math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0)
                if isinstance(got, (int, float)) and isinstance(want, (int, float))
                and not isinstance(got, bool) and not isinstance(want, bool)
                else _plain(got) == _plain(want))
        if not same:
            out.append({"item": item, "official": want, "this_run": _plain(got)})
    return out


def build_plan(spec: ModelSpec, opts: TrainOptions, *, dataset_size: int, world_size: int,
               device_type: str, data: str, embedded: bool = False,
               crop_scale_min: Optional[float] = None,
               precision: Optional[str] = None) -> RunPlan:
    """Resolve a run of ``spec`` (its recipe with the CLI's overrides already applied).
    ``precision``: what the run resolved (a real run passes its own), else derived here."""
    r = spec.recipe if spec.recipe is not None else RecipeSpec()
    if opts.max_steps is not None and opts.max_steps < 1:
        raise RunError("--max-steps must be >= 1")
    batch, _, steps_per_epoch, notes = plan_steps(r, opts, world_size, dataset_size, embedded)
    lr = scaled_lr(r, batch.global_batch)
    sched: Schedule = schedule_for(r, lr, steps_per_epoch, opts.max_steps)
    opt_args = optimizer_args(r, lr)
    if precision is None:
        precision = resolve_precision(r, opts, device_type)
    init = resolve_init(r, opts)
    if "note" in init:
        notes.append("note: " + init["note"])
    mixing = r.mixup > 0 or r.cutmix > 0
    augmentation = {
        "randaugment": r.randaugment, "train_interpolation": r.train_interpolation,
        "crop_scale_min": crop_scale_min if crop_scale_min is not None
        else (opts.crop_scale_min if opts.crop_scale_min is not None else 0.08),
        "hflip": opts.hflip, "mixup": r.mixup, "cutmix": r.cutmix,
        "mixup_switch_prob": r.mixup_switch_prob if mixing else None,
        "mixup_mode": "batch" if mixing else None, "random_erasing": r.random_erasing,
        "random_erasing_mode": ERASING_MODE, "random_erasing_count": ERASING_COUNT,
        "random_erasing_applied": "on the device, to the mixed batch",
    }
    regularisation = {"drop_path": r.drop_path, "head_dropout": r.head_dropout,
                      "weight_decay": r.weight_decay, "label_smoothing": r.label_smoothing,
                      "clip_grad": r.clip_grad}
    ema = ({"decay": r.ema, "selects_best_by": "ema top-1"} if r.ema else None)
    img = [int(s) for s in spec.img_size]
    resolved = {
        "img_size": img, "epochs": r.epochs, "cooldown_epochs": r.cooldown_epochs,
        "global_batch": batch.global_batch, "lr": lr, "optimizer": r.optimizer,
        "eps": opt_args.get("eps"), "betas": _plain(opt_args.get("betas")),
        "weight_decay": r.weight_decay, "sched": r.sched, "sched_unit": r.sched_unit,
        "warmup_mode": r.warmup_mode, "warmup_epochs": r.warmup_epochs,
        "warmup_lr": r.warmup_lr, "min_lr": r.min_lr, "drop_path": r.drop_path,
        "head_dropout": r.head_dropout, "label_smoothing": r.label_smoothing,
        "mixup": r.mixup, "cutmix": r.cutmix, "mixup_switch_prob": r.mixup_switch_prob,
        "randaugment": r.randaugment, "random_erasing": r.random_erasing,
        "train_interpolation": r.train_interpolation, "clip_grad": r.clip_grad,
        "precision": precision, "ema": r.ema,
        "init_from": (init.get("finetune_from") if init["kind"] == "finetune_from"
                      else init["source"] or "random"),
    }
    official = official_recipe(spec.name)
    devs = deviations(resolved, official)
    if opts.max_steps is not None and opts.max_steps < sched.planned_steps:
        devs_note = {"item": "total_steps", "official": sched.planned_steps,
                     "this_run": sched.total_steps}
        if official is not None:
            devs.append(devs_note)
    return RunPlan(
        model=spec.name, spec=spec.source, dataset_size=dataset_size, data=data,
        world_size=world_size, device=device_type, global_batch=batch.global_batch,
        per_device_batch=batch.per_device, accum=batch.accum, steps_per_epoch=steps_per_epoch,
        epochs=r.epochs, cooldown_epochs=r.cooldown_epochs, total_epochs=sched.total_epochs,
        total_steps=sched.total_steps, warmup_steps=sched.warmup_steps, lr=lr,
        schedule=dict(sched.state_dict(), text=sched.describe()), lr_per_step=sched.lrs(),
        optimizer={"name": r.optimizer, "args": {k: _plain(v) for k, v in opt_args.items()},
                   "no_weight_decay": "1-D params (norm weights, biases, scales)"},
        augmentation=augmentation, regularisation=regularisation, ema=ema,
        precision=precision, init_from=init, img_size=img, recipe=recipe_as_dict(r),
        official=official, deviations_from_official=devs, notes=notes)


def _dry_run_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def dry_run(spec: ModelSpec, opts: TrainOptions, dataset_size: Optional[int] = None,
            world_size: Optional[int] = None) -> RunPlan:
    """The plan of ``mfdsl train`` with these options, reading nothing but the spec (and
    the --data folder's file list when no ``dataset_size`` is given) and writing nothing."""
    from ..api import check_spec
    from ..ir import with_overrides
    from .options import apply_recipe_overrides

    spec = apply_recipe_overrides(spec, opts.recipe_overrides)
    if opts.img_size is not None:
        spec = with_overrides(spec, img_size=tuple(opts.img_size))
    check_spec(spec)
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1:
        raise RunError(f"--world-size must be >= 1, got {world_size}")
    embedded = opts.data is None
    if dataset_size is not None:
        if dataset_size < 1:
            raise RunError(f"--dataset-size must be >= 1, got {dataset_size}")
        data = "--dataset-size"
    elif embedded:
        from ..data.tinyshapes import CLASSES, DEFAULT_TRAIN_PER_CLASS

        dataset_size = len(CLASSES) * DEFAULT_TRAIN_PER_CLASS
        data = "the built-in TinyShapes data"
    else:
        from ..data.layout import detect_layout, open_source

        # Any form --data may take (folder, parquet or tar shards), read as training reads it.
        layout = detect_layout(opts.data, (opts.train_split, opts.val_split))
        source = open_source(layout, opts.train_split)
        if source is None:
            raise DataError(f"--data {opts.data}: no '{opts.train_split}' split")
        dataset_size = len(source)
        data = layout.where(opts.train_split) or opts.data
    # The embedded data's smaller crops apply only where no size stands in for the data.
    crop_min = (opts.crop_scale_min if opts.crop_scale_min is not None
                else 0.35 if embedded and data.startswith("the built-in") else 0.08)
    return build_plan(spec, opts, dataset_size=dataset_size, world_size=world_size,
                      device_type=_dry_run_device(opts.device), data=data,
                      embedded=embedded and data.startswith("the built-in"),
                      crop_scale_min=crop_min)


def deviation_lines(plan: RunPlan) -> List[str]:
    """One line per deviation from the official recipe (for the start of a run's log)."""
    if not plan.deviations_from_official:
        return []
    return [f"note: {plan.model}: this run deviates from the official recipe in "
            f"{len(plan.deviations_from_official)} item(s) (plan.json lists them):"] + [
        f"  {d['item']}: official {d['official']}, this run {d['this_run']}"
        for d in plan.deviations_from_official]
