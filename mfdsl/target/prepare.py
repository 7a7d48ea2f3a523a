"""Device preparation: the one function that puts a model on a device the way it will
run there -- speed variants, memory format, autocast, torch.compile, folding, DDP.

Every consumer goes through :func:`compile_for_target`: ``mfdsl train`` and ``mfdsl
eval`` (runner), ``mfdsl bench`` / ``benchmarks/``, ``mfdsl compile --target`` and
``mfdsl export`` (the reference variants). CPU and CUDA share this code; the device is a
parameter, so the CPU tests (inductor, bf16 autocast, channels_last, gloo DDP) run the
path a GPU run takes.

The result is a :class:`TargetModel` whose ``state_dict`` / ``load_state_dict`` are the
inner model's, so a checkpoint saved from the CPU-eager model loads into the
CUDA-compiled one and back (unless ``fold=True``, which merges parameters for inference).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn

from ..errors import UserError
from ..ir import ModelSpec
from ..layers.variants import select_variants, variants_for, variants_in_use

TARGETS = ("cpu", "cuda")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("default", "max-autotune", "reduce-overhead", "eager")
VARIANT_CHOICES = ("auto", "reference", "keep")


class TargetError(UserError, ValueError):
    """A request compile_for_target cannot honour (unknown option, missing device)."""


def to_channels_last(model: nn.Module) -> int:
    """Give conv weights the channels-last layout; returns how many were converted.

    The per-parameter rule: only a Conv2d's weight. mfdsl's blocks already run on
    (B, H, W, C) tensors, and oneDNN / cuDNN pick their NHWC kernels when the weight
    matches; every other 4-d parameter keeps its layout (global_filter's complex weight
    is read through ``view_as_complex``, which needs a unit last stride).
    ``model.to(memory_format=torch.channels_last)`` would convert them all.
    """
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.weight.ndim == 4:
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
                n += 1
    return n


class TargetModel(nn.Module):
    """A model placed and optimised for one device.

    ``forward`` moves the image to the device (channels-last when asked: the stem conv
    then writes the channels-last activations mfdsl's blocks use), enters autocast when
    a reduced dtype was asked for, and calls the compiled model if there is one (in
    training through the DDP wrapper, if any; in eval without it, so ranks with shards
    of different lengths never wait on each other). Training and evaluation are two
    compiled callables, each compiled once (:class:`Inference` says why). A compiled model
    in eval mode pads a batch smaller than its first one (the last batch of a split) up to
    that size and drops the padded rows: same results, no recompilation. The state dict is exactly
    the inner model's (no ``model.`` / ``module.`` / ``_orig_mod.`` prefix).
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: str, mode: str,
                 summary: Dict[str, Any], channels_last: bool = True,
                 train_fn: Optional[Callable] = None, eval_fn: Optional[Callable] = None,
                 wrapped: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.model = model
        self.device = device
        self.target = device.type
        self.dtype_name = dtype
        self.mode = mode
        self.summary = summary
        self.channels_last = channels_last
        # Kept out of the module tree so they add no state-dict keys.
        if train_fn is None:
            train_fn = wrapped if wrapped is not None else model
        object.__setattr__(self, "_train_fn", train_fn)
        object.__setattr__(self, "_eval_fn", eval_fn if eval_fn is not None else model)
        object.__setattr__(self, "wrapped", wrapped)
        self._eval_batch: Optional[int] = None

    @property
    def compiled(self) -> bool:
        return self.mode != "eager"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if x.ndim == 4 and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n = x.shape[0]
        if self.training:
            fn = self._train_fn
        else:
            fn = self._eval_fn
            if self.compiled:
                if self._eval_batch is None:
                    self._eval_batch = n
                elif n < self._eval_batch:  # exact in eval: every op is per sample
                    pad = x.new_zeros((self._eval_batch - n,) + tuple(x.shape[1:]))
                    x = torch.cat([x, pad]).contiguous(
                        memory_format=torch.channels_last if self.channels_last and
                        x.ndim == 4 else torch.contiguous_format)
        if self.mode == "reduce-overhead":
            # A new replay may overwrite the previous call's outputs: the step consumed
            # them (the loss, the backward) before asking for the next micro-batch.
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            out = fn(x)
        return out[:n] if out.shape[0] != n else out

    def autocast(self):
        """The autocast context of this target (a no-op for fp32)."""
        if self.dtype_name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.dtype_name])

    def train(self, mode: bool = True) -> "TargetModel":
        super().train(mode)
        if self.wrapped is not None:
            self.wrapped.train(mode)
        return self

    # The checkpoint contract: keys and values are the inner model's.
    def state_dict(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:  # type: ignore[override]
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):  # type: ignore[override]
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # forward_features, pretrained_cfg, spec, ... of the inner model
            return getattr(super().__getattr__("model"), name)


