"""mfdsl's own training checkpoint: a pair of files named ``X`` in ``<run>/checkpoints/``.

* ``X.safetensors`` - the model weights under mfdsl's names, with one metadata entry
  ``"mfdsl"`` holding sorted JSON (``step``, ``epoch``, ``format``, and the run's context);
* ``X.state.pt`` - everything else needed to continue (a dict of plain types and tensors
  whose ``"format"`` is :data:`STATE_FORMAT`), read with ``torch.load(weights_only=True)``.

This module reads them; the runner writes them (``mfdsl.runner.checkpointing``). Errors are
:class:`~mfdsl.ckptformats.weights.CheckpointError`; the runner reports them as its own.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import torch

from .. import fsio, runs
from .weights import CheckpointError

__all__ = ["WEIGHTS_EXT", "STATE_EXT", "STATE_FORMAT", "weights_meta", "read_state",
           "read_weights"]

WEIGHTS_EXT = runs.WEIGHTS_EXT
STATE_EXT = runs.STATE_EXT
STATE_FORMAT = "mfdsl-train-state"


def weights_meta(path: str) -> Optional[Dict[str, Any]]:
    """The mfdsl metadata of a weights file, or None if unreadable / not ours."""
    from safetensors import safe_open

    try:
        fsio.check_regular(path, "checkpoint")
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta["mfdsl"])
    except Exception:  # any unreadable file is simply not a valid checkpoint
        return None


def weights_names(path: str) -> Optional[List[str]]:
    """The tensor names of a safetensors weights file (its header alone), or None if it is
    unreadable or not a regular file (a FIFO must not block the caller)."""
    from safetensors import safe_open

    try:
        fsio.check_regular(path, "checkpoint")
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception:  # any unreadable file: the load that follows says why
        return None


def read_state(path: str) -> Dict[str, Any]:
    """The training state dict of an ``X.state.pt`` file, checked to be mfdsl's."""
    try:
        fsio.check_regular(path, "training state file")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"training state file not found: {path}") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read training state {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an mfdsl training state file")
    return state


def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of an ``X.safetensors`` weights file, on the CPU."""
    from safetensors.torch import load_file

    try:
        fsio.check_regular(path, "checkpoint")
        return load_file(path, device="cpu")
    except Exception as exc:
        raise CheckpointError(f"cannot read weights {path}: {exc}") from None
