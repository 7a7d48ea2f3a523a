"""``analyse(spec)``: parameters, MACs, output shapes and training activation memory per
part (stem, stage 0..n-1, head) of a MetaFormer spec, all without allocating weights.

MACs are counted on the traced aten graph (see :mod:`mfdsl.analysis.macs`); memory on
meta tensors (see :mod:`mfdsl.analysis.memory`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx as fx
import torch.nn as nn

from ..checks import check
from ..ir import ModelSpec, with_overrides
from .batch_stats import check_training_batch
from .counting import meta_model, param_counts
from .labels import call_label, human, human_bytes, mixer_label
from .macs import OpCount, count_graph, node_macs
from .memory import DTYPES, measure_saved
from .trace import module_path, part_of, trace_aten


@dataclass
class PartReport:
    """One row: the stem, a stage or the head. MACs are per image."""

    name: str
    kind: str  # "stem" | "stage" | "head" | "other"
    mixer: Optional[str]
    depth: Optional[int]
    width: int
    out_shape: List[int]
    params: int
    frozen_params: int
    macs: int
    activation_bytes: int
    detail: str = ""
    attn_macs: int = 0  # of ``macs``: products of two activations (QK^T, attn@V)


@dataclass
class MemoryReport:
    batch: int
    dtype: str
    activation_bytes: int
    saved_tensors: int
    param_bytes: int
    method: str = "saved_tensors_hooks on meta tensors, train mode, distinct storages"


@dataclass
class Report:
    """What ``mfdsl inspect`` prints. ``ops`` and ``graph`` are kept out of the JSON."""

    name: str
    img_size: Tuple[int, int]
    params: int
    frozen_params: int
    macs: int
    stages: List[PartReport]
    memory: MemoryReport
    attn_macs: int = 0
    in_chans: int = 3
    ops: List[OpCount] = field(default_factory=list, repr=False)
    graph: Optional[fx.GraphModule] = field(default=None, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "input": [self.in_chans, *self.img_size],
            "img_size": list(self.img_size),
            "params": self.params,
            "frozen_params": self.frozen_params,
            "macs": self.macs,
            "attn_macs": self.attn_macs,
            "stages": [asdict(s) for s in self.stages],
            "memory": asdict(self.memory),
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        """One JSON object: name, input, params, frozen_params, macs, attn_macs, stages[...],
        memory{...}."""
        return json.dumps(self.to_dict(), indent=indent)


def parse_dtype(dtype: Union[str, torch.dtype]) -> Tuple[str, torch.dtype]:
    if isinstance(dtype, torch.dtype):
        for k, v in DTYPES.items():
            if v == dtype:
                return k, v
        raise ValueError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return dtype, DTYPES[dtype]


def analyse(spec: ModelSpec, batch: int = 1, dtype: Union[str, torch.dtype] = "fp32", *,
            img_size: Optional[Tuple[int, int]] = None, pre_dispatch: bool = False,
            keep_graph: bool = False) -> Report:
    """Analyse ``spec`` (checked here; raises SpecError if invalid).

    ``batch`` and ``dtype`` set the training step whose activation memory is measured;
    MACs are per image whatever the batch. ``img_size`` overrides the spec's input size.
    ``keep_graph`` keeps the traced aten graph on the report (for printing).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    dtype_name, torch_dtype = parse_dtype(dtype)
    if img_size is not None:
        spec = with_overrides(spec, img_size=tuple(img_size))
    check(spec)
    names = _part_names(spec)

    model = meta_model(spec).eval()
    x = torch.empty(batch, spec.in_chans, *spec.img_size, device="meta")
    shapes = _record_out_shapes(model)
    gm, ops, macs, attn = _count(model, x, len(spec.stages), pre_dispatch)
    for h in shapes.pop("__handles__"):
        h.remove()

    params, frozen = _params_by_part(model, len(spec.stages))

    train_model = meta_model(spec).to(torch_dtype)
    check_training_batch(train_model, batch, "--batch")  # the measured step is a training one
    saved = measure_saved(train_model, x.to(torch_dtype), spec.num_classes)
    act = {}
    for key, nbytes in saved.by_part.items():
        part = part_of(key, len(spec.stages)) if key != "loss" else "head"
        act[part] = act.get(part, 0) + nbytes

    rows = _rows(spec, names, shapes, params, frozen, macs, act, batch)
    for r in rows:
        r.attn_macs = attn.get(r.name, 0) // batch
    trainable, frozen_total = param_counts(model)
    elem = torch.empty((), dtype=torch_dtype).element_size()
    memory = MemoryReport(batch, dtype_name, saved.total_bytes, saved.count,
                          (trainable + frozen_total) * elem)
    return Report(spec.name, tuple(spec.img_size), trainable, frozen_total,
                  sum(r.macs for r in rows), rows, memory, sum(r.attn_macs for r in rows),
                  spec.in_chans, ops, gm if keep_graph else None)


