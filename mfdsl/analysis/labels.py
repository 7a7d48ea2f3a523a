"""Human-readable names for spec parts, shared by the inspect table and the drawing."""
from __future__ import annotations

from typing import Any, List

from ..ir import Call, StageSpec


def call_label(c: Any, with_args: bool = True) -> str:
    """``attention`` or ``attention(head_dim=64)``; nested components by name."""
    if isinstance(c, str):
        return c
    if not isinstance(c, Call):
        return str(c)
    if not with_args or not c.args:
        return c.name
    parts = [f"{k}={call_label(v) if isinstance(v, Call) else _value(v)}"
             for k, v in c.args.items()]
    return f"{c.name}({', '.join(parts)})"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return str(v)


def mixer_runs(stage: StageSpec, with_args: bool = True) -> List[str]:
    """The stage's mixer pattern with consecutive repeats folded: ``sepconv x2``."""
    runs: List[List[Any]] = []
    for m in stage.mixers:
        label = call_label(m, with_args)
        if runs and runs[-1][0] == label:
            runs[-1][1] += 1
        else:
            runs.append([label, 1])
    return [lab if n == 1 else f"{lab} x{n}" for lab, n in runs]


def mixer_label(stage: StageSpec, with_args: bool = True) -> str:
    """``sepconv`` for a uniform stage, ``[sepconv x2, attention]`` for a pattern."""
    runs = mixer_runs(stage, with_args)
    if len(stage.mixers) == 1:
        return runs[0]
    return "[" + ", ".join(runs) + "]"


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; keeps three significant decimals for G and M."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{suffix}{unit}"
    return f"{int(n)}{unit}"


def human_bytes(n: float) -> str:
    for scale, suffix in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{int(n)} B"
