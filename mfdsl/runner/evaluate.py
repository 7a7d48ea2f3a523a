"""Top-1 / top-5 / loss / throughput of a model over a split (``mfdsl eval`` is
:mod:`mfdsl.runner.eval_run`; validation in training :mod:`mfdsl.runner.validation`)."""
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
