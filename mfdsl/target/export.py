"""Export a built model to a deployable file (PT2 or ONNX) and check it against eager.

``export_model`` writes a temporary file beside the target, loads it back through the
format's own runtime and compares its outputs with the eager model's on the same random
input; only a file that passes is renamed onto the target (``mfdsl.fsio``), so a failed
or mismatching export leaves the previous file intact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError

FORMATS = ("pt2", "onnx")


class ExportError(UserError):
    """Export failed, a needed package is missing, or the check found a mismatch."""


@dataclass
class ExportResult:
    path: str
    format: str
    runtime: str  # what ran the exported file for the check
    batches: List[int]  # batch sizes checked
    max_abs_diff: float
    max_rel_diff: float  # max |exported - eager| / max |eager|
    ok: bool
    written: bool = True  # False: the check failed and ``path`` was left as it was

    def summary(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH, not written"
        return (f"{self.format} -> {self.path}: checked with {self.runtime} at batch "
                f"{', '.join(map(str, self.batches))}: max abs diff {self.max_abs_diff:.3g}, "
                f"max rel diff {self.max_rel_diff:.3g} [{verdict}]")


def export_model(model: nn.Module, path: str, fmt: str, *, input_shape: Tuple[int, ...],
                 batch: int = 1, dynamic_batch: bool = False, check: bool = True,
                 atol: float = 1e-4, rtol: float = 1e-3, seed: int = 0) -> ExportResult:
    """Export ``model`` (in eval mode) for inputs ``(batch, *input_shape)`` to ``path``.

    With ``dynamic_batch`` the batch dimension is symbolic and the check runs at two
    batch sizes. Raises ExportError on failure or (with ``check``) on a mismatch
    ``|a - b| > atol + rtol * |b|``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}")
    # The reference layers: the paper's forms, one graph whatever device reads the file.
    from ..layers.adapters import has_adapters, merge_adapters
    from .prepare import compile_for_target

    if has_adapters(model):  # an exported model has none: merged into the weights
        import copy

        model = copy.deepcopy(model)
        merge_adapters(model)
    model = compile_for_target(model.eval(), "cpu", mode="eager", variants="reference",
                               channels_last=False).model
    # torch.export specialises a dimension whose example size is 1, so a dynamic batch is
    # traced with at least 2 samples.
    trace_batch = max(batch, 2) if dynamic_batch else batch
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(trace_batch, *input_shape, generator=gen)
    checks = [trace_batch] + ([trace_batch + 1] if dynamic_batch else [])
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        why = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise ExportError(f"cannot write {path}: {parent} {why}")

    from .. import fsio

    box: Dict[str, Any] = {}

    def write(tmp: str) -> None:
        exporter = _export_pt2 if fmt == "pt2" else _export_onnx
        box["run"], box["runtime"] = exporter(model, example, tmp, dynamic_batch)

    def verify(_tmp: str) -> None:
        if not check:
            box["result"] = ExportResult(path, fmt, "not checked", [], float("nan"),
                                         float("nan"), True)
            return
        box["result"] = _compare(model, box["run"], box["runtime"], path, fmt, checks,
                                 input_shape, gen, atol, rtol)
        if not box["result"].ok:
            raise _Mismatch()

    try:
        fsio.write_atomic_with(path, write, verify=verify)
    except _Mismatch:
        box["result"].written = False
    except fsio.WriteError as exc:
        raise ExportError(str(exc)) from None
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    return box["result"]


class _Mismatch(Exception):
    """The check failed: the temporary file is dropped, the target left as it was."""


def _compare(model: nn.Module, run: Callable[[torch.Tensor], np.ndarray], runtime: str,
             path: str, fmt: str, checks: List[int], input_shape: Tuple[int, ...],
             gen: torch.Generator, atol: float, rtol: float) -> ExportResult:
    worst_abs, worst_rel, ok = 0.0, 0.0, True
    for b in checks:
        x = torch.randn(b, *input_shape, generator=gen)
        with torch.no_grad():
            want = model(x).float().numpy()
        got = np.asarray(run(x), dtype=np.float32)
        if got.shape != want.shape:
            raise ExportError(f"exported model gives shape {got.shape}, eager {want.shape} "
                              f"(batch {b})")
        diff = np.abs(got - want)
        # np.maximum keeps a NaN (Python's max would drop it and report a diff of 0).
        worst_abs = float(np.maximum(worst_abs, diff.max()))
        worst_rel = float(np.maximum(worst_rel, diff.max() / np.maximum(np.abs(want).max(),
                                                                        1e-12)))
        ok = ok and bool(np.all(diff <= atol + rtol * np.abs(want)))
    return ExportResult(path, fmt, runtime, checks, worst_abs, worst_rel, ok)


# --- PT2 ------------------------------------------------------------------------------

def _batch_dims(dynamic: bool) -> Optional[Dict[str, Any]]:
    if not dynamic:
        return None
    return {"x": {0: torch.export.Dim("batch", min=1, max=65536)}}


class _Entry(nn.Module):
    """Names the input ``x`` so dynamic-shape specs and ONNX input names are stable."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _export_pt2(model: nn.Module, example: torch.Tensor, path: str,
                dynamic: bool) -> Tuple[Callable[[torch.Tensor], np.ndarray], str]:
    try:
        ep = torch.export.export(_Entry(model).eval(), (example,),
                                 dynamic_shapes=_batch_dims(dynamic))
    except Exception as exc:  # torch.export's own errors are long; keep the first line
        raise ExportError(f"torch.export failed: {_first_line(exc)}") from exc
    # Serialised in memory and written by Python: torch's native writer aborts the process
    # (exit 134, a C++ stack trace) when the disk fills up mid-write.
    import io

    buf = io.BytesIO()
    torch.export.save(ep, buf)
    with open(path, "wb") as f:
        f.write(buf.getbuffer())
    del buf
    loaded = torch.export.load(path).module()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).float().numpy()

    return run, "torch.export.load(...).module()"


# --- ONNX -----------------------------------------------------------------------------

def _export_onnx(model: nn.Module, example: torch.Tensor, path: str,
                 dynamic: bool) -> Tuple[Callable[[torch.Tensor], np.ndarray], str]:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the optional packages onnx and onnxscript "
                          f"({exc.name} is missing); install them with "
                          f"`pip install 'mfdsl[onnx]'`") from None
    import onnx

    try:
        program = torch.onnx.export(_Entry(model).eval(), (example,), dynamo=True,
                                    input_names=["x"], output_names=["logits"],
                                    dynamic_shapes=_batch_dims(dynamic), verbose=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {_first_line(exc)}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(path)
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected {path}: {_first_line(exc)}") from exc
    return _onnx_runner(path)


def _onnx_runner(path: str) -> Tuple[Callable[[torch.Tensor], np.ndarray], str]:
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run_ort(x: torch.Tensor) -> np.ndarray:
            return sess.run(None, {name: x.numpy()})[0]

        return run_ort, "onnxruntime"
    # No onnxruntime: the reference evaluator is exact but pure numpy (slow on big
    # models); it still executes the file as written.
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(path)
    name = ref.input_names[0]

    def run_ref(x: torch.Tensor) -> np.ndarray:
        return ref.run(None, {name: x.numpy()})[0]

    return run_ref, "onnx.reference.ReferenceEvaluator"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
