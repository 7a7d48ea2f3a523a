"""What torch.compile did, read from dynamo's counters: frames compiled, graph breaks and
recompilations. The runner's compiled loop is held to "no graph break, no recompilation
after warm-up" (tests/test_runner_compile_counters.py); the benchmarks report the same
counts for their timed steps.

Where torch keeps them (torch 2.14):

* ``torch._dynamo.utils.counters["frames"]["total"]``: every frame dynamo compiled, a
  recompilation and each piece of a broken graph included;
* ``counters["graph_break"]``: graph breaks by reason (an empty dict: none);
* ``torch._dynamo.convert_frame.FRAME_COMPILE_COUNTER``: compilations per frame id; a
  frame compiled ``n`` times was recompiled ``n - 1`` times (dynamo's log names these
  ``[frame/compile]``: ``[0/1]`` is frame 0's first recompilation). Private, so read
  defensively: ``recompiles`` is None where it is missing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class CompileCounts:
    """A snapshot of dynamo's counters (all since the process started or the last
    ``torch._dynamo.reset()``)."""

    frames: int  # frames compiled (first compilations, recompilations, graph-break pieces)
    graph_breaks: int
    recompiles: Optional[int]  # None: this torch does not say
    break_reasons: Dict[str, int]

    @classmethod
    def now(cls) -> "CompileCounts":
        from torch._dynamo.utils import counters

        breaks = {str(k): int(v) for k, v in counters["graph_break"].items()}
        try:
            from torch._dynamo.convert_frame import FRAME_COMPILE_COUNTER

            recompiles: Optional[int] = sum(max(0, int(n) - 1)
                                            for n in FRAME_COMPILE_COUNTER.values())
        except ImportError:  # pragma: no cover - another torch
            recompiles = None
        return cls(frames=int(counters["frames"]["total"]), graph_breaks=sum(breaks.values()),
                   recompiles=recompiles, break_reasons=breaks)

    def since(self, before: "CompileCounts") -> "CompileCounts":
        """What happened between ``before`` and this snapshot."""
        reasons = {k: v - before.break_reasons.get(k, 0) for k, v in self.break_reasons.items()
                   if v != before.break_reasons.get(k, 0)}
        recompiles = (None if self.recompiles is None or before.recompiles is None
                      else self.recompiles - before.recompiles)
        return CompileCounts(frames=self.frames - before.frames,
                             graph_breaks=self.graph_breaks - before.graph_breaks,
                             recompiles=recompiles, break_reasons=reasons)

    def as_dict(self) -> Dict[str, object]:
        return {"frames": self.frames, "graph_breaks": self.graph_breaks,
                "recompiles": self.recompiles, "break_reasons": self.break_reasons}
