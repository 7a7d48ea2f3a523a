"""Drawing candidates from a space: enumeration, uniform draws with rejection, statistics.

Each choice is drawn uniformly and independently (Python's ``random.Random(seed)``, the
same on every platform); a draw is kept when its model passes the checks, lies inside the
budgets and differs (by model fingerprint and recipe) from those kept already. This is
the rejection sampling of RegNet's design spaces (Radosavovic et al., "Designing Network
Design Spaces", arXiv 2003.13678): sample the unconstrained space, keep what meets the
constraints.
"""
from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..checks import check
from ..errors import CommandError, SpecError
from ..fingerprint import model_fingerprint
from ..ir import ModelSpec
from ..size_limits import SizeEstimate
from .budgets import describe, inside, measure, miss
from .ir import Space
from .resolve import resolve

# `space` counts distinct candidates exactly up to this many assignments.
ENUMERATE_MAX = 5000
CLOSEST_SHOWN = 3


@dataclass
class Candidate:
    picks: Tuple[int, ...]
    spec: ModelSpec
    fingerprint: str
    est: Optional[SizeEstimate] = None


def key_of(spec: ModelSpec) -> str:
    """What makes two candidates the same: the model fingerprint and the recipe."""
    return model_fingerprint(spec) + "|" + repr(spec.recipe)


def draw(space: Space, rng: random.Random) -> Tuple[int, ...]:
    """One assignment, each choice uniform and independent of the others."""
    return tuple(rng.randrange(len(c.alternatives)) for c in space.choices)


def enumerate_picks(space: Space, limit: int = ENUMERATE_MAX) -> Iterator[Tuple[int, ...]]:
    """Every assignment, in order; CommandError when there are more than ``limit``."""
    if space.size > limit:
        raise CommandError(f"the space has {space.size:,} assignments, too many to enumerate "
                           f"(at most {limit:,}); sample it instead")
    return itertools.product(*(range(len(c.alternatives)) for c in space.choices))


def evaluate(space: Space, picks: Sequence[int]) -> Tuple[Optional[Candidate], str]:
    """The candidate of ``picks`` and ``"ok"``, or None and ``"invalid"`` (fails a check)
    or a measured candidate and ``"outside"`` (misses a budget)."""
    spec = resolve(space, picks)
    try:
        check(spec)
    except SpecError:
        return None, "invalid"
    cand = Candidate(tuple(picks), spec, model_fingerprint(spec))
    if not space.budgets:
        return cand, "ok"
    cand.est = measure(spec)
    return cand, "ok" if inside(space, cand.est) else "outside"


@dataclass
class _Tally:
    draws: int = 0
    invalid: int = 0
    outside: int = 0
    closest: List[Tuple[float, int, Candidate]] = field(default_factory=list)


def sample(space: Space, n: int, seed: int, max_draws: Optional[int] = None) -> List[Candidate]:
    """``n`` distinct candidates inside the budgets, drawn uniformly with rejection;
    a located error when fewer exist (after ``max_draws`` draws)."""
    if n < 1:
        raise CommandError(f"-n must be at least 1, got {n}")
    max_draws = max_draws or max(2000, 50 * n)
    rng = random.Random(seed)
    seen: set = set()
    out: List[Candidate] = []
    t = _Tally()
    while len(out) < n and t.draws < max_draws:
        picks = draw(space, rng)
        t.draws += 1
        spec = resolve(space, picks)
        key = key_of(spec)
        if key in seen:
            continue
        seen.add(key)
        cand, verdict = evaluate(space, picks)
        if verdict == "invalid":
            t.invalid += 1
        elif verdict == "outside":
            t.outside += 1
            heapq.heappush(t.closest, (-miss(space, cand.est), t.draws, cand))
            if len(t.closest) > CLOSEST_SHOWN:
                heapq.heappop(t.closest)
        else:
            out.append(cand)
    if len(out) < n:
        raise _too_few(space, n, out, t)
    return out