def _count(model: nn.Module, x: torch.Tensor, num_stages: int, pre_dispatch: bool = False
           ) -> Tuple[fx.GraphModule, List[OpCount], Dict[str, int], Dict[str, int]]:
    """Trace once; (graph, ops, MACs per part, attention-quadratic MACs per part), whole
    batch."""
    with torch.no_grad():
        gm = trace_aten(model, x, pre_dispatch=pre_dispatch)
    ops = count_graph(gm)
    macs = {"stem": 0, **{f"stage {i}": 0 for i in range(num_stages)}, "head": 0}
    attn: Dict[str, int] = {}
    for op in ops:
        part = part_of(op.module, num_stages)
        macs[part] = macs.get(part, 0) + op.macs
        if op.attn:
            attn[part] = attn.get(part, 0) + op.macs
    return gm, ops, macs, attn


def attn_macs_by_part(spec: ModelSpec) -> Dict[str, int]:
    """Per image, the MACs of products of two activations (attention's QK^T and attn@V)
    for each part ("stem", "stage 0", ..., "head"); the count ``analyse`` reports."""
    model = meta_model(spec).eval()
    x = torch.empty(1, spec.in_chans, *spec.img_size, device="meta")
    return _count(model, x, len(spec.stages))[3]


def _part_names(spec: ModelSpec) -> List[str]:
    return ["stem"] + [f"stage {i}" for i in range(len(spec.stages))] + ["head"]


def _record_out_shapes(model: nn.Module) -> Dict[str, Any]:
    shapes: Dict[str, Any] = {}
    handles = []

    def hook(name: str):
        def fn(_m: nn.Module, _a: Any, out: torch.Tensor) -> None:
            # Blocks run channels-last (B, H, W, C); report NCHW like forward_feature_maps.
            s = list(out.shape)
            shapes[name] = [s[0], s[3], s[1], s[2]] if out.dim() == 4 else s
        return fn

    handles.append(model.stem.register_forward_hook(hook("stem")))
    for i, st in enumerate(model.stages):
        handles.append(st.register_forward_hook(hook(f"stage {i}")))
    handles.append(model.head.register_forward_hook(hook("head")))
    shapes["__handles__"] = handles
    return shapes


def _params_by_part(model: nn.Module, num_stages: int) -> Tuple[Dict[str, int], Dict[str, int]]:
    trainable: Dict[str, int] = {}
    frozen: Dict[str, int] = {}
    for name, p in model.named_parameters():
        part = part_of(name, num_stages)
        table = trainable if p.requires_grad else frozen
        table[part] = table.get(part, 0) + p.numel()
    return trainable, frozen


def _ds_text(ds: Any) -> str:
    return f"conv{ds.kernel}x{ds.kernel}/{ds.stride}"


