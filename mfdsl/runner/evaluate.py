"""Top-1 / top-5 / loss / throughput of a model over an ImageFolder split."""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import DistEnv, all_sum, gather_objects
from .metrics import accuracy_counts
from ..data.transforms import BatchPreprocess


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, env: DistEnv,
             preprocess: Optional[BatchPreprocess] = None, progress: bool = False,
             desc: str = "val") -> Dict[str, Any]:
    """Exact metrics over the whole split (each rank evaluates its unpadded shard).

    ``model`` is prepared for the device (``mfdsl.target.compile_for_target``: it places
    the images, sets their layout and enters autocast itself). ``preprocess``: the batch
    step on the device (a :class:`mfdsl.data.transforms.BatchPreprocess`); by default
    the one completing ``loader.dataset.transform``, in the model's memory format.

    Loss is plain cross-entropy on the true labels; unreadable images are left out.
    Returns top1/top5 in percent, mean loss, images, img_s and the distinct unreadable files
    over all ranks: ``skipped_images`` (count), ``skipped_paths`` (sorted) and
    ``skipped_files`` (path -> [failed fetches, first error]). ``progress``: a tqdm bar
    (``desc``) on stderr, counting batches.
    """
    from ..data.dataset import UnreadableImages

    if preprocess is None:
        preprocess = BatchPreprocess.for_transform(
            getattr(loader.dataset, "transform", None), env.device,
            bool(getattr(model, "channels_last", False)))
    was_training = model.training
    model.eval()
    device = env.device
    loss_sum, n, c1, c5 = 0.0, 0, 0, 0
    n_logits = 0
    unreadable = UnreadableImages("val")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    batches = loader
    if progress:
        import sys

        from tqdm import tqdm

        batches = tqdm(loader, total=len(loader), desc=desc, unit="batch", leave=False,
                       dynamic_ncols=True, file=sys.stderr)
    for images, target, failures in batches:
        unreadable.add_batch(loader.dataset, failures)
        # Failures mark a replacement sample: leave it out, so every readable image counts
        # exactly once.
        keep = [i for i, f in enumerate(failures) if not f]
        if not keep:
            continue
        images = preprocess(images)
        if len(keep) < len(failures):
            images, target = images[keep], target[keep]
        target = target.to(device, non_blocking=True)
        logits = model(images).float()
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        k1, k5 = accuracy_counts(logits, target)
        n_logits = logits.shape[1]
        c1 += k1
        c5 += k5
        n += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    loss_sum, n, c1, c5 = all_sum(env, [loss_sum, n, c1, c5])
    merged = UnreadableImages("val")
    for files in gather_objects(env, unreadable.state()):
        merged.merge(files)
    elapsed = max(all_sum(env, [elapsed])[0] / env.world_size, 1e-9)
    model.train(was_training)
    n = int(n)
    return {
        "top1": 100.0 * c1 / max(n, 1),
        # Top-5 of fewer than 5 classes is 100% whatever the model does: not reported.
        "top5": None if 0 < n_logits < 5 else 100.0 * c5 / max(n, 1),
        "loss": loss_sum / max(n, 1),
        "images": n,
        "img_s": n / elapsed,
        "seconds": elapsed,
        "skipped_images": len(merged),
        "skipped_paths": merged.paths(),
        "skipped_files": merged.state(),
    }


def resolve_checkpoint_path(path: str) -> str:
    """A run folder or checkpoints folder means its ``last`` weights; files pass through."""
    import os

    from ..weights.sources import require_weights
    from .errors import RunError

    if not os.path.isdir(path):
        return path  # a file, or nothing: the reader says which
    return require_weights(path, "--checkpoint", RunError, releases=False).path


# Sub-folder names that mark a dataset root laid out by split rather than by class.
_SPLIT_NAMES = ("train", "val", "validation", "test")


def _shard_layout(data: str, split: str) -> Any:
    """The parquet or tar layout of ``data``, or None for the folder forms (a dataset root
    with split folders, or a split folder itself)."""
    import os

    from ..data.layout import LayoutError, detect_layout

    if not os.path.isdir(data) or os.path.isdir(os.path.join(data, split)):
        return None
    try:
        layout = detect_layout(data, (split,))
    except LayoutError as exc:
        if exc.found:  # mixed forms
            raise
        return None
    return layout if layout.kind != "folder" else None


