"""What a training run works with, built from its plan before anything runs.

:func:`lower_model` lowers the model once, for the plan's device (its speed variants);
:func:`load_start_weights` loads what the plan starts from (a named step: it may fetch a
release); :func:`build_parts` prepares the model for the target (layout, autocast,
``torch.compile``, DDP) and builds the datasets, optimizer, loss, mixup, loss scaler and
EMA. None of them writes anything or reads an image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..data.dataset import (BatchPreprocess, ResumableDistributedSampler, ShardSampler,
                            SourceDataset, eval_transform, make_loader, spread_subset,
                            train_transform)
from .distributed import DistEnv
from .errors import RunError
from .hooks import RecordedSampler
from .optim import create_optimizer
from .plan import RunPlan
from .run_data import RunData
from .step import StepParts


@dataclass
class Parts:
    """The built run: model (prepared and bare), EMA, data, and one step's parts."""

    model: nn.Module  # the parameters (unwrapped)
    forward_model: nn.Module  # prepared for the device; DDP-wrapped under torchrun
    ema: Any  # timm ModelEmaV3, or None
    ema_eval: Optional[nn.Module]  # the EMA weights prepared for evaluation (eager)
    train_set: SourceDataset
    val_set: Optional[SourceDataset]
    train_prep: BatchPreprocess  # the device-side half of the input pipeline
    mixup: Optional[Callable]
    scaler: Optional[torch.amp.GradScaler]
    step: StepParts

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.step.optimizer


def lower_model(plan: RunPlan) -> nn.Module:
    """The plan's model, lowered once with the speed variants its device runs."""
    from ..api import build_model
    from ..analysis.batch_stats import check_training_batch

    if plan.spec.in_chans != 3:
        raise RunError(f"image data gives RGB images; the spec wants {plan.spec.in_chans} "
                       "input channels")
    model = build_model(plan.spec, variants=plan.device.variants)
    try:  # batchnorm on pooled features cannot train on one image per device
        check_training_batch(model, plan.batch.per_device, "--per-device-batch")
    except ValueError as exc:
        raise RunError(str(exc)) from None
    return model


