"""``mfdsl eval``: an eval plan, then the model lowered once for its device, then one pass.

:func:`resolve_eval` checks everything that can be wrong before any work (every rank of a
torchrun job alike; rank 0 alone reports): the checkpoint and the run context it carries
(model fingerprint, input size, eval transform, class list), the options, and the split,
opened through :mod:`mfdsl.runner.run_data` as training opens its data. :func:`run_evaluation`
then joins the process group, resolves the device plan, lowers the model with that plan's
speed variants, loads the weights and scores the split (:func:`~.evaluate.evaluate`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .. import runs
from ..ir import ModelSpec, with_overrides
from .errors import DataError, RunError
from .run_folder import RunContext

if TYPE_CHECKING:
    from ..run_options import EvalOptions


@dataclass
class EvalPlan:
    """What an evaluation scores, and with which model and context."""

    spec: ModelSpec  # the run's context (or the options) applied
    checkpoint: str  # the weights file
    context: Optional[RunContext]  # the run the checkpoint comes from, if any
    source: Any  # the split (a mfdsl.data.sources.Source)
    split: str
    class_source: str  # "run" (the run's list) | "folder" (the sorted folder names)


def resolve_checkpoint_path(path: str) -> str:
    """A run folder or checkpoints folder means its ``last`` weights; files pass through."""
    from ..weights.sources import require_weights

    if not os.path.isdir(path):
        return path  # a file, or nothing: the reader says which
    return require_weights(path, "--checkpoint", RunError, releases=False).path


def resolve_eval(spec: Optional[ModelSpec], checkpoint: str, data: Optional[str], split: str,
                 *, img_size: Optional[Tuple[int, int]] = None,
                 crop_pct: Optional[float] = None, say: Callable[[str], None]) -> EvalPlan:
    """The eval plan of ``checkpoint`` (with ``spec``, which must build its model, or the
    run's own) over ``data``'s ``split``. Reads file lists and metadata only."""
    from .run_data import open_eval_split
    from .run_folder import checkpoint_context

    path = resolve_checkpoint_path(checkpoint)
    if not os.path.exists(path):
        raise RunError(f"--checkpoint {checkpoint}: no such file")
    ctx = checkpoint_context(path) if path.endswith(runs.WEIGHTS_EXT) else None
    if ctx is None and spec is None:
        raise RunError(f"--checkpoint {checkpoint} carries no run context (not from an "
                       "mfdsl run): give the SPEC it was made for")
    if ctx is not None and spec is None:
        spec = ctx.load_spec(path + " (run spec)")
    elif ctx is not None:
        assert spec is not None
        ctx.check_model(spec, f"{path} was trained as", "evaluate the run without a SPEC, "
                        "or give the run's own spec.mf")
        if (tuple(spec.img_size) != tuple(ctx.img_size) and img_size is None) or any(
                getattr(spec.eval, k) != (tuple(v) if isinstance(v, list) else v)
                for k, v in ctx.eval.items()):
            say("note: using the run's input size and eval transform "
                f"({ctx.img_size[0]}x{ctx.img_size[1]}, crop_pct {ctx.eval['crop_pct']}, "
                f"{ctx.eval['interpolation']}), not the spec's")
        spec = ctx.apply(spec)
    assert spec is not None
    if img_size is not None:
        from ..pipeline import check_at_img_size

        if ctx is not None and tuple(img_size) != tuple(ctx.img_size):
            say(f"note: --img-size {img_size[0]}x{img_size[1]} overrides the run's "
                f"{ctx.img_size[0]}x{ctx.img_size[1]}")
        check_at_img_size(spec, img_size)  # a size the model cannot take: a located error
        spec = with_overrides(spec, img_size=tuple(img_size))
    if crop_pct is not None:
        spec = with_overrides(spec, eval=with_overrides(spec.eval, crop_pct=float(crop_pct)))
    classes: Optional[List[str]] = list(ctx.classes) if ctx is not None else None
    if classes is not None and len(classes) > spec.num_classes:
        raise DataError(f"the run's class list has {len(classes)} classes but the model has "
                        f"{spec.num_classes}")
    source = open_eval_split(data, split, classes)
    return EvalPlan(spec, path, ctx, source, split, "run" if ctx is not None else "folder")


def _check_folder_classes(plan: EvalPlan, say: Callable[[str], None]) -> None:
    """Without a run's class list, labels are the sorted folder names: one per logit."""
    n, want = len(plan.source.classes), plan.spec.num_classes
    if n != want:
        raise DataError(
            f"{plan.source.root} has {n} class folders but the model has {want} classes; "
            f"{plan.checkpoint} records no class list (not from an mfdsl run), so labels are "
            "the positions of the sorted folder names and must match the head one to one")
    say(f"note: {plan.checkpoint} records no class list: labels are the {n} sorted class "
        f"folder names of {plan.source.root}")


def run_evaluation(spec: Optional[ModelSpec], checkpoint: str, opts: "EvalOptions",
                   log: Optional[Callable[[str], None]] = None, progress: bool = False
                   ) -> Dict[str, Any]:
    """Load ``checkpoint`` (mfdsl, timm or official layout) into the model and evaluate it
    on ``opts.data``'s ``opts.split`` (or ``data`` itself if it has no such sub-folder; the
    embedded dataset's val split if ``data`` is None).

    A checkpoint of an mfdsl run carries its context (``run_folder.RunContext``): the model
    fingerprint (``spec``, if given, must build that model), the input size and eval
    transform it was trained with (used unless ``img_size``/``crop_pct`` override them) and
    its class list (labels are positions in it). A checkpoint without context needs
    ``spec``; labels are then the folder's sorted class names, as many as the head has.
    ``val_samples``: only that many images, spread evenly over the split (a quick check,
    not a comparable score); ``progress``: a tqdm bar on the first rank.
    """
    from ..api import build_model
    from ..ckptformats.weights import CheckpointError
    from ..data.dataset import (ShardSampler, SourceDataset, eval_transform, make_loader,
                                spread_subset)
    from ..fingerprint import model_fingerprint
    from ..target.prepare import compile_for_target
    from .device_plan import resolve_device_plan
    from .distributed import barrier, checked_alike_on_every_rank, setup, teardown
    from .evaluate import evaluate
    from .run_weights import load_run_weights

    from ..run_options import check_options

    with checked_alike_on_every_rank():
        check_options(opts)
        plan = resolve_eval(spec, checkpoint, opts.data, opts.split, img_size=opts.img_size,
                            crop_pct=opts.crop_pct, say=log or (lambda msg: None))
    env = setup(opts.device)
    try:
        # The device decisions train makes too (one resolver), for evaluation: eager; the
        # model is lowered once, with this plan's speed variants.
        dp = resolve_device_plan(env.device, plan.spec.recipe, amp=opts.amp,
                                 amp_dtype=opts.amp_dtype, channels_last=opts.channels_last,
                                 compile=False, training=False)
        model = build_model(plan.spec, variants=dp.variants)
        with checked_alike_on_every_rank():
            try:
                report = load_run_weights(model, plan.checkpoint, "--checkpoint")
            except CheckpointError as exc:
                raise RunError(f"cannot load checkpoint: {exc}") from None
            if plan.context is None:
                _check_folder_classes(plan, log or (lambda msg: None))
        # The workers' uint8 images laid out as the model runs.
        dataset = SourceDataset(plan.source, eval_transform(model, dp.channels_last))
        prepared = compile_for_target(model.eval(), mode=dp.mode, variants="keep",
                                      **dp.target())
        sampler = ShardSampler(len(dataset), env.rank, env.world_size,
                               spread_subset(len(dataset), opts.val_samples))
        loader = make_loader(dataset, sampler, opts.batch_size, opts.workers, 0,
                             drop_last=False, pin_memory=env.device.type == "cuda")
        res = evaluate(prepared, loader, env, progress=progress and env.is_main,
                       desc=f"eval {opts.split}")
        barrier(env)  # ranks tear the process group down together
    finally:
        teardown()
    res.pop("skipped_files")
    res.update(checkpoint=plan.checkpoint, checkpoint_format=getattr(report, "format", None),
               data=plan.source.root, classes=len(dataset.classes),
               class_source=plan.class_source, device=str(env.device),
               world_size=env.world_size, amp=bool(dp.amp), img_size=list(plan.spec.img_size),
               crop_pct=plan.spec.eval.crop_pct, model_fingerprint=model_fingerprint(plan.spec))
    return res
