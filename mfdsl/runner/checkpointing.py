"""Training checkpoints: atomic files, RNG state capture, retention and resume discovery.

A checkpoint named X is a pair in ``<run>/checkpoints/``:

* ``X.safetensors`` - the model weights (mfdsl-native names), metadata ``step``/``epoch``;
* ``X.state.pt`` - everything else needed to continue exactly (optimizer, schedule, scaler,
  EMA weights, RNG states of every rank, epoch, data position), saved with ``torch.save``
  from plain types and tensors only, so ``torch.load(weights_only=True)`` reads it.

This module writes them and finds them; the files are read by
:mod:`mfdsl.ckptformats.train_state`, whose errors the runner reports as a ``RunError``.

Periodic checkpoints are ``ckpt-<step>``; ``last`` and ``best`` are hard links to one of
them (a copy where links are not supported). Every file is written to a temporary file in
the same folder, fsynced and renamed into place, so a crash leaves either the old file or
the new one. A pair is valid only when both files exist and name the same step.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .. import fsio, runs
from ..ckptformats.train_state import (STATE_EXT, STATE_FORMAT, WEIGHTS_EXT, read_state,
                                       read_weights, weights_meta)
from ..ckptformats.weights import CheckpointError
from .errors import RunError

# --------------------------------------------------------------------------- atomic files
# Every file goes through mfdsl.fsio (temporary file in the same folder, fsync, rename);
# checkpoints are run-folder files, so a symlink in their place is refused.
def atomic_write_bytes(path: str, data: bytes) -> None:
    fsio.write_atomic(path, data, links=fsio.INTERNAL)


def atomic_torch_save(obj: Any, path: str) -> None:
    def write(tmp: str) -> None:
        # Through a Python file: a full disk surfaces as the OSError it is (torch's own
        # writer reports "basic_ios::clear" or an enforce failure).
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    fsio.write_atomic_with(path, write, links=fsio.INTERNAL)


def atomic_save_weights(tensors: Dict[str, torch.Tensor], path: str,
                        meta: Dict[str, Any]) -> None:
    from safetensors.torch import save

    # One metadata key holding sorted JSON: the file's bytes do not depend on dict order.
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={"mfdsl": json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, blob)


# --------------------------------------------------------------------------- RNG states
def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (each rank its own ``seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> Dict[str, Any]:
    """python/numpy/torch(/cuda) RNG states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: Dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- pairs
def load_state(path: str) -> Dict[str, Any]:
    """The training state of ``path`` (an ``X.state.pt``); an unreadable one is a RunError."""
    try:
        return read_state(path)
    except CheckpointError as exc:
        raise RunError(str(exc)) from None


def pair_step(stem: str) -> Optional[int]:
    """The step of a valid pair ``stem``.safetensors/``stem``.state.pt, else None."""
    w, s = stem + WEIGHTS_EXT, stem + STATE_EXT
    if not (os.path.isfile(w) and os.path.isfile(s)):
        return None
    meta = weights_meta(w)
    if meta is None:
        return None
    try:
        state = load_state(s)
    except RunError:
        return None
    return meta["step"] if state.get("step") == meta.get("step") else None


