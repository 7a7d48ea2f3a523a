"""The run plan: everything a training run resolves from spec, options, data and devices.

:func:`resolve_plan` is the one resolver. ``mfdsl train --dry-run`` prints its result
without training or writing anything; a real run is built from it (the trainer derives
nothing itself) and writes the same record to ``plan.json``. For a paper model the plan
lists every place where the resolved recipe differs from the official training
(:mod:`mfdsl.runner.official`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from .. import runs
from ..ckptformats.in21k import IN1K_CLASSES, IN21K_CLASSES
from ..ir import ModelSpec, RecipeSpec, with_overrides
from .device_plan import DevicePlan, resolve_device_plan
from .errors import DataError, RunError
from .official import HEAD_REMAP, official_recipe, official_unstated
from .optim import optimizer_args
from ..run_options import (CROP_SCALE_MIN, EMBEDDED_CROP_SCALE_MIN, TrainOptions,
                           check_options)
from .options import (EMBEDDED_MAX_BATCH, BatchPlan, apply_recipe_overrides, plan_batches,
                      recipe_as_dict, scaled_lr)
from .run_data import DataPlan
from .schedule import Schedule, schedule_for

# Erasing as the official applies it: timm's RandomErasing(0.25, mode='pixel', max_count=1)
# on the GPU, after mixup/cutmix.
ERASING_MODE, ERASING_COUNT = "pixel", 1
# A plan lists the lr of every step only when asked, and never more than this many.
MAX_LISTED_STEPS = 10_000_000


@dataclass(frozen=True)
class BestSelection:
    """Which validation figure picks the best checkpoint: with EMA, the EMA model's top-1
    (as the official train.py does; ``best.ema.safetensors`` then holds those weights)."""

    ema: bool

    @property
    def metric(self) -> str:
        """The key in a validation result."""
        return "ema_top1" if self.ema else "top1"

    @property
    def label(self) -> str:
        return "EMA top-1" if self.ema else "top-1"

    @property
    def stem(self) -> str:
        """The best checkpoint's file stem."""
        return runs.BEST + (runs.EMA if self.ema else "")


