"""What the official MetaFormer training resolved to, per paper model (the official scripts).

The official training is the release's ``train.py`` (timm 0.6.11's, forked) run with the
flags of ``scripts/<family>/train_<model>.sh`` (ImageNet-1K, from scratch) and
``finetune_<model>_384.sh`` (384 fine-tune from the 224 checkpoint), with train.py's
defaults where a script passes nothing. A run plan compares itself with these values to list
its deviations (:func:`mfdsl.runner.plan.deviations`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

# family: (optimizer, lr at batch 4096, warmup epochs, {size: (drop path, head dropout)})
_PRETRAIN = {
    "identityformer": ("adamw", 4e-3, 5, {"s12": (0.1, 0.0), "s24": (0.1, 0.0),
                                          "s36": (0.2, 0.0), "m36": (0.3, 0.0),
                                          "m48": (0.4, 0.0)}),
    "randformer": ("adamw", 4e-3, 5, {"s12": (0.1, 0.0), "s24": (0.1, 0.0), "s36": (0.2, 0.0),
                                      "m36": (0.3, 0.0), "m48": (0.3, 0.0)}),
    "poolformerv2": ("adamw", 4e-3, 5, {"s12": (0.1, 0.0), "s24": (0.1, 0.0),
                                        "s36": (0.2, 0.0), "m36": (0.3, 0.0),
                                        "m48": (0.4, 0.0)}),
    "convformer": ("adamw", 4e-3, 20, {"s18": (0.2, 0.0), "s36": (0.3, 0.0),
                                       "m36": (0.4, 0.0), "b36": (0.6, 0.0)}),
    "caformer": ("lamb", 8e-3, 20, {"s18": (0.15, 0.0), "s36": (0.3, 0.4), "m36": (0.4, 0.4),
                                    "b36": (0.6, 0.5)}),
}
# family: (optimizer, lr at batch 1024, {size: (drop path, head dropout)}) of the 384
# fine-tune scripts.
_FINETUNE = {
    "convformer": ("adamw", 5e-5, {"s18": (0.3, 0.4), "s36": (0.5, 0.4), "m36": (0.8, 0.5),
                                   "b36": (0.8, 0.5)}),
    "caformer": ("lamb", 1e-4, {"s18": (0.3, 0.4), "s36": (0.5, 0.4), "m36": (0.7, 0.4),
                                "b36": (0.8, 0.5)}),
}
# The optimizer eps each class uses when the script passes none.
_EPS = {"adamw": 1e-8, "lamb": 1e-6}


def official_recipe(model_name: str) -> Optional[Dict[str, Any]]:
    """The resolved official recipe of a paper model, in run-plan terms; None for a model
    the paper did not train."""
    parts = model_name.split("_")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "384"):
        return None
    family, size = parts[0], parts[1]
    shared: Dict[str, Any] = {
        "betas": [0.9, 0.999], "weight_decay": 0.05, "warmup_lr": 1e-6, "min_lr": 1e-5,
        "label_smoothing": 0.1, "mixup_switch_prob": 0.5,
        "randaugment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25,
        "train_interpolation": "random", "clip_grad": None, "precision": "fp32",
    }
    if len(parts) == 2:
        if family not in _PRETRAIN or size not in _PRETRAIN[family][3]:
            return None
        opt, lr, warmup, sizes = _PRETRAIN[family]
        dp, hd = sizes[size]
        return dict(shared, img_size=[224, 224], epochs=300, cooldown_epochs=10,
                    global_batch=4096, lr=lr, optimizer=opt, eps=_EPS[opt], sched="cosine",
                    sched_unit="epoch", warmup_mode="inside", warmup_epochs=warmup,
                    drop_path=dp, head_dropout=hd, mixup=0.8, cutmix=1.0, ema=None,
                    init_from="random")
    if family not in _FINETUNE or size not in _FINETUNE[family][2]:
        return None
    opt, lr, sizes = _FINETUNE[family]
    dp, hd = sizes[size]
    out = dict(shared, img_size=[384, 384], epochs=30, cooldown_epochs=0, global_batch=1024,
               lr=lr, optimizer=opt, eps=_EPS[opt], sched="constant", warmup_epochs=0,
               drop_path=dp, head_dropout=hd, mixup=0.0, cutmix=0.0, ema=0.9999,
               init_from=f"{family}_{size}")
    # --sched None: no schedule, so min_lr / warmup_lr / the unit do not apply; mixup off,
    # so neither does the switch probability.
    for unused in ("min_lr", "warmup_lr", "mixup_switch_prob"):
        out.pop(unused)
    return out