def _rows(spec: ModelSpec, names: Sequence[str], shapes: Dict[str, Any],
          params: Dict[str, int], frozen: Dict[str, int], macs: Dict[str, int],
          act: Dict[str, int], batch: int) -> List[PartReport]:
    rows: List[PartReport] = []
    for name in list(names) + (["other"] if macs.get("other") or params.get("other") else []):
        if name == "stem":
            kind, mixer, depth, width = "stem", None, None, spec.stages[0].width
            detail = _ds_text(spec.stem)
        elif name == "head":
            kind, mixer, depth, width = "head", None, None, spec.num_classes
            detail = f"pool, {call_label(spec.output_norm, False)}, {call_label(spec.head, False)}"
        elif name == "other":
            kind, mixer, depth, width, detail = "other", None, None, 0, ""
        else:
            i = int(name.split()[1])
            st = spec.stages[i]
            kind, mixer, depth, width = "stage", mixer_label(st), st.depth, st.width
            detail = _ds_text(st.downsample) if i > 0 and st.downsample is not None else ""
        total = macs.get(name, 0)
        rows.append(PartReport(
            name, kind, mixer, depth, width, shapes.get(name, []),
            params.get(name, 0), frozen.get(name, 0), total // batch,
            act.get(name, 0), detail))
    return rows


# --- rendering ------------------------------------------------------------------------

def render_table(report: Report) -> str:
    """Aligned text table with M/G units, one row per part plus the total."""
    h, w = report.img_size
    mem = report.memory
    head = (f"{report.name}  input {report.in_chans}x{h}x{w}  train step: batch {mem.batch}, {mem.dtype}")
    cols = ["part", "mixer", "depth", "width", "out shape", "params", "frozen", "MACs",
            "attn N^2", "act. memory"]
    body = []
    for r in report.stages:
        body.append([
            r.name, r.mixer or (r.detail if r.kind != "stage" else "-"),
            "-" if r.depth is None else f"x{r.depth}", str(r.width),
            "x".join(map(str, r.out_shape)), human(r.params), human(r.frozen_params),
            human(r.macs), human(r.attn_macs) if r.attn_macs else "-",
            human_bytes(r.activation_bytes),
        ])
    total = ["total", "", "", "", "", human(report.params), human(report.frozen_params),
             human(report.macs), human(report.attn_macs) if report.attn_macs else "-",
             human_bytes(mem.activation_bytes)]
    right = {2, 3, 5, 6, 7, 8, 9}
    widths = [max(len(row[c]) for row in [cols, total] + body) for c in range(len(cols))]

    def fmt(row: List[str]) -> str:
        cells = [row[c].rjust(widths[c]) if c in right else row[c].ljust(widths[c])
                 for c in range(len(cols))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(cols))
    lines = [head, "", fmt(cols), rule] + [fmt(r) for r in body] + [rule, fmt(total), ""]
    lines.append(f"MACs per image (convs, linears, attention/random-mixing matmuls; traced "
                 f"aten graph); attn N^2: of those, the products of two activations "
                 f"(attention's QK^T and attn@V), which grow with tokens^2. Parameters: {human_bytes(mem.param_bytes)} in {mem.dtype}.")
    lines.append(f"Activation memory: {mem.saved_tensors} tensors saved for backward, "
                 f"{human_bytes(mem.activation_bytes)} at batch {mem.batch} "
                 f"(excludes weights, grads, optimiser state).")
    return "\n".join(lines)


def render_graph(gm: fx.GraphModule) -> str:
    """One line per graph node: name, op, target, output shape, module path, MACs."""
    rows = [["node", "op", "target", "shape", "module", "MACs"]]
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            shape = "x".join(map(str, val.shape)) or "scalar"
        elif isinstance(val, (tuple, list)):
            shape = ", ".join("x".join(map(str, v.shape)) for v in val
                              if isinstance(v, torch.Tensor))
        else:
            shape = ""
        m = node_macs(node)
        target = str(node.target) if node.op != "output" else ""
        rows.append([node.name, node.op, target, shape, module_path(node),
                     str(m) if m else ""])
    widths = [max(len(r[c]) for r in rows) for c in range(6)]
    return "\n".join("  ".join(r[c].ljust(widths[c]) for c in range(6)).rstrip()
                     for r in rows)


def graph_code(gm: fx.GraphModule) -> str:
    """The traced graph as readable Python (``GraphModule.print_readable``)."""
    return gm.print_readable(print_output=False)