@dataclass
class RunPlan:
    """The resolved run. The schedule is the lr of every step (``schedule.lr_at``)."""

    spec: ModelSpec  # the recipe's overrides and the run's input size applied
    data: DataPlan
    device: DevicePlan
    world_size: int
    batch: BatchPlan
    micro_per_epoch: int  # micro-batches per epoch per process
    schedule: Schedule
    optimizer: Dict[str, Any]
    crop_scale_min: float
    hflip: float
    best: BestSelection
    init: Dict[str, Any]
    official: Optional[Dict[str, Any]]
    deviations: List[Dict[str, Any]]
    notes: List[str] = field(default_factory=list)
    # Items the official sources do not state for this model, with this run's values.
    unstated: List[Dict[str, Any]] = field(default_factory=list)
    # What a fine-tuning recipe trains (runner.finetune.apply_finetune's record); {}: all.
    finetune: Dict[str, Any] = field(default_factory=dict)

    @property
    def recipe(self) -> RecipeSpec:
        assert self.spec.recipe is not None
        return self.spec.recipe

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    @property
    def total_epochs(self) -> int:
        return self.schedule.total_epochs

    @property
    def lr(self) -> float:
        """The peak lr: the recipe's, scaled to the global batch."""
        return self.schedule.base_lr

    @property
    def mixup_active(self) -> bool:
        return self.recipe.mixup > 0 or self.recipe.cutmix > 0

    def augmentation(self) -> Dict[str, Any]:
        r, mixing = self.recipe, self.mixup_active
        return {
            "randaugment": r.randaugment, "train_interpolation": r.train_interpolation,
            "crop_scale_min": self.crop_scale_min, "hflip": self.hflip, "mixup": r.mixup,
            "cutmix": r.cutmix, "mixup_switch_prob": r.mixup_switch_prob if mixing else None,
            "mixup_mode": "batch" if mixing else None, "random_erasing": r.random_erasing,
            "random_erasing_mode": ERASING_MODE, "random_erasing_count": ERASING_COUNT,
            "random_erasing_applied": "on the device, to the mixed batch",
        }

    def regularisation(self) -> Dict[str, Any]:
        r = self.recipe
        return {"drop_path": r.drop_path, "head_dropout": r.head_dropout,
                "weight_decay": r.weight_decay, "label_smoothing": r.label_smoothing,
                "clip_grad": r.clip_grad}

    def to_json(self, lr_per_step: bool = False) -> Dict[str, Any]:
        """The record ``plan.json`` and ``--dry-run --json`` hold. ``lr_per_step``: add
        the lr of every step (refused past :data:`MAX_LISTED_STEPS`)."""
        r, s = self.recipe, self.schedule
        out: Dict[str, Any] = {
            "model": self.spec.name, "spec": self.spec.source, "data": self.data.to_json(),
            "world_size": self.world_size, "device": self.device.device.type,
            "global_batch": self.batch.global_batch, "per_device_batch": self.batch.per_device,
            "accum": self.batch.accum, "steps_per_epoch": s.steps_per_epoch,
            "epochs": r.epochs, "cooldown_epochs": r.cooldown_epochs,
            "total_epochs": s.total_epochs, "total_steps": s.total_steps,
            "planned_steps": s.planned_steps, "warmup_steps": s.warmup_steps, "lr": self.lr,
            "schedule": dict(s.state_dict(), text=s.describe()),
            "lr_milestones": s.milestones(),
            "optimizer": self.optimizer, "augmentation": self.augmentation(),
            "regularisation": self.regularisation(),
            "ema": {"decay": r.ema} if r.ema else None,
            "best_selected_by": self.best.label, "precision": self.device.dtype,
            "device_plan": {"channels_last": self.device.channels_last,
                            "compile": self.device.compile,
                            "cuda_graphs": self.device.cuda_graphs,
                            "variants": list(self.device.variants)},
            "init_from": self.init, "img_size": [int(v) for v in self.spec.img_size],
            "recipe": recipe_as_dict(r), "official": self.official,
            "deviations_from_official": self.deviations,
            "official_unstated": self.unstated or None, "notes": self.notes,
            "finetune": self.finetune or None,
        }
        if lr_per_step:
            if s.total_steps > MAX_LISTED_STEPS:
                raise RunError(f"--lr-per-step: the run has {s.total_steps} steps; a list of "
                               f"more than {MAX_LISTED_STEPS} is not written (the schedule "
                               "record gives the lr of any step)")
            out["lr_per_step"] = s.lrs()
        return out

    def summary(self) -> str:
        """The plan for a reader (the dry run without --json)."""
        s, b = self.schedule, self.batch
        steps = f"steps: {s.steps_per_epoch} per epoch x {s.total_epochs} epochs " \
                f"({self.recipe.epochs} + {self.recipe.cooldown_epochs} cooldown) = " \
                f"{s.planned_steps}"
        if s.total_steps < s.planned_steps:
            steps = (f"steps: {s.total_steps} (--max-steps; the schedule's {s.planned_steps} "
                     f"= {s.steps_per_epoch} per epoch x {s.total_epochs} epochs, compressed "
                     "into them)")
        init = self.init
        lines: List[str] = [
            f"model {self.spec.name} ({self.spec.source or 'no file'}) at "
            f"{self.spec.img_size[0]}x{self.spec.img_size[1]}",
            f"data: {self.data.describe()}",
            f"devices: {self.world_size} process(es) on {self.device.device.type}; precision "
            f"{self.device.dtype}",
            "batch: " + b.describe(),
            steps,
            f"lr: {s.describe()}; first {s.lr_at(0):.6g}, peak {s.peak():.6g}, last "
            f"{s.lr_at(s.total_steps - 1):.6g}",
            "optimizer: " + self.optimizer["name"] + " " + ", ".join(
                f"{k}={v}" for k, v in self.optimizer["args"].items()),
            "augmentation: " + ", ".join(f"{k}={v}" for k, v in self.augmentation().items()),
            "regularisation: " + ", ".join(f"{k}={v}" for k, v in
                                           self.regularisation().items()),
            "ema: " + (f"decay {self.recipe.ema}" if self.recipe.ema else "off")
            + f"; best checkpoint by {self.best.label}",
            "init: " + (f"{init['kind']} {init['source']}" if init["source"] else "random"),
        ]
        if self.finetune:
            from .finetune import describe

            lines.append(describe(self.finetune))
        if self.official is None:
            lines.append("official recipe: none (not a paper model)")
        elif not self.deviations:
            stated = (f" stated ({', '.join(self.official)})" if self.unstated else "")
            lines.append(f"official recipe: followed in every{stated} item")
        else:
            lines.append(f"deviations from the official recipe ({len(self.deviations)}):")
            lines += [f"  {d['item']}: official {d['official']}, this run {d['this_run']}"
                      for d in self.deviations]
        if self.unstated:
            lines.append(f"not stated by the official sources ({len(self.unstated)}; this "
                         "run's values are the spec's choice, not the paper's):")
            lines.append("  " + ", ".join(f"{u['item']}={u['this_run']}"
                                          for u in self.unstated))
        return "\n".join(lines + self.notes)

    def deviation_lines(self) -> List[str]:
        """One line per deviation from the official recipe (for the start of a run's log)."""
        if not self.deviations:
            return []
        return [f"note: {self.spec.name}: this run deviates from the official recipe in "
                f"{len(self.deviations)} item(s) (plan.json lists them):"] + [
            f"  {d['item']}: official {d['official']}, this run {d['this_run']}"
            for d in self.deviations]