class Inference(nn.Module):
    """``model``'s forward behind a code object of its own, for the evaluation callable.

    Dynamo keeps its compiled graphs on the code object it was called on, guarded by the
    global state. Evaluation runs under ``torch.no_grad`` with the model in eval mode:
    through the training callable (``MetaFormer.forward``'s code) the first validation
    failed the grad-mode guard and *recompiled* the training frame; train -> eval -> train
    then flipped between two entries of one cache, which spends the frame's recompile
    budget (``torch._dynamo.config.recompile_limit``, 8) and hides a real recompilation
    among the expected ones. Called through this wrapper, the inference graph is compiled
    once on its own frame: no guard of the training graph ever fails, and dynamo's
    counters read "no recompilation" (tests/test_runner_compile_counters.py). The module
    is kept out of :class:`TargetModel`'s tree (no state-dict keys).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _validate(device: torch.device, dtype: str, mode: str, variants: str) -> None:
    if device.type not in TARGETS:
        raise TargetError(f"unknown target {device.type!r}; expected one of "
                          f"{', '.join(TARGETS)}")
    if dtype not in DTYPES:
        raise TargetError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if mode not in MODES:
        raise TargetError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if variants not in VARIANT_CHOICES:
        raise TargetError(f"unknown variants {variants!r}; expected one of "
                          f"{', '.join(VARIANT_CHOICES)}")
    if mode == "reduce-overhead" and device.type != "cuda":
        raise TargetError("mode reduce-overhead (CUDA graphs) needs target cuda, got "
                          f"{device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TargetError("target cuda was asked for but no CUDA device is available")


def compile_options(mode: str, channels_last: bool) -> Dict[str, Any]:
    """Inductor options for ``torch.compile``: ``mode``'s, and with mfdsl's own layout
    (``channels_last``) inductor's layout optimisation off.

    Why: that optimisation gives 4-d tensors the channels-last order of an NCHW tensor.
    mfdsl's blocks compute on (B, H, W, C) tensors, already channels-last for the convs;
    to inductor their H looks like channels, and it stored poolformerv2_s12's residual
    stream with H fastest, so the kernels touching it lost vectorisation. Off, compiled
    steps measured 7-17% faster on CPU (docs/benchmarks.md, fourth session; not yet
    measured on CUDA). A foreign NCHW model (``channels_last=False``) keeps it: that is how
    it gets channels-last convolutions at all.
    """
    from torch._inductor import list_mode_options

    options = dict(list_mode_options(mode))
    if channels_last:
        options["layout_optimization"] = False
    return options


def compile_for_target(
    model_or_spec: Union[nn.Module, ModelSpec, str, "os.PathLike[str]"],
    target: Union[str, torch.device] = "cpu",
    dtype: str = "fp32",
    mode: str = "default",
    fold: bool = False,
    *,
    channels_last: bool = True,
    variants: str = "auto",
    fullgraph: bool = False,
    wrap: Optional[Callable[[nn.Module], nn.Module]] = None,
) -> TargetModel:
    """A model prepared for ``target`` ("cpu", "cuda", or a torch.device like cuda:1).

    * a spec (IR or file path) is checked and lowered; a module is used as is (moved to
      the device, in place);
    * ``fold``: :func:`mfdsl.passes.fold.fold_for_inference` first (inference only);
    * ``variants`` "auto": the speed variants measured best for this device and mode
      (:data:`mfdsl.layers.variants.VARIANTS_FOR`); "reference": the paper's forms;
      "keep": those the model was lowered with (a run's device plan chose them);
    * ``channels_last``: the image and conv weights channels-last (:func:`to_channels_last`;
      mfdsl's blocks run channels-last anyway; turn it off to time a foreign model as
      its authors ship it);
    * ``dtype`` "bf16"/"fp16": parameters stay fp32, forward runs under autocast;
    * ``wrap``: e.g. DistributedDataParallel, applied after placement, before compiling;
    * ``mode`` "default"/"max-autotune": ``torch.compile`` with that mode (``fullgraph``
      to refuse graph breaks); "reduce-overhead": the same plus CUDA graphs (cuda only;
      ``runner/device_plan.py`` says when that is safe); "eager": no compilation.

    ``result.summary`` says what was applied. Raises :class:`TargetError` for bad
    options and :class:`mfdsl.errors.SpecError` for a bad spec.
    """
    try:
        device = torch.device(target)
    except (RuntimeError, TypeError):
        raise TargetError(f"unknown target {target!r}; expected one of "
                          f"{', '.join(TARGETS)}") from None
    _validate(device, dtype, mode, variants)
    if isinstance(model_or_spec, nn.Module):
        model = model_or_spec
        source = type(model).__name__
    else:
        from ..api import build_model

        model = build_model(model_or_spec, target="reference")
        source = model.spec.name
    applied: List[str] = []
    if hasattr(model, "spec"):
        source = model.spec.name
    if fold:
        from ..passes.fold import fold_for_inference

        model = fold_for_inference(model)
        f = model.folded
        applied.append("fold_for_inference (inference only: " +
                       f"{f['params_before']:,} -> {f['params_after']:,} parameters"
                       + (f"; kept: {'; '.join(f['kept'])}" if f["kept"] else "") + ")")
    compiled = mode != "eager"
    if variants == "keep":
        chosen = tuple(sorted(variants_in_use(model)))
        applied.append("speed variants as lowered: "
                       + (", ".join(sorted(variants_in_use(model))) or "none (reference layers)"))
    else:
        chosen = variants_for("reference" if variants == "reference" else device.type, compiled)
        used = select_variants(model, chosen)
        applied.append(f"speed variants for {device.type} "
                       f"{'compiled' if compiled else 'eager'}: "
                       + (", ".join(n for n in chosen if any(u.endswith(': ' + n) for u in used))
                          or "none (reference layers)"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = model.to(device)
    if channels_last:
        n = to_channels_last(model)
        applied.append(f"channels_last (input image and {n} conv weights) on {device}")
    if dtype != "fp32":
        applied.append(f"autocast {dtype} on {device.type} (parameters stay fp32)")
    wrapped = wrap(model) if wrap is not None else None
    if wrapped is not None:
        applied.append(f"wrapped in {type(wrapped).__name__}")
    train_fn = eval_fn = None
    t0 = time.perf_counter()
    if compiled:
        kw = dict(options=compile_options(mode, channels_last), fullgraph=fullgraph)
        # Two callables, each compiled once: training (DDP's graph must be compiled with
        # DDP in it: its optimizer splits the graph at gradient buckets) and evaluation
        # (the bare model, no collectives, through its own code object: see Inference).
        train_fn = torch.compile(wrapped if wrapped is not None else model, **kw)
        eval_fn = torch.compile(Inference(model), **kw)
        applied.append(f"torch.compile(mode={mode!r}{', fullgraph=True' if fullgraph else ''}"
                       f"{', inductor layout optimisation off' if channels_last else ''})"
                       " (compiles lazily on the first call)")
    summary: Dict[str, Any] = {
        "model": source, "target": device.type, "device": str(device), "dtype": dtype,
        "mode": mode, "fold": fold, "variants": list(chosen),
        "applied": applied, "setup_s": round(time.perf_counter() - t0, 3),
        "params": sum(p.numel() for p in model.parameters()),
    }
    out = TargetModel(model, device, dtype, mode, summary, channels_last, train_fn, eval_fn,
                      wrapped)
    out.train(model.training)
    return out
