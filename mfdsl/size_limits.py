"""The size-limits step: after the checks, before lowering for real.

A checked spec is measured on the meta device (shapes only, no storage): parameters,
MACs per image and the activation memory one training image holds for the backward
pass. Each is compared with the spec's ``limits`` (which users may raise).

Cost is linear in the number of *distinct* blocks, not in the depth: blocks of a stage
that use the same mixer are identical (same width, resolution and arguments), so one of
each is built and its counts are multiplied by how often it repeats. A 20-stage x 1000
block spec costs what a 20-block one does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from .errors import SpecError
from .ir import ModelSpec, with_overrides


@dataclass(frozen=True)
class SizeEstimate:
    params: int
    macs: int  # per image, inference
    activation_bytes: int  # per image, one fp32 training step (saved for backward)


def _repeats(depth: int, n: int) -> List[int]:
    """How many of ``depth`` blocks use mixer k when ``n`` mixers are cycled."""
    return [depth // n + (1 if k < depth % n else 0) for k in range(n)]


def estimate_size(spec: ModelSpec) -> SizeEstimate:
    """Params, MACs and training activation bytes per image of a checked spec."""
    from torch.utils.flop_counter import FlopCounterMode

    from .analysis.counting import meta_model
    from .analysis.memory import measure_saved

    stages = [with_overrides(st, depth=min(st.depth, len(st.mixers))) for st in spec.stages]
    sample = with_overrides(spec, stages=stages)
    model = meta_model(sample)
    extra: Dict[str, int] = {}  # block path -> how many more times it repeats
    for i, (st, small) in enumerate(zip(spec.stages, stages)):
        for k, count in enumerate(_repeats(st.depth, small.depth)):
            if count > 1:
                extra[f"stages.{i}.blocks.{k}"] = count - 1
    blocks = dict(model.named_modules())

    params = sum(p.numel() for p in model.parameters())
    params += sum(n * sum(p.numel() for p in blocks[path].parameters())
                  for path, n in extra.items())

    # One training-mode forward on meta tensors gives both figures: the MACs (the FLOP
    # counter; conv/linear/matmul count the same in train and eval mode) and the tensors
    # autograd saves. (Halves the step's cost: meta kernels dominate it.)
    parts: List[Tuple[str, torch.nn.Module]] = [
        (path, mod) for path, mod in blocks.items() if path.count(".") == 3
        and path.startswith("stages.") and ".blocks." in path]
    saved = None
    for batch in (1, 2):  # training-mode BatchNorm refuses one value per channel
        counter = FlopCounterMode(display=False)
        try:
            x = torch.empty(batch, spec.in_chans, *spec.img_size, device="meta")
            with counter:
                saved = measure_saved(model, x, spec.num_classes, parts)
            break
        except ValueError:
            if batch == 2:
                raise
    assert saved is not None
    macs_map = {k: sum(v.values()) // 2 // batch
                for k, v in counter.get_flop_counts().items()}
    macs = macs_map["Global"]
    macs += sum(n * macs_map.get(f"MetaFormer.{path}", 0) for path, n in extra.items())
    act = saved.total_bytes + sum(n * saved.by_part.get(path, 0) for path, n in extra.items())
    return SizeEstimate(params, macs, act // batch)


def check_size_limits(spec: ModelSpec) -> SizeEstimate:
    """Raise a located SpecError when ``spec`` (already checked) is over a limit."""
    try:
        est = estimate_size(spec)
    except (MemoryError, OverflowError, RuntimeError, ValueError) as exc:
        raise SpecError(f"the model is too large to build: {exc}", spec.loc(""),
                        hint="reduce depths, widths or the input size") from None
    lim = spec.limits
    for value, limit, name, what, unit, raise_hint in (
        (est.params, lim.max_params, "max_params", "has {} parameters", "",
         "`limits { params 2G }` or --max-params"),
        (est.macs, lim.max_macs, "max_macs", "needs {} MACs per image", "",
         "`limits { macs 2T }` or --max-macs"),
        (est.activation_bytes, lim.max_activations, "max_activations",
         "needs {} bytes of activations per training image (kept for the backward pass)",
         "", "`limits { activations 64G }` or --max-activations; or lower the input size"),
    ):
        if value > limit:
            shown, shown_limit = _counts(value, limit)
            where = lim.loc(name) or spec.loc("")
            raise SpecError(f"model {what.format(shown)}, over the limit of {shown_limit}",
                            where, hint=f"raise it with {raise_hint}")
    return est


def _counts(value: int, limit: int) -> Tuple[str, str]:
    """Both counts in the units limits are written in (950, 12.3K, 26.1M, 4.1G); exact
    when rounding would make them look equal."""
    def short(n: int) -> str:
        for suffix, unit in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
            if n >= unit:
                return f"{n / unit:.1f}{suffix}"
        return str(n)

    a, b = short(value), short(limit)
    return (a, b) if a != b else (f"{value:,}", f"{limit:,}")