def run_spec(spec: ModelSpec, opts: TrainOptions, out: Any = None) -> ModelSpec:
    """The spec a run trains: the recipe with the command line's values and, on a resume
    (``out``: the run folder's :class:`~mfdsl.runner.run_folder.OutputPlan`), the changes the
    run recorded; the input size (a resumed run keeps its context: input size and eval
    transform)."""
    from .recipe_history import resume_overrides

    if out is not None:
        overrides = resume_overrides(out.resume_stem, out.output, opts.recipe_overrides)
    else:
        overrides = opts.recipe_overrides
    spec = apply_recipe_overrides(spec, overrides)
    if out is not None and out.prior is not None:
        return out.prior.apply(spec)
    if opts.img_size is not None:
        spec = with_overrides(spec, img_size=tuple(opts.img_size))
    return spec


def finetune_source(name: str) -> str:
    """What ``finetune_from NAME`` starts from: an existing checkpoint file, a run folder's
    best (else last) checkpoint, a release name, or a zoo model's ImageNet-1K release (a
    relative path: the working directory's; see :func:`resolve_init` for the spec's)."""
    from ..weights.sources import DEFAULT_TAG, require_weights

    return require_weights(name, "finetune_from", RunError, run_stems=(runs.BEST, runs.LAST),
                           default_tag=DEFAULT_TAG,
                           hint=f"; a zoo model's name means its {DEFAULT_TAG} release").ref


