"""How far to trust a sweep: the error EDF of its candidates with a bootstrap band, the
Pareto front, and rank correlations of the short schedule (and of params and MACs, as
proxies) with the longer schedule of the held-out candidates.

The EDF at error e is the (weighted) fraction of candidates whose error (100 - top-1) is
at most e. Normalised by complexity, each candidate weighs 1 / (the number of candidates in
its complexity bin), bins equal in log(params or MACs), so every complexity range counts
alike (Radosavovic et al. 2019). The band: the 2.5th and 97.5th percentiles of the EDF over
candidates resampled with replacement.
"""
from __future__ import annotations

import io
import json
import math
import random
from typing import Any, Dict, List, Optional, Sequence

from .errors import SweepError


def edf(errors: Sequence[float], grid: Sequence[float],
        weights: Optional[Sequence[float]] = None) -> List[float]:
    """The weighted fraction of ``errors`` at most each value of ``grid``."""
    w = list(weights) if weights is not None else [1.0] * len(errors)
    total = sum(w)
    return [sum(wi for e, wi in zip(errors, w) if e <= g) / total for g in grid]


def complexity_weights(costs: Sequence[float], bins: int = 5) -> List[float]:
    """1 / (candidates in the same log-spaced bin), scaled to sum to the candidate count."""
    logs = [math.log(max(c, 1)) for c in costs]
    lo, hi = min(logs), max(logs)
    width = (hi - lo) / bins or 1.0
    idx = [min(bins - 1, int((v - lo) / width)) for v in logs]
    w = [1.0 / idx.count(i) for i in idx]
    s = sum(w)
    return [wi * len(w) / s for wi in w]


def bootstrap_band(errors: Sequence[float], grid: Sequence[float],
                   weights: Optional[Sequence[float]] = None, n: int = 1000,
                   seed: int = 0) -> tuple:
    """(low, high): the 2.5th and 97.5th percentiles of the EDF at each grid value over
    ``n`` resamples of the candidates."""
    rng = random.Random(seed)
    w = list(weights) if weights is not None else [1.0] * len(errors)
    k = len(errors)
    curves = []
    for _ in range(n):
        pick = [rng.randrange(k) for _ in range(k)]
        curves.append(edf([errors[i] for i in pick], grid, [w[i] for i in pick]))
    lo, hi = [], []
    for j in range(len(grid)):
        col = sorted(c[j] for c in curves)
        lo.append(_percentile(col, 2.5))
        hi.append(_percentile(col, 97.5))
    return lo, hi


def _percentile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = (len(sorted_vals) - 1) * q / 100.0
    i = int(math.floor(pos))
    j = min(i + 1, len(sorted_vals) - 1)
    return sorted_vals[i] + (sorted_vals[j] - sorted_vals[i]) * (pos - i)


def ranks(xs: Sequence[float]) -> List[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def _pearson(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else None


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Spearman's rho: Pearson's r of the ranks (None: fewer than 2 values or no spread)."""
    return _pearson(ranks(a), ranks(b)) if len(a) >= 2 else None


def kendall(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Kendall's tau-b (ties in either list counted as in scipy.stats.kendalltau)."""
    conc = disc = ta = tb = 0
    n = len(a)
    for i in range(n):
        for j in range(i + 1, n):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ta += 1
            elif db == 0:
                tb += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ta) * (conc + disc + tb))
    return (conc - disc) / denom if denom else None


def pareto(rows: Sequence[Dict[str, Any]], cost: str) -> List[str]:
    """The candidates no other beats: at most the error and the cost, one strictly."""
    out = []
    for r in rows:
        if any(o is not r and o[cost] <= r[cost] and o["error"] <= r["error"]
               and (o[cost] < r[cost] or o["error"] < r["error"]) for o in rows):
            continue
        out.append(r["candidate"])
    return out


