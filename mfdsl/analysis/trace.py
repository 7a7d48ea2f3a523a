"""Trace a model to an aten-level fx graph on fake tensors, keeping each op's module path.

The graph comes from ``torch.fx.experimental.proxy_tensor.make_fx`` in fake-tensor mode:
shapes are real, no storage is allocated, so tracing a 100M-parameter model at batch 256
costs a few seconds of Python. Every ``call_function`` node carries
``meta["nn_module_stack"]`` (innermost module last) so an op can be attributed to the
stem, a stage or the head.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.experimental.proxy_tensor import make_fx


def trace_aten(model: nn.Module, example: torch.Tensor, *, pre_dispatch: bool = False,
               fn: Optional[Callable[[torch.Tensor], Any]] = None) -> fx.GraphModule:
    """The aten graph of ``fn(example)`` (default: ``model(example)``) with module paths.

    ``pre_dispatch=False`` gives the post-autograd graph in which ``linear`` is ``mm`` /
    ``addmm`` and attention is decomposed into ``bmm`` + softmax; ``pre_dispatch=True``
    keeps ``linear``, ``conv2d`` and ``scaled_dot_product_attention`` whole.
    The model may live on the meta device.
    """
    call = fn if fn is not None else model

    def run(x: torch.Tensor) -> Any:
        return call(x)

    # make_fx records nn_module_stack only when the traced callable exposes the root
    # module as ``_orig_mod`` (the attribute torch.compile wrappers carry).
    run._orig_mod = model  # type: ignore[attr-defined]
    return make_fx(run, tracing_mode="fake", pre_dispatch=pre_dispatch,
                   record_module_stack=True, _allow_non_fake_inputs=True)(example)


def module_path(node: fx.Node) -> str:
    """Dotted path of the innermost module that issued ``node`` ("" = the root)."""
    stack: Dict[str, Tuple[str, Any]] = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return _clean_path(path)


def module_class(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    cls = list(stack.values())[-1][1]
    name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return name.rsplit(".", 1)[-1]


def _clean_path(path: str) -> str:
    # Older tracers spell the path as attribute accesses (``L['self'].stages[0]``); newer
    # ones give the plain fqn. Normalise both to ``stages.0``.
    for junk in ("L['self'].", "L['self']", "L__self__."):
        path = path.replace(junk, "")
    path = path.replace("[", ".").replace("]", "").replace("'", "")
    return path.strip(".")


def part_of(path: str, num_stages: int) -> str:
    """Which part of a MetaFormer a module path belongs to: stem, stage i, head or other."""
    head = path.split(".", 1)[0]
    if head == "stem":
        return "stem"
    if head == "head":
        return "head"
    if head == "stages":
        rest = path.split(".")
        if len(rest) > 1 and rest[1].isdigit() and int(rest[1]) < num_stages:
            return f"stage {rest[1]}"
    return "other"