def resolve_init(spec: ModelSpec, opts: TrainOptions, resuming: bool) -> Dict[str, Any]:
    """Where the starting weights come from. A fine-tune recipe (``finetune_from``) with
    no weights given is refused unless the user asked for random init (--from-scratch).
    A relative ``finetune_from`` written in the spec file is looked for in the spec's
    folder first, as an include would be (``--finetune-from``: the working directory)."""
    from ..weights.sources import cache_note, spec_relative

    recipe = spec.recipe
    assert recipe is not None
    if resuming:
        return {"kind": "resume", "source": opts.resume}
    if opts.init_from:
        return {"kind": "init_from", "source": opts.init_from}
    if opts.inherit:
        return {"kind": "inherit", "source": list(opts.inherit)}
    if recipe.finetune_from and not opts.from_scratch:
        name, folder = recipe.finetune_from, None
        if "finetune_from" not in opts.recipe_overrides:
            name, folder = spec_relative(name, spec.source)
        if folder is not None:
            return {"kind": "finetune_from", "source": finetune_source(name),
                    "finetune_from": recipe.finetune_from,
                    "note": f"finetune_from {recipe.finetune_from}: resolved against the "
                            f"spec's folder {folder}"}
        return {"kind": "finetune_from", "source": finetune_source(name),
                "finetune_from": recipe.finetune_from, **cache_note(name)}
    if recipe.finetune_from:
        return {"kind": "random", "source": None,
                "note": f"--from-scratch: random init although the recipe fine-tunes "
                        f"{recipe.finetune_from}"}
    return {"kind": "random", "source": None}


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


def micro_per_epoch(train_images: int, world_size: int, per_device: int) -> int:
    """Micro-batches per process in an epoch: each process gets ceil(N / world) samples
    (the sampler pads) and drops its last partial micro-batch."""
    return math.ceil(train_images / world_size) // per_device


def _batches(recipe: RecipeSpec, opts: TrainOptions, world_size: int, data: DataPlan
             ) -> "tuple[BatchPlan, int, List[str]]":
    """(batch plan, micro-batches per epoch per process, notes). Each process gets
    ceil(N / world) samples and drops its last partial micro-batch; an epoch is the whole
    accumulation rounds that fit (timm's loader with drop_last)."""
    notes: List[str] = []
    global_batch = opts.batch_size
    if (data.embedded and global_batch is None and opts.per_device_batch is None
            and opts.accum is None and recipe.batch_size > EMBEDDED_MAX_BATCH):
        notes.append(f"note: embedded dataset: global batch {recipe.batch_size} -> "
                     f"{EMBEDDED_MAX_BATCH} (set --batch-size to change)")
        global_batch = EMBEDDED_MAX_BATCH
    plan = plan_batches(world_size, recipe.batch_size, global_batch, opts.per_device_batch,
                        opts.accum)
    micro = micro_per_epoch(data.train_images, world_size, plan.per_device)
    if micro // plan.accum < 1:
        raise DataError(f"the training set ({data.train_images} images) is smaller than one "
                        f"global batch ({plan.global_batch}); lower --batch-size")
    return plan, micro, notes


