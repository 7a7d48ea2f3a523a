"""A run's weights file into the plain model of its spec: the one loader of a run's
weights (``--init-from``, ``finetune_from``, ``eval``, ``compile --checkpoint``).

A run trained with low-rank adapters saves them unmerged (``<module>.parametrizations.
weight.original`` and its ``lora_a``/``lora_b``); the plain model has ``<module>.weight``.
The adapters are merged with the alpha the run recorded, as the trained model computed.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..ckptformats.weights import LoadReport, load_checkpoint
from .errors import RunError


def load_run_weights(model: nn.Module, path: str, option: str) -> LoadReport:
    """Load the weights file ``path`` into ``model``, merging unmerged adapters first (a
    note in the report says so); ``option`` names the source in errors."""
    merged = merged_adapters(path, option)
    if merged is None:
        return load_checkpoint(model, path)
    report = load_checkpoint(model, merged[0])
    report.source = path
    report.notes.insert(0, merged[1])
    return report


def merged_adapters(path: str, option: str) -> Optional[Tuple[Dict[str, torch.Tensor], str]]:
    """The weights file ``path`` with its unmerged low-rank adapters merged into their
    weights, and the note saying so; None when it has none. Their alpha is the recipe
    the run recorded (run.json or the file's metadata)."""
    from ..ckptformats.weights import read_state_dict
    from ..layers.adapters import adapter_state_rank, merge_adapter_state
    from .run_folder import checkpoint_context

    if not _has_adapter_keys(path):  # the header alone: most files have none
        return None
    sd, _, _ = read_state_dict(path)
    try:
        rank = adapter_state_rank(sd)
    except ValueError as exc:
        raise RunError(f"{option} {path}: {exc}") from None
    if rank is None:
        return None
    ctx = checkpoint_context(path)
    recipe = ctx.load_spec(path).recipe if ctx is not None else None
    if recipe is None or not recipe.adapters:
        raise RunError(f"{option} {path}: the weights hold unmerged low-rank adapters (rank "
                       f"{rank}) but no run record says their alpha (run.json or the file's "
                       "metadata with an 'adapters' recipe); merge them where they were "
                       "trained (mfdsl export, or mfdsl.layers.adapters.merge_adapters)")
    if recipe.adapter_rank != rank:
        raise RunError(f"{option} {path}: the adapters have rank {rank}, the run's recipe "
                       f"says adapter_rank {recipe.adapter_rank}; the file is not that run's")
    merged, names = merge_adapter_state(sd, recipe.adapter_alpha)
    return merged, (f"{len(names)} low-rank adapters (rank {rank}, alpha "
                    f"{recipe.adapter_alpha:g}) merged into their weights")


def _has_adapter_keys(path: str) -> bool:
    """Whether a weights file (mfdsl's runs save safetensors) names adapter tensors."""
    from .. import runs
    from ..ckptformats.train_state import weights_names

    names = weights_names(path) if path.endswith(runs.WEIGHTS_EXT) else None
    return any(k.endswith((".lora_a", ".lora_b")) for k in names or ())
