"""The compiler's per-stage report: mixer, depth, width, output shape, params, MACs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn

from .analysis.counting import macs_by_module, meta_model, param_counts
from .analysis.labels import human, mixer_label
from .ir import ModelSpec


@dataclass
class StageRow:
    name: str
    mixer: str
    depth: int
    width: int
    out_shape: Tuple[int, ...]
    params: int
    frozen_params: int
    macs: int
    attn_macs: int = 0  # of ``macs``: attention's QK^T and attn@V (grow with tokens^2)


@dataclass
class CompileSummary:
    name: str
    input: Tuple[int, int, int]
    num_classes: int
    params: int
    frozen_params: int
    macs: int
    stages: List[StageRow] = field(default_factory=list)
    attn_macs: int = 0

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def summarize(spec: ModelSpec, model: Optional[nn.Module] = None) -> CompileSummary:
    """Per-stage numbers. Parameter counts come from ``model`` (or a meta build); MACs per
    image from a meta-device forward under FlopCounterMode (paper convention); their
    attention-quadratic part from the aten-graph count ``mfdsl inspect`` makes."""
    from .analysis.inspect import attn_macs_by_part

    meta = meta_model(spec)
    attn = attn_macs_by_part(spec) if _has_attention(spec) else {}
    model = model if model is not None else meta
    macs = macs_by_module(meta, spec)
    root = type(meta).__name__

    def sub(path: str) -> Tuple[int, int, int]:
        mod = model.get_submodule(path)
        t, f = param_counts(mod)
        return t, f, macs.get(f"{root}.{path}", 0)

    rows = []
    t, f, m = sub("stem")
    res = spec.stage_resolutions()
    rows.append(StageRow("stem", "conv", 1, spec.stages[0].width,
                         (spec.stages[0].width, *res[0]), t, f, m, attn.get("stem", 0)))
    for i, st in enumerate(spec.stages):
        t, f, m = sub(f"stages.{i}")
        rows.append(StageRow(f"stage{i}", mixer_label(st), st.depth, st.width,
                             (st.width, *res[i]), t, f, m, attn.get(f"stage {i}", 0)))
    t, f, m = sub("head")
    rows.append(StageRow("head", spec.head.name, 1, spec.num_classes,
                         (spec.num_classes,), t, f, m, attn.get("head", 0)))
    total_t, total_f = param_counts(model)
    return CompileSummary(spec.name, (spec.in_chans, *spec.img_size), spec.num_classes,
                          total_t, total_f, macs["Global"], rows,
                          sum(r.attn_macs for r in rows))


def _has_attention(spec: ModelSpec) -> bool:
    # Tracing costs seconds; a model with no data-dependent product would only report 0.
    # Custom (plugin) mixers may multiply activations too: trace them as well.
    from .registry import registry

    for st in spec.stages:
        for m in st.mixers:
            comp = registry.get("mixer", m.name)
            if m.name == "attention" or comp is None or not comp.builtin:
                return True
    return False


def format_table(s: CompileSummary) -> str:
    head = ("stage", "mixer", "depth", "width", "output", "params", "frozen", "MACs",
            "attn N^2")
    rows = [head]
    for r in s.stages:
        rows.append((r.name, r.mixer, str(r.depth), str(r.width),
                     "x".join(map(str, r.out_shape)), human(r.params),
                     human(r.frozen_params) if r.frozen_params else "-", human(r.macs),
                     human(r.attn_macs) if r.attn_macs else "-"))
    rows.append(("total", "", str(sum(x.depth for x in s.stages[1:-1])), "", "",
                 human(s.params), human(s.frozen_params) if s.frozen_params else "-",
                 human(s.macs), human(s.attn_macs) if s.attn_macs else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    right = {2, 3, 5, 6, 7, 8}
    lines = []
    for k, r in enumerate(rows):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    title = (f"{s.name}: input {'x'.join(map(str, s.input))}, {s.num_classes} classes, "
             f"{human(s.params)} params"
             + (f" + {human(s.frozen_params)} frozen" if s.frozen_params else "")
             + f", {human(s.macs)} MACs")
    return title + "\n" + "\n".join(lines)