def list_periodic(folder: str) -> List[Tuple[int, str]]:
    """(step, stem) of ``ckpt-<step>`` pairs in ``folder``, newest first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        stem = name[: -len(WEIGHTS_EXT)] if name.endswith(WEIGHTS_EXT) else ""
        step = runs.periodic_step(stem)
        if step is not None:
            found.append((step, os.path.join(folder, stem)))
    return sorted(found, reverse=True)


def checkpoint_files(folder: str) -> List[str]:
    """Names of the checkpoint files (valid or not) in a checkpoints folder."""
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n.endswith((WEIGHTS_EXT, STATE_EXT)))


def find_latest(folder: str) -> Optional[str]:
    """The stem of the newest valid pair in a checkpoints folder (``last`` first)."""
    last = os.path.join(folder, runs.LAST)
    candidates = [(pair_step(last), last)]
    candidates += [(pair_step(stem), stem) for _, stem in list_periodic(folder)]
    valid = [(step, stem) for step, stem in candidates if step is not None]
    if not valid:
        return None
    best_step = max(step for step, _ in valid)
    return next(stem for step, stem in valid if step == best_step)


def resolve_resume(resume: str, output_dir: str) -> Optional[str]:
    """The checkpoint stem ``--resume`` names: ``auto`` (latest in the output folder, None if
    there is none), a run or checkpoints folder, or a ``.safetensors``/``.state.pt`` file."""
    if resume == "auto":
        folder = runs.checkpoints_dir(output_dir)
        stem = find_latest(folder)
        files = checkpoint_files(folder)
        if stem is None and files:
            # Starting fresh would overwrite (and prune) what is there: refuse, touch nothing.
            shown = ", ".join(files[:6]) + (f", ... ({len(files)} files)" if len(files) > 6 else "")
            raise RunError(f"--resume auto: {folder} holds checkpoint files ({shown}) but no "
                           f"complete, readable pair (each needs X{WEIGHTS_EXT} and "
                           f"X{STATE_EXT} for the same step); nothing was changed. Resume from "
                           "one explicitly with --resume FILE, or move them away")
        return stem
    path = resume
    if os.path.isdir(path):
        folder = runs.checkpoints_dir(path) if os.path.isdir(
            runs.checkpoints_dir(path)) else path
        stem = find_latest(folder)
        if stem is None:
            raise RunError(f"--resume {resume}: no complete checkpoint in {folder}")
        return stem
    for ext in (STATE_EXT, WEIGHTS_EXT):
        if path.endswith(ext):
            path = path[: -len(ext)]
            break
    if not (os.path.exists(path + WEIGHTS_EXT) or os.path.exists(path + STATE_EXT)):
        raise RunError(f"--resume {resume}: checkpoint not found")
    if pair_step(path) is None:
        raise RunError(f"--resume {resume}: incomplete or corrupt checkpoint (needs matching "
                       f"{os.path.basename(path)}{WEIGHTS_EXT} and {STATE_EXT} files)")
    return path


def load_weights_file(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file ``path``; an unreadable one is a RunError."""
    try:
        return read_weights(path)
    except CheckpointError as exc:
        raise RunError(str(exc)) from None


class CheckpointWriter:
    """Writes ckpt-<step> pairs, points ``last``/``best`` at them and prunes old ones.

    ``context`` (a run's ``RunContext.to_json()``) goes into every weights file's
    metadata; pruning deletes only periodic pairs this writer wrote or whose metadata names
    this run (a resumed run's earlier pairs).
    """

    def __init__(self, folder: str, keep_recent: int,
                 context: Optional[Dict[str, Any]] = None) -> None:
        self.folder = folder
        self.keep_recent = max(0, keep_recent)
        self.context = context
        self._written: set = set()  # stems this writer made (for writers without a context)

    def save(self, step: int, epoch: int, weights: Dict[str, torch.Tensor],
             state: Dict[str, Any], is_best: bool,
             ema_weights: Optional[Dict[str, torch.Tensor]] = None) -> str:
        """Write the pair for ``step``; returns its stem (before pruning)."""
        fsio.ensure_folder(self.folder)
        stem = os.path.join(self.folder, runs.periodic_stem(step))
        meta: Dict[str, Any] = {"step": step, "epoch": epoch, "format": "mfdsl"}
        if self.context is not None:
            meta["run"] = self.context
        atomic_save_weights(weights, stem + WEIGHTS_EXT, meta)
        if ema_weights is not None:
            atomic_save_weights(ema_weights, stem + runs.EMA + WEIGHTS_EXT, dict(meta, ema=True))
        atomic_torch_save(dict(state, format=STATE_FORMAT, step=step, epoch=epoch),
                          stem + STATE_EXT)
        self._written.add(stem)
        targets = [runs.LAST] + ([runs.BEST] if is_best else [])
        for name in targets:
            dst = os.path.join(self.folder, name)
            if ema_weights is not None:
                fsio.link_atomic(stem + runs.EMA + WEIGHTS_EXT, dst + runs.EMA + WEIGHTS_EXT)
            fsio.link_atomic(stem + WEIGHTS_EXT, dst + WEIGHTS_EXT)
            fsio.link_atomic(stem + STATE_EXT, dst + STATE_EXT)
        self.prune()
        return stem

    def _ours(self, stem: str) -> bool:
        if stem in self._written:
            return True
        meta = weights_meta(stem + WEIGHTS_EXT)
        run = (meta or {}).get("run")
        return (self.context is not None and isinstance(run, dict)
                and run.get("run_id") == self.context.get("run_id"))

    def prune(self) -> None:
        mine = [stem for _, stem in list_periodic(self.folder) if self._ours(stem)]
        for stem in mine[self.keep_recent:]:
            for ext in (STATE_EXT, runs.EMA + WEIGHTS_EXT, WEIGHTS_EXT):
                if os.path.lexists(stem + ext):
                    os.unlink(stem + ext)