def run_evaluation(spec: Any, checkpoint: str, data: Any = None, split: str = "val",
                   batch_size: int = 128, workers: int = 4, device: str = "auto",
                   amp: Any = None, amp_dtype: str = "bfloat16",
                   channels_last: Any = None, img_size: Any = None,
                   crop_pct: Any = None, log: Any = None, val_samples: Optional[int] = None,
                   progress: bool = False) -> Dict[str, Any]:
    """Load ``checkpoint`` (mfdsl, timm or official layout) into the model and evaluate it
    on ``data``/``split`` (or ``data`` itself if it has no such sub-folder; the embedded
    dataset's val split if ``data`` is None).

    A checkpoint of an mfdsl run carries its context (``run_folder.RunContext``): the model
    fingerprint (``spec``, if given, must build that model; without ``spec`` the run's own
    is used), the input size and eval transform it was trained with (used unless
    ``img_size``/``crop_pct`` override them) and its class list (labels are positions in
    it; a folder class outside it is an error). A checkpoint without context (a bare or
    timm/official file) needs ``spec``; labels are then the folder's sorted class names,
    whose number must equal the head's. ``val_samples``: evaluate only that many images,
    spread evenly over the split (a quick check, not a comparable score); ``progress``: a
    tqdm bar on the first rank.
    """
    import os

    from .. import runs
    from ..api import build_model
    from ..fingerprint import model_fingerprint
    from ..ir import with_overrides
    from .distributed import setup, teardown
    from .errors import DataError, RunError
    from ..data.dataset import (ShardSampler, SkippingImageFolder, SourceDataset, eval_transform,
                                make_loader, spread_subset)
    from ..data.layout import open_source
    from .run_folder import checkpoint_context

    from .distributed import checked_alike_on_every_rank

    # Everything before the process group is checked alike by every rank of a torchrun
    # job: rank 0 alone reports a bad input.
    with checked_alike_on_every_rank():
        say = log or (lambda msg: None)
        if batch_size < 1:
            raise RunError("--batch-size must be >= 1")
        if val_samples is not None and val_samples < 1:
            raise RunError(f"--val-samples must be >= 1, got {val_samples}")
        if crop_pct is not None and not 0 < crop_pct <= 1:
            raise RunError(f"--crop-pct must be in (0, 1], got {crop_pct}")
        ckpt_path = resolve_checkpoint_path(checkpoint)
        if not os.path.exists(ckpt_path):
            raise RunError(f"--checkpoint {checkpoint}: no such file")
        ctx = checkpoint_context(ckpt_path) if ckpt_path.endswith(runs.WEIGHTS_EXT) else None
        if ctx is None:
            if spec is None:
                raise RunError(f"--checkpoint {checkpoint} carries no run context (not from an "
                               "mfdsl run): give the SPEC it was made for")
        else:
            if spec is None:
                spec = ctx.load_spec(ckpt_path + " (run spec)")
            else:
                ctx.check_model(spec, f"{ckpt_path} was trained as", "evaluate the run "
                                "without a SPEC, or give the run's own spec.mf")
                if (tuple(spec.img_size) != tuple(ctx.img_size) and img_size is None) or any(
                        getattr(spec.eval, k) != (tuple(v) if isinstance(v, list) else v)
                        for k, v in ctx.eval.items()):
                    say("note: using the run's input size and eval transform "
                        f"({ctx.img_size[0]}x{ctx.img_size[1]}, crop_pct {ctx.eval['crop_pct']}, "
                        f"{ctx.eval['interpolation']}), not the spec's")
                spec = ctx.apply(spec)
        if img_size is not None:
            img_size = (int(img_size[0]), int(img_size[1]))
            if ctx is not None and img_size != tuple(ctx.img_size):
                say(f"note: --img-size {img_size[0]}x{img_size[1]} overrides the run's "
                    f"{ctx.img_size[0]}x{ctx.img_size[1]}")
            from ..pipeline import check_at_img_size

            check_at_img_size(spec, img_size)  # a size the model cannot take: a located error
            spec = with_overrides(spec, img_size=img_size)
        if crop_pct is not None:
            spec = with_overrides(spec, eval=with_overrides(spec.eval, crop_pct=float(crop_pct)))
        if data is None:
            from ..data.tinyshapes import ensure_tinyshapes

            data = str(ensure_tinyshapes())
        if not os.path.isdir(data):
            raise DataError(f"--data {data}: no such folder")
        shards = _shard_layout(data, split)
        root = os.path.join(data, split) if os.path.isdir(os.path.join(data, split)) else data
        if shards is not None:
            root = shards.where(split) or ""
            if not root:
                raise DataError(f"--data {data} has no '{split}' split ({shards.describe()}); "
                                "choose one with --split")
        splits = sorted(n for n in _SPLIT_NAMES if os.path.isdir(os.path.join(data, n)))
        if root == data and splits:
            # Evaluating the root would take 'train' etc. for class folders: a meaningless score.
            raise DataError(f"--data {data} has no '{split}' folder (it has {', '.join(splits)}); "
                            "choose one with --split")
        model = build_model(spec)
        from ..ckptformats.weights import CheckpointError, load_checkpoint

        try:
            report = load_checkpoint(model, ckpt_path)
        except CheckpointError as exc:
            raise RunError(f"cannot load checkpoint: {exc}") from None
        if ctx is not None:
            if len(ctx.classes) > model.num_classes:
                raise DataError(f"the run's class list has {len(ctx.classes)} classes but the "
                                f"model has {model.num_classes}")
            dataset = (SkippingImageFolder(root, eval_transform(model), classes=ctx.classes)
                       if shards is None else SourceDataset(
                           open_source(shards, split, ctx.classes), eval_transform(model)))
            class_source = "run"
        else:
            dataset = (SkippingImageFolder(root, eval_transform(model)) if shards is None
                       else SourceDataset(open_source(shards, split), eval_transform(model)))
            class_source = "folder"
            n = len(dataset.classes)
            if n != model.num_classes:
                raise DataError(
                    f"{root} has {n} class folders but the model has {model.num_classes} classes; "
                    f"{ckpt_path} records no class list (not from an mfdsl run), so labels are "
                    "the positions of the sorted folder names and must match the head one to one")
            say(f"note: {ckpt_path} records no class list: labels are the {n} sorted class "
                f"folder names of {root}")
    env = setup(device)
    try:
        cuda = env.device.type == "cuda"
        from .device_plan import resolve_device_plan

        # The device decisions train makes too (one resolver), for evaluation: eager.
        plan = resolve_device_plan(env.device, spec.recipe, amp=amp, amp_dtype=amp_dtype,
                                   channels_last=channels_last, compile=False, training=False)
        use_amp = plan.amp
        # The workers' uint8 images laid out as the model runs (known once the device is).
        dataset.transform = eval_transform(model, plan.channels_last)
        from ..target.prepare import compile_for_target

        prepared = compile_for_target(model.eval(), mode=plan.mode, **plan.target())
        subset = spread_subset(len(dataset), val_samples)
        loader = make_loader(dataset, ShardSampler(len(dataset), env.rank, env.world_size,
                                                   subset),
                             batch_size, workers, 0, drop_last=False, pin_memory=cuda)
        res = evaluate(prepared, loader, env, progress=progress and env.is_main,
                       desc=f"eval {split}")
        from .distributed import barrier

        barrier(env)  # ranks tear the process group down together
    finally:
        teardown()
    res.pop("skipped_files")
    res.update(checkpoint=ckpt_path, checkpoint_format=getattr(report, "format", None),
               data=root, classes=len(dataset.classes), class_source=class_source,
               device=str(env.device), world_size=env.world_size, amp=bool(use_amp),
               img_size=list(spec.img_size), crop_pct=spec.eval.crop_pct,
               model_fingerprint=model_fingerprint(spec))
    return res