def resolve_plan(spec: ModelSpec, opts: TrainOptions, data: DataPlan, *, world_size: int,
                 device: torch.device, resuming: bool = False) -> RunPlan:
    """The plan of a run of ``spec`` (see :func:`run_spec`) over ``data`` in ``world_size``
    processes on ``device``; ``resuming``: it continues a checkpoint."""
    check_options(opts)  # what the command line checks, for a caller from Python too
    r = spec.recipe if spec.recipe is not None else RecipeSpec()
    spec = with_overrides(spec, recipe=r)
    crop_min = (opts.crop_scale_min if opts.crop_scale_min is not None
                else EMBEDDED_CROP_SCALE_MIN if data.embedded else CROP_SCALE_MIN)
    batch, micro, notes = _batches(r, opts, world_size, data)
    if (r.mixup > 0 or r.cutmix > 0) and batch.per_device % 2:
        raise RunError(f"mixup/cutmix need an even per-device batch, got {batch.per_device}"
                       " (change --batch-size/--per-device-batch, or --no-mixup --no-cutmix)")
    sched = schedule_for(r, scaled_lr(r, batch.global_batch), micro // batch.accum,
                         opts.max_steps)
    device_plan = resolve_device_plan(device, r, amp=opts.amp, amp_dtype=opts.amp_dtype,
                                      channels_last=opts.channels_last, compile=opts.compile,
                                      cuda_graphs=opts.cuda_graphs, processes=world_size)
    opt_args = optimizer_args(r, sched.base_lr)
    init = resolve_init(spec, opts, resuming)
    if "note" in init:
        notes.append("note: " + init["note"])
    img = [int(v) for v in spec.img_size]
    resolved = {
        "img_size": img, "epochs": r.epochs, "cooldown_epochs": r.cooldown_epochs,
        "global_batch": batch.global_batch, "lr": sched.base_lr, "optimizer": r.optimizer,
        "eps": opt_args.get("eps"), "betas": _plain(opt_args.get("betas")),
        "weight_decay": r.weight_decay, "sched": r.sched, "sched_unit": r.sched_unit,
        "warmup_mode": r.warmup_mode, "warmup_epochs": r.warmup_epochs,
        "warmup_lr": r.warmup_lr, "min_lr": r.min_lr, "drop_path": r.drop_path,
        "head_dropout": r.head_dropout, "label_smoothing": r.label_smoothing,
        "mixup": r.mixup, "cutmix": r.cutmix, "mixup_switch_prob": r.mixup_switch_prob,
        "randaugment": r.randaugment, "random_erasing": r.random_erasing,
        "train_interpolation": r.train_interpolation, "clip_grad": r.clip_grad,
        "precision": device_plan.dtype, "ema": r.ema,
        "init_from": (init.get("finetune_from") if init["kind"] == "finetune_from"
                      else init["source"] or "random"),
        "num_classes": spec.num_classes,
        "head_from_21k": (HEAD_REMAP if (_start_classes(init), spec.num_classes)
                          == (IN21K_CLASSES, IN1K_CLASSES) else None),
    }
    official = official_recipe(spec.name)
    devs = deviations(resolved, official)
    unstated = [{"item": k, "this_run": _plain(resolved.get(k))}
                for k in official_unstated(spec.name)]
    finetune = _finetune_record(spec)
    if official is not None and sched.total_steps < sched.planned_steps:
        devs.append({"item": "total_steps", "official": sched.planned_steps,
                     "this_run": sched.total_steps})
    return RunPlan(
        spec=spec, data=data, device=device_plan, world_size=world_size, batch=batch,
        micro_per_epoch=micro, schedule=sched,
        optimizer={"name": r.optimizer, "args": {k: _plain(v) for k, v in opt_args.items()},
                   "no_weight_decay": "1-D params (norm weights, biases, scales)"},
        crop_scale_min=crop_min, hflip=opts.hflip, best=BestSelection(bool(r.ema)),
        init=init, official=official, deviations=devs, notes=notes, finetune=finetune,
        unstated=unstated)


def _start_record(init: Dict[str, Any]) -> "tuple[Optional[int], Optional[List[str]]]":
    """(head classes, class list) of the starting weights, as far as known without reading
    them: a release's head; a run's head and recorded classes (run.json or the file's
    metadata; label i is ``classes[i]``)."""
    from ..weights.sources import resolve_weights

    source = init.get("source")
    if init["kind"] not in ("init_from", "finetune_from") or not isinstance(source, str):
        return None, None
    found = resolve_weights(source)
    if found is not None and found.release is not None:
        return found.release.num_classes, None
    if found is not None and found.path is not None:
        from .run_folder import checkpoint_context

        try:
            ctx = checkpoint_context(found.path)
        except RunError:
            ctx = None
        if ctx is not None:  # the head's rows; the run's data may have had fewer classes
            return ctx.load_spec(found.path).num_classes, list(ctx.classes)
    return None, None


def _start_classes(init: Dict[str, Any]) -> Optional[int]:
    return _start_record(init)[0]


_WNID = re.compile(r"n[0-9]{8}")