def analyse(data: Dict[str, Any], normalize: Optional[str] = None, n_boot: int = 1000,
            seed: int = 0) -> Dict[str, Any]:
    """The report of a sweep's results.json: EDF with band, Pareto fronts, rank
    correlations."""
    rows = [r for r in data["candidates"] if r.get("top1") is not None]
    if not rows:
        raise SweepError("the sweep has no finished candidate yet (no top-1 in results.json)")
    full = max(r["epochs"] for r in rows)
    # Halving: only the candidates of the last rung trained to the end; the EDF is of the
    # first rung, which every candidate reached.
    errors = [100.0 - (r["rung_top1"][0] if r.get("rung_top1") else r["top1"]) for r in rows]
    weights = complexity_weights([r[normalize] for r in rows]) if normalize else None
    grid = sorted(set(errors))
    lo, hi = bootstrap_band(errors, grid, weights, n_boot, seed)
    checked = [r for r in rows if r.get("check_top1") is not None]
    table_rows = [{"candidate": r["candidate"], "error": e, "params": r["params"],
                   "macs": r["macs"], "check_top1": r.get("check_top1")}
                  for r, e in zip(rows, errors)]
    corr = {}
    if len(checked) >= 2:
        long = [r["check_top1"] for r in checked]
        short = [r["rung_top1"][0] if r.get("rung_top1") else r["top1"] for r in checked]
        for name, xs in (("short_schedule", short), ("params", [r["params"] for r in checked]),
                         ("macs", [r["macs"] for r in checked])):
            corr[name] = {"spearman": spearman(xs, long), "kendall": kendall(xs, long)}
    return {
        "candidates": len(rows), "normalized_by": normalize, "bootstrap": n_boot,
        "final_epochs": full, "first_rung_epochs": min(r["epochs"] for r in rows),
        "edf": [{"error": g, "fraction": f, "low": a, "high": b}
                for g, f, a, b in zip(grid, edf(errors, grid, weights), lo, hi)],
        "pareto": {c: pareto(table_rows, c) for c in ("params", "macs")},
        "rank_correlation": {"held_out": [r["candidate"] for r in checked],
                             "check_epochs": checked[0]["check_epochs"] if checked else None,
                             "versus_longer_schedule": corr},
        "rows": table_rows,
    }


def to_csv(report: Dict[str, Any]) -> str:
    lines = ["error,fraction,low,high"]
    lines += [f"{p['error']},{p['fraction']},{p['low']},{p['high']}" for p in report["edf"]]
    return "\n".join(lines) + "\n"


def to_json(report: Dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


def table(report: Dict[str, Any]) -> str:
    c = report["rank_correlation"]
    lines = [f"{report['candidates']} candidates; error EDF"
             + (f" normalised by {report['normalized_by']}" if report["normalized_by"] else "")
             + f", band from {report['bootstrap']} bootstrap resamples",
             "Pareto front (params): " + ", ".join(report["pareto"]["params"]),
             "Pareto front (MACs): " + ", ".join(report["pareto"]["macs"])]
    if c["versus_longer_schedule"]:
        lines.append(f"rank correlation with {c['check_epochs']} epochs on "
                     f"{len(c['held_out'])} held-out candidates:")
        for name, v in c["versus_longer_schedule"].items():
            lines.append(f"  {name:<15} Spearman {_f(v['spearman'])}  Kendall {_f(v['kendall'])}")
    else:
        lines.append("rank correlation: not measured (mfdsl sweep --check-ranking K "
                     "--check-epochs E2 on at least 2 candidates)")
    return "\n".join(lines)


def _f(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def plot(report: Dict[str, Any]) -> bytes:
    """PNG: the EDF with its band, and error against params and MACs with the fronts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    pts = report["edf"]
    xs = [p["error"] for p in pts]
    ax = axes[0]
    ax.step(xs, [p["fraction"] for p in pts], where="post", label="EDF")
    ax.fill_between(xs, [p["low"] for p in pts], [p["high"] for p in pts], step="post",
                    alpha=0.25, label="95% bootstrap band")
    ax.set_xlabel(f"top-1 error (%) after {report['first_rung_epochs']} epochs")
    ax.set_ylabel("fraction of candidates" + (f" (normalised by {report['normalized_by']})"
                                              if report["normalized_by"] else ""))
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    rows = report["rows"]
    for ax, cost in zip(axes[1:], ("params", "macs")):
        ax.scatter([r[cost] for r in rows], [r["error"] for r in rows], s=12)
        front = sorted((r for r in rows if r["candidate"] in report["pareto"][cost]),
                       key=lambda r: r[cost])
        ax.plot([r[cost] for r in front], [r["error"] for r in front], "--", color="tab:red",
                label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(cost)
        ax.set_ylabel("top-1 error (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    c = report["rank_correlation"]["versus_longer_schedule"]
    if c:
        axes[0].set_title("vs longer schedule: " + "; ".join(
            f"{k} rho {_f(v['spearman'])}" for k, v in c.items()), fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