def _too_few(space: Space, n: int, out: List[Candidate], t: _Tally) -> SpecError:
    where = space.budgets[0].loc if space.budgets else space.base.loc("")
    if space.size <= t.draws:  # every assignment was likely seen: count them exactly
        exact = sum(1 for p in enumerate_picks(space, max(space.size, 1))
                    if evaluate(space, p)[1] == "ok" and True)
        counted = _distinct_ok(space)
        how = f"the space holds {counted} distinct candidate{'s' * (counted != 1)}" + \
              (" inside its budgets" if space.budgets else "") + f" ({exact} assignments)"
    else:
        how = (f"{t.draws} draws found {len(out)} distinct candidate"
               f"{'s' * (len(out) != 1)}" + (" inside the budgets" if space.budgets else ""))
    msg = f"cannot sample {n} distinct candidates: {how}"
    hint = f"{t.invalid} draws failed the checks, {t.outside} missed the budgets"
    if not out and t.closest:
        best = sorted(t.closest, key=lambda x: -x[0])
        shown = "; ".join(f"{describe(space, c.est)} ({_picks_text(space, c.picks)})"
                          for _, _, c in best)
        msg = f"no candidate meets the budgets after {t.draws} draws"
        hint = f"closest: {shown}; widen the budgets or change the choices"
    return SpecError(msg, where, hint=hint)


def _distinct_ok(space: Space) -> int:
    keys = set()
    for p in enumerate_picks(space, max(space.size, 1)):
        cand, verdict = evaluate(space, p)
        if verdict == "ok":
            keys.add(key_of(cand.spec))
    return len(keys)


def _picks_text(space: Space, picks: Sequence[int]) -> str:
    from .emit import assignment

    return ", ".join(f"{k}={v}" for k, v in assignment(space, picks).items())


# --- statistics (`mfdsl space`) -------------------------------------------------------

@dataclass
class Survey:
    assignments: int
    distinct: int
    distinct_exact: bool
    share: float  # of uniform draws: valid and inside the budgets
    share_low: float
    share_high: float
    share_exact: bool
    measured: int
    invalid: int
    figures: Dict[str, List[int]]  # metric -> values over the measured valid draws


def wilson(k: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def survey(space: Space, samples: int = 200, seed: int = 0) -> Survey:
    """Distinct candidates (exact up to :data:`ENUMERATE_MAX` assignments, else estimated
    from ``samples`` draws), the share inside the budgets (exact when every assignment
    was measured, else with its Wilson interval) and the params/MACs of the draws."""
    from .budgets import value

    enumerable = space.size <= ENUMERATE_MAX
    rng = random.Random(seed)
    if enumerable and space.size <= samples:
        picks_list = list(enumerate_picks(space))
    else:
        picks_list = [draw(space, rng) for _ in range(samples)]
    if enumerable:
        distinct = len({key_of(resolve(space, p)) for p in enumerate_picks(space)})
    else:  # distinct models per distinct assignment among the draws, scaled up
        drawn = set(picks_list)
        models = {key_of(resolve(space, p)) for p in drawn}
        distinct = round(space.size * len(models) / max(len(drawn), 1))
    ok = invalid = 0
    figures: Dict[str, List[int]] = {"params": [], "macs": []}
    for b in space.budgets:
        figures.setdefault(b.metric, [])
    for picks in picks_list:
        spec = resolve(space, picks)
        try:
            check(spec)
        except SpecError:
            invalid += 1
            continue
        est = measure(spec)
        for metric in figures:
            b = next((x for x in space.budgets if x.metric == metric), None)
            figures[metric].append(value(b, est) if b else getattr(est, metric))
        ok += inside(space, est)
    exact = len(picks_list) == space.size and enumerable and space.size <= samples
    lo, hi = (ok / len(picks_list),) * 2 if exact else wilson(ok, len(picks_list))
    return Survey(space.size, distinct, enumerable, ok / max(len(picks_list), 1), lo, hi,
                  exact, len(picks_list), invalid, figures)