def build_parts(plan: RunPlan, data: RunData, env: DistEnv, model: nn.Module, *,
                grad_checkpointing: bool = False) -> Parts:
    """The parts of a run of ``plan`` over ``data`` in this process, around ``model``
    (lowered by :func:`lower_model`, starting weights loaded: DDP and EMA copy them)."""
    from ..target.prepare import compile_for_target

    spec, r, dp = plan.spec, plan.recipe, plan.device
    ev = spec.eval
    # The workers lay the uint8 images out as the model runs (no transposing later).
    train_set = SourceDataset(data.train, train_transform(
        r, spec.img_size, ev.mean, ev.std, plan.hflip, crop_scale_min=plan.crop_scale_min,
        channels_last=dp.channels_last))
    val_set = (SourceDataset(data.val, eval_transform(model, dp.channels_last))
               if data.val is not None else None)
    if grad_checkpointing:  # before compiling: dynamo traces the checkpoints
        model.set_grad_checkpointing(True)

    def ddp(m: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(m, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    scales = _apply_finetune(model, plan)  # adapters before compiling and DDP
    # The one device preparation (mfdsl.target.prepare); the variants were lowered in for
    # this plan: kept, not chosen again.
    forward_model = compile_for_target(model, mode=dp.mode, wrap=ddp if env.distributed
                                       else None, variants="keep", **dp.target())
    model = forward_model.model
    optimizer = create_optimizer(model, r, plan.lr, scales)
    fp16 = dp.amp and dp.torch_amp_dtype == torch.float16
    scaler = torch.amp.GradScaler(env.device.type, enabled=True) if fp16 else None
    mixup, criterion = _loss(plan)
    ema = ema_eval = None
    if r.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=r.ema)
        # EMA weights are evaluated eager (one compiled model is enough to pay for).
        ema_eval = compile_for_target(ema.module, mode="eager", **dp.target())
    step = StepParts(forward_model, model, optimizer, criterion, plan.batch.accum, r.clip_grad,
                     scaler, ema, forward_model.wrapped)
    return Parts(model=model, forward_model=forward_model, ema=ema, ema_eval=ema_eval,
                 train_set=train_set, val_set=val_set,
                 train_prep=BatchPreprocess.for_transform(train_set.transform, env.device,
                                                          dp.channels_last),
                 mixup=mixup, scaler=scaler, step=step)


def _apply_finetune(model: nn.Module, plan: RunPlan) -> Optional[Dict[str, float]]:
    """The plan's freezing and adapters applied to ``model``; the per-parameter lr scales
    of its layer decay (None without)."""
    if not plan.finetune:
        return None
    from .finetune import apply_finetune

    record = apply_finetune(model, plan.recipe)
    if record["trainable"] != plan.finetune["trainable"]:  # the plan is what runs
        raise RunError("the model's trainable parameters differ from the plan's")
    ld = plan.finetune.get("layer_decay")
    if ld is None:
        return None
    scales = {n: g["lr_scale"] for g in ld["groups"] for n in g["params"]}
    return scales


def _loss(plan: RunPlan):
    """(mixup or None, criterion): soft targets with mixup/cutmix, else label smoothing."""
    r = plan.recipe
    if plan.mixup_active:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        return (Mixup(mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, prob=1.0,
                      switch_prob=r.mixup_switch_prob, mode="batch",
                      label_smoothing=r.label_smoothing, num_classes=plan.spec.num_classes),
                SoftTargetCrossEntropy())
    if r.label_smoothing > 0:
        from timm.loss import LabelSmoothingCrossEntropy

        return None, LabelSmoothingCrossEntropy(smoothing=r.label_smoothing)
    return None, nn.CrossEntropyLoss()


def train_loader(parts: Parts, plan: RunPlan, env: DistEnv, *, epoch: int, micro: int,
                 workers: int, seed: int) -> Any:
    """The training batches of ``epoch`` from micro-batch ``micro`` on (a resumed epoch
    continues where it stopped)."""
    sampler = ResumableDistributedSampler(parts.train_set, env.world_size, env.rank, seed=seed)
    sampler.set_position(epoch, micro * plan.batch.per_device)
    sampler = RecordedSampler.wrap(sampler, env.rank, epoch * plan.steps_per_epoch, micro,
                                   plan.batch.per_device, plan.batch.accum)
    return make_loader(parts.train_set, sampler, plan.batch.per_device, workers, seed + epoch,
                       drop_last=True, pin_memory=env.device.type == "cuda")


def val_loader(parts: Parts, plan: RunPlan, env: DistEnv, *, workers: int, seed: int,
               val_samples: Optional[int]) -> Any:
    """The validation batches (every rank its unpadded shard; ``val_samples`` spread)."""
    assert parts.val_set is not None
    n = len(parts.val_set)
    sampler = ShardSampler(n, env.rank, env.world_size, spread_subset(n, val_samples))
    return make_loader(parts.val_set, sampler, plan.batch.per_device, workers, seed,
                       drop_last=False, pin_memory=env.device.type == "cuda")


def load_start_weights(model: nn.Module, plan: RunPlan, opts: Any, log: Callable[[str], None]
                       ) -> Any:
    """Load the starting weights the plan names (``--init-from``, ``finetune_from``) or
    the parts ``--inherit`` takes; may fetch a release. Returns the inheritance record
    (None unless inheriting)."""
    init = plan.init
    if init["kind"] == "init_from":
        _start_from(model, plan, init["source"], "--init-from", log)
    elif init["kind"] == "finetune_from":
        log(f"fine-tuning from {init['source']} (the recipe's finetune_from "
            f"{init['finetune_from']}; --from-scratch for random init)")
        _start_from(model, plan, init["source"], "finetune_from", log)
    elif init["kind"] == "inherit":
        from ..weights import inherit

        inheritance = inherit(model, opts.inherit, opts.inherit_depth)
        log("inherited weights:\n" + inheritance.table())
        return inheritance
    return None


def _start_from(model: nn.Module, plan: RunPlan, source: str, option: str,
                log: Callable[[str], None]) -> None:
    from ..ckptformats.weights import CheckpointError
    from ..weights import load_weights
    from ..weights.sources import require_weights
    from .run_weights import load_run_weights

    found = require_weights(source, option, RunError, spec=plan.spec)
    try:
        if found.release is None and found.path is not None:
            report = load_run_weights(model, found.path, option)
        else:
            report = load_weights(model, found.ref, plan.spec)
    except CheckpointError as exc:
        if exc.report is None:
            raise
        # The library's advice (strict=False) is for Python callers; say the option.
        raise CheckpointError(
            exc.report.summary("does not fit the model; nothing was loaded")
            + f"\n  ({option} needs weights of this architecture; --inherit takes the "
            "parts of another model that fit)") from None
    log(f"starting weights: {report.source} ({len(report.loaded)} tensors, "
        f"{report.format} layout)")
    for note in report.notes:
        log(f"note: {note}")