def check_start_classes(plan: RunPlan, classes: Optional[Sequence[str]]) -> None:
    """Refuse starting weights whose recorded class list does not fit: a head of another
    class count (bar ImageNet-21K's, mapped to 1000 through the official class map, which
    needs fall11's sorted wnids), or, with ``classes`` (the training data's), a head whose
    row i is another class than the data's label i."""
    n, names = _start_record(plan.init)
    if names is None:
        return
    option = "--init-from" if plan.init["kind"] == "init_from" else "finetune_from"
    src, want = plan.init["source"], plan.spec.num_classes
    fresh = f"--inherit stage0-{len(plan.spec.stages) - 1}={src} (every stage, a new head)"
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    if (n, want) == (IN21K_CLASSES, IN1K_CLASSES):
        if (len(names) != n or names != sorted(names)
                or not all(_WNID.fullmatch(c) for c in names)):
            raise RunError(f"{option} {src}: a {IN21K_CLASSES}-class head is mapped to "
                           f"{IN1K_CLASSES} classes by the official class map, which indexes "
                           f"fall11's sorted wnids; the run's classes are not those ({shown}). "
                           f"Start from its other weights with {fresh}")
        return
    if n != want:
        raise RunError(f"{option} {src}: the run's head has {n} classes (trained on "
                       f"{shown}); spec '{plan.spec.name}' has {want}. To fine-tune on other "
                       "classes use "
                       f"{fresh}")
    if classes is None:
        return
    for i, (theirs, ours) in enumerate(zip(names, classes)):
        if theirs != ours:
            raise RunError(f"{option} {src}: the run's class {i} is {theirs!r}, the training "
                           f"data's is {ours!r}: its head would score other classes. Give "
                           f"data with the run's classes, or use {fresh}")


def _finetune_record(spec: ModelSpec) -> Dict[str, Any]:
    """What the recipe's fine-tuning trains, from the model built on the meta device
    (names and shapes only; the run applies the same function to its model)."""
    from .finetune import apply_finetune, finetuning

    assert spec.recipe is not None
    if not finetuning(spec.recipe):
        return {}
    from ..api import build_model

    with torch.device("meta"):
        model = build_model(spec, check_sizes=False)
    return apply_finetune(model, spec.recipe)


def _dry_run_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.split(":")[0])


def dry_run(spec: ModelSpec, opts: TrainOptions) -> RunPlan:
    """The plan of ``mfdsl train`` with these options, reading nothing but the spec and the
    --data folder's file lists (the same opening and checks as the real run), and writing
    nothing. ``opts.dataset_size`` stands in for the data; ``opts.world_size`` (else the
    launch options' full size, else torchrun's) for the processes."""
    from ..api import check_spec
    from .launch import launch_plan, launched_world_size, under_launcher
    from .run_data import open_run_data
    from .run_folder import plan_output

    # A resume is planned as it will run: the run's recorded recipe changes and context
    # (reading the run folder, as the run does before it writes anything).
    out = (plan_output(spec, opts.output, opts.resume, False, opts.img_size,
                       [spec.source, opts.init_from]) if opts.resume is not None else None)
    spec = run_spec(spec, opts, out)
    check_spec(spec)
    launch = launch_plan(vars(opts)) if not under_launcher() else None
    world_size = opts.world_size or (launch.world_size if launch else launched_world_size())
    if opts.dataset_size is not None:
        data = DataPlan("--dataset-size", "--dataset-size", "--dataset-size", None,
                        opts.dataset_size, None, None)
        classes = None
    else:
        opened = open_run_data(opts.data, opts.train_split, opts.val_split,
                               num_classes=spec.num_classes, generate=False)
        data = opened.plan
        classes = opened.train.classes if opened.train is not None else None
    plan = resolve_plan(spec, opts, data, world_size=world_size,
                        device=_dry_run_device(opts.device),
                        resuming=out is not None and out.resume_stem is not None)
    check_start_classes(plan, classes)
    return plan
