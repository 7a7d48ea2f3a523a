"""What a fine-tuning recipe does to the model before the optimizer is built.

``layer_decay`` (timm's ``param_groups_layer_decay`` semantics): the parameters are
ordered stem, then each stage's blocks in order (a stage's downsampling with its first
block), then everything else (output norm, head); the distinct places get consecutive
layer ids 0..L-1 and the lr scale ``layer_decay ** (L - 1 - id)``. ``freeze`` stops
gradients of the parts a selection names (:mod:`mfdsl.layers.select`); ``linear_probe``
trains the head alone; ``adapters`` adds low-rank adapters (:mod:`mfdsl.layers.adapters`)
to the linear / 1x1-conv layers it names and trains them with the head alone. The same
function prepares the dry run's meta-device model and the run's model, so the plan shows
what the run trains.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn

from ..ir import RecipeSpec
from ..layers.adapters import adaptable, add_adapters
from ..layers.select import parse_selection, selected
from .errors import RunError

HEAD = "head"  # the selection place of the classifier


def finetuning(r: RecipeSpec) -> bool:
    """Whether the recipe asks for any fine-tuning treatment."""
    return bool(r.layer_decay is not None or r.freeze or r.linear_probe or r.adapters)


def _ordinal(name: str) -> Tuple[float, ...]:
    m = re.match(r"^stages\.(\d+)\.(?:downsample|blocks\.(\d+))(?:\.|$)", name)
    if name.startswith("stem.") or name == "stem":
        return (0.0,)
    if m:
        return (1.0, float(m.group(1)), float(m.group(2) or 0))
    return (math.inf,)


def layer_ids(names: List[str]) -> Dict[str, int]:
    """name -> layer id (consecutive over the distinct places present)."""
    order = {k: i for i, k in enumerate(sorted({_ordinal(n) for n in names}))}
    return {n: order[_ordinal(n)] for n in names}


def lr_scales(model: nn.Module, decay: float) -> Dict[str, float]:
    """The lr scale of every parameter (frozen ones included: the layer count is the
    whole model's, as timm counts it)."""
    ids = layer_ids([n for n, _ in model.named_parameters()])
    top = max(ids.values())
    return {n: decay ** (top - i) for n, i in ids.items()}


def apply_finetune(model: nn.Module, r: RecipeSpec) -> Dict[str, Any]:
    """Add the recipe's adapters and freeze what it freezes, in place; the record of what
    trains (``plan.json``'s ``finetune``)."""
    record: Dict[str, Any] = {}
    names = [n for n, _ in model.named_parameters()]
    keep_trainable: Optional[List[str]] = None
    if r.adapters:
        items = parse_selection(r.adapters)
        candidates = [n for n, m in model.named_modules() if n and adaptable(m)]
        targets, empty = selected(items, candidates)
        _refuse_empty("adapters", empty, "linear or 1x1-conv layer")
        lora = add_adapters(model, targets, r.adapter_rank, r.adapter_alpha,
                            r.adapter_dropout)
        record["adapters"] = {"on": targets, "rank": r.adapter_rank,
                              "alpha": r.adapter_alpha, "dropout": r.adapter_dropout,
                              "params": lora}
        keep_trainable = lora + [n for n, _ in model.named_parameters()
                                 if _is_head(n)]
    elif r.linear_probe:
        keep_trainable = [n for n in names if _is_head(n)]
        record["linear_probe"] = True
    frozen: List[str] = []
    if r.freeze:
        hit, empty = selected(parse_selection(r.freeze), names)
        _refuse_empty("freeze", empty, "parameter")
        frozen = hit
        record["freeze"] = r.freeze
    params = dict(model.named_parameters())
    for n, p in params.items():
        if n in frozen or (keep_trainable is not None and n not in keep_trainable):
            p.requires_grad_(False)
    trainable = [n for n, p in params.items() if p.requires_grad]
    record["trainable_params"] = sum(params[n].numel() for n in trainable)
    record["frozen_params"] = sum(p.numel() for n, p in params.items() if not p.requires_grad)
    record["trainable"] = trainable
    if r.layer_decay is not None:
        scales = lr_scales(model, r.layer_decay)
        groups: Dict[int, Dict[str, Any]] = {}
        ids = layer_ids(list(params))
        for n in trainable:
            g = groups.setdefault(ids[n], {"layer": ids[n], "lr_scale": scales[n],
                                           "params": []})
            g["params"].append(n)
        record["layer_decay"] = {"decay": r.layer_decay, "layers": max(ids.values()) + 1,
                                 "groups": [groups[k] for k in sorted(groups)]}
    return record


def _is_head(name: str) -> bool:
    return name.startswith("head.fc.")


def _refuse_empty(field: str, empty: List[str], what: str) -> None:
    if empty:
        raise RunError(f"train {field}: {', '.join(repr(e) for e in empty)} names no "
                       f"{what} of this model")


def describe(record: Dict[str, Any]) -> str:
    """The dry run's line."""
    parts = [f"trains {record['trainable_params']:,} parameters, "
             f"{record['frozen_params']:,} frozen"]
    if "adapters" in record:
        a = record["adapters"]
        parts.append(f"adapters (rank {a['rank']}, alpha {a['alpha']:g}, dropout "
                     f"{a.get('dropout', 0.0):g}) on "
                     f"{len(a['on'])} layers, with the head")
    if record.get("linear_probe"):
        parts.append("linear probe: the head alone")
    if "freeze" in record:
        parts.append(f"frozen: {record['freeze']}")
    if "layer_decay" in record:
        ld = record["layer_decay"]
        scales = [g["lr_scale"] for g in ld["groups"]]
        parts.append(f"layer decay {ld['decay']:g} over {ld['layers']} layers (lr scale "
                     f"{min(scales):.4g} .. {max(scales):.4g})")
    return "fine-tuning: " + "; ".join(parts)
