"""Successive halving over a fixed set of candidates, decided rung by rung.

Rung ``r`` trains ``n // eta**r`` candidates (at least 1) to ``epochs * eta**r`` epochs of
one schedule planned for the last rung's epochs; the candidates of rung ``r + 1`` are the
best of rung ``r`` by top-1 (ties: the earlier candidate). A rung is decided only once every
candidate in it has its result, so the choice does not depend on which worker finished
first (Optuna's asynchronous SuccessiveHalvingPruner decides from whatever has been
reported, which a killed and restarted sweep would not reproduce).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence


@dataclass(frozen=True)
class Rung:
    epochs: int
    keep: int  # how many candidates train in this rung


def rungs(n: int, epochs: int, eta: Optional[int]) -> List[Rung]:
    """The rungs for ``n`` candidates (one rung of ``epochs`` without halving)."""
    if not eta:
        return [Rung(epochs, n)]
    out, r = [], 0
    while True:
        keep = n // eta ** r
        if keep < 1 or (out and keep == out[-1].keep):
            break
        out.append(Rung(epochs * eta ** r, keep))
        if keep == 1:
            break
        r += 1
    return out


def members(order: Sequence[str], results: Dict[str, List[float]], plan: Sequence[Rung],
            r: int) -> Optional[List[str]]:
    """The candidates of rung ``r`` (``results``: each candidate's top-1 per rung done), or
    None while rung ``r - 1`` is not complete."""
    if r == 0:
        return list(order)
    prev = members(order, results, plan, r - 1)
    if prev is None or any(len(results.get(c, [])) < r for c in prev):
        return None
    ranked = sorted(prev, key=lambda c: (-results[c][r - 1], order.index(c)))
    return [c for c in order if c in ranked[:plan[r].keep]]
