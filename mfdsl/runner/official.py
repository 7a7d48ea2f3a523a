"""What the official MetaFormer training resolved to, per paper model (the official scripts).

The official training is the release's ``train.py`` (timm 0.6.11's, forked) run with the
flags of ``scripts/<family>/train_<model>.sh`` (ImageNet-1K, from scratch) and
``finetune_<model>_384.sh`` (384 fine-tune from the 224 checkpoint), with train.py's
defaults where a script passes nothing. A run plan compares itself with these values to list
its deviations (:func:`mfdsl.runner.plan.deviations`).

ImageNet-21K (ConvFormer and CAFormer, every size; sail-sg/metaformer README, "pretrained on
ImageNet-21K" and "pretrained on ImageNet-21K and finetuned on ImageNet-1K" tables): specs
``<model>_in21k`` (pre-training, 21841 classes, 224), ``<model>_in21ft1k`` (fine-tune at 224)
and ``<model>_384_in21ft1k`` (at 384), named as the README names the checkpoints. The
release states only the items in :data:`_IN21K_STATED`: it ships no 21K training or 21K->1K
fine-tuning script (its ``scripts/`` hold ImageNet-1K ones) and the paper's appendix was not
available to this check. Every other item is listed by :func:`official_unstated`, so the dry
run says it is not stated instead of comparing against a guess.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

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


# The ImageNet-21K spec names: suffix -> (what it is, classes, input size).
IN21K_CLASSES = 21841  # fall11 (mfdsl.ckptformats.in21k)
_IN21K_SUFFIXES = {"in21k": ("pretrain", IN21K_CLASSES, 224),
                   "in21ft1k": ("finetune", 1000, 224),
                   "384_in21ft1k": ("finetune", 1000, 384)}
# What the official release states for them. The 224 fine-tune starts from the model's
# ImageNet-21K checkpoint (README; ``<model>.sail_in22k`` in timm's names) with its
# 21841-class head mapped to 1000 classes by ``misc/in21k_to_1k_class_map.json``
# (``misc/process_21k_ckpt_before_1k_finetuning.py``). Whether the 384 fine-tune starts
# from the 21K or the 21K->1K 224 checkpoint is not stated.
HEAD_REMAP = "the official 21K->1K class map"


def in21k_kind(model_name: str) -> Optional[Tuple[str, str, int, int]]:
    """(zoo model, pretrain | finetune, classes, input size) of an ImageNet-21K spec name
    (``caformer_s18_384_in21ft1k``); None for any other name."""
    for suffix, (kind, classes, size) in _IN21K_SUFFIXES.items():
        if model_name.endswith("_" + suffix):
            base = model_name[: -len(suffix) - 1]
            family, _, arch = base.partition("_")
            if family in _FINETUNE and arch in _FINETUNE[family][2] and "_" not in arch:
                return base, kind, classes, size
    return None


def _in21k_stated(model_name: str) -> Optional[Dict[str, Any]]:
    found = in21k_kind(model_name)
    if found is None:
        return None
    base, kind, classes, size = found
    out: Dict[str, Any] = {"img_size": [size, size], "num_classes": classes}
    if kind == "pretrain":  # pre-training: from random init
        out["init_from"] = "random"
    if kind == "finetune":
        out["head_from_21k"] = HEAD_REMAP
    if model_name.endswith("_in21ft1k") and size == 224:
        out["init_from"] = f"{base}.sail_in22k"
    return out


def official_unstated(model_name: str) -> List[str]:
    """The recipe items the official sources do not state for this model (only the
    ImageNet-21K specs have any); the dry run lists them with this run's values."""
    found = in21k_kind(model_name)
    if found is None:
        return []
    base, kind = found[0], found[1]
    full = official_recipe(base if kind == "pretrain" else base + "_384")
    assert full is not None
    stated = _in21k_stated(model_name) or {}
    items = list(full) + (["init_from"] if "init_from" not in full else [])
    return [k for k in items if k not in stated]


def official_recipe(model_name: str) -> Optional[Dict[str, Any]]:
    """The resolved official recipe of a paper model, in run-plan terms (for an
    ImageNet-21K spec only the items the sources state); None for a model the paper did
    not train."""
    stated = _in21k_stated(model_name)
    if stated is not None:
        return stated
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
