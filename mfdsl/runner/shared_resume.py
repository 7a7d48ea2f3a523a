"""The resume decision of a distributed run, made once and shared.

Every rank plans its resume checkpoint alone (:func:`~.run_folder.plan_output`, before the
process group exists). Once it does, :func:`agree_on_resume` gathers every rank's pick (the
pair's name in the run folder, its step, and the size and modification time of its weights
file) and every rank continues from rank 0's pick when it can read that exact pair; if one
cannot (another node sees an older or a different run folder), every rank refuses with one
message naming what each rank saw. Nothing has been written by then.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import List, Optional

from .. import runs
from . import checkpointing as ckpt
from .distributed import DistEnv, gather_objects
from .errors import RunError
from .launch import launched_rank
from .run_folder import OutputPlan, checkpoint_context

# Test hook (docs/training.md): "RANK:PATH" makes rank RANK plan its resume from the run
# folder at PATH, a stand-in for another node's (possibly older) view of the shared folder.
VIEW_ENV = "MFDSL_TEST_OUTPUT_VIEW"


def output_view(output: str) -> str:
    """The run folder as this rank reads it for the resume decision (``output`` unless the
    test hook names this rank)."""
    hook = os.environ.get(VIEW_ENV, "")
    rank, _, path = hook.partition(":")
    return path if path and rank.strip() == str(launched_rank()) else output


@dataclass(frozen=True)
class Pick:
    """A resume checkpoint as one rank sees it (``name`` None: no checkpoint, a fresh start)."""

    name: Optional[str]  # relative to the run folder when inside it, else absolute
    step: Optional[int] = None
    size: Optional[int] = None
    mtime_ns: Optional[int] = None

    def describe(self) -> str:
        if self.name is None:
            return "no checkpoint (a fresh start)"
        if self.step is None:
            return f"{self.name} (not a complete, readable pair)"
        return (f"{self.name} (step {self.step}, weights {self.size} bytes, modified "
                f"{self.mtime_ns})")


def _name(stem: str, output: str) -> str:
    rel = os.path.relpath(os.path.abspath(stem), os.path.abspath(output))
    return stem if rel.startswith(os.pardir) else rel


def _stem(name: str, output: str) -> str:
    return name if os.path.isabs(name) else os.path.join(output, name)


def read_pick(name: Optional[str], output: str) -> Pick:
    """The pair ``name`` as this rank sees it in the run folder ``output``."""
    if name is None:
        return Pick(None)
    stem = _stem(name, output)
    step = ckpt.pair_step(stem)
    try:
        st = os.stat(stem + ckpt.WEIGHTS_EXT)
    except OSError:
        return Pick(name)
    return Pick(name, step, st.st_size, st.st_mtime_ns) if step is not None else Pick(name)


def pick_of(stem: Optional[str], output: str) -> Pick:
    """This rank's pick, named by its periodic pair where ``last``/``best`` is a link to
    one (a node whose ``last`` lags can still read ``ckpt-<step>``)."""
    if stem is None:
        return Pick(None)
    pick = read_pick(_name(stem, output), output)
    if pick.step is not None:
        periodic = os.path.join(os.path.dirname(stem), runs.periodic_stem(pick.step))
        same = read_pick(_name(periodic, output), output)
        if (same.step, same.size, same.mtime_ns) == (pick.step, pick.size, pick.mtime_ns):
            return same
    return pick


def agree_on_resume(env: DistEnv, out: OutputPlan) -> OutputPlan:
    """Collective: ``out`` resuming from rank 0's pick on every rank, or a RunError on
    every rank (printed by rank 0) when a rank cannot read that exact pair."""
    if not env.distributed:
        return out
    mine = pick_of(out.resume_stem, out.output)
    picks: List[Pick] = gather_objects(env, mine)
    chosen = picks[0]
    seen = read_pick(chosen.name, out.output)
    views: List[Pick] = gather_objects(env, seen)
    unable = [r for r, v in enumerate(views) if v != chosen]
    if unable:
        lines = [f"rank 0 chose {chosen.describe()}"]
        for r in range(1, env.world_size):
            own = f"; its own pick was {picks[r].describe()}" if picks[r] != chosen else ""
            can = "cannot read that pair (it sees " + views[r].describe() + ")" \
                if r in unable else "sees that pair alike"
            lines.append(f"rank {r} {can}{own}")
        err = RunError(f"--output {out.output}: the ranks do not see the same checkpoints, so "
                       "they cannot resume from one; nothing was changed. Put the run folder "
                       "on a file system every node shares (and sees in sync):\n  "
                       + "\n  ".join(lines))
        err.quiet = not env.is_main
        raise err
    differ = [r for r, p in enumerate(picks) if p != chosen]
    notes = [f"note: rank {r} chose {picks[r].describe()}; every rank resumes from rank 0's "
             f"{chosen.describe()}" for r in differ]
    if mine == chosen:
        return replace(out, notes=out.notes + notes) if env.is_main else out
    stem = _stem(chosen.name, out.output) if chosen.name is not None else None
    prior = checkpoint_context(stem + ckpt.WEIGHTS_EXT) if stem is not None else out.prior
    return replace(out, resume_stem=stem, prior=prior)
