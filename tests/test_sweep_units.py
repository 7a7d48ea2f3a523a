"""The sweep's arithmetic: the short schedule, the rungs of successive halving, the EDF with
its bootstrap band, rank correlations and Pareto fronts, against hand-computed values."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from mfdsl.sweep import edf
from mfdsl.sweep.rungs import Rung, members, rungs
from mfdsl.sweep.schedule import describe, short_recipe


def recipe(epochs, warmup, cooldown):
    return SimpleNamespace(epochs=epochs, warmup_epochs=warmup, cooldown_epochs=cooldown)


def test_short_schedule_scales_warmup_and_cooldown_rounded_half_up():
    # 300 epochs, 5 warmup, 10 cooldown -> 30 epochs: 0.5 -> 1 (half up), 1.0 -> 1
    assert short_recipe(recipe(300, 5, 10), 30) == {"epochs": 30, "warmup_epochs": 1,
                                                    "cooldown_epochs": 1}
    # 2 epochs: 5 * 2 / 300 = 0.03 -> 0; 10 * 2 / 300 = 0.07 -> 0
    assert short_recipe(recipe(300, 5, 10), 2) == {"epochs": 2, "warmup_epochs": 0,
                                                   "cooldown_epochs": 0}
    # 100 epochs of a 300-epoch recipe with 20 warmup: 6.67 -> 7
    assert short_recipe(recipe(300, 20, 0), 100)["warmup_epochs"] == 7
    # warmup never exceeds the epochs
    assert short_recipe(recipe(4, 4, 0), 2)["warmup_epochs"] == 2
    assert describe(recipe(300, 5, 10), short_recipe(recipe(300, 5, 10), 30)) == \
        "epochs 300 -> 30, warmup 5 -> 1, cooldown 10 -> 1"


def test_rungs_of_successive_halving():
    assert rungs(4, 1, None) == [Rung(1, 4)]
    assert rungs(4, 1, 2) == [Rung(1, 4), Rung(2, 2), Rung(4, 1)]
    assert rungs(9, 2, 3) == [Rung(2, 9), Rung(6, 3), Rung(18, 1)]
    assert rungs(5, 1, 3) == [Rung(1, 5), Rung(3, 1)]


def test_a_rung_is_decided_only_when_complete_ties_to_the_earlier():
    order = ["a", "b", "c", "d"]
    plan = rungs(4, 1, 2)
    assert members(order, {}, plan, 0) == order
    partial = {"a": [50.0], "b": [70.0], "c": [70.0]}
    assert members(order, partial, plan, 1) is None
    full = dict(partial, d=[10.0])
    assert members(order, full, plan, 1) == ["b", "c"]
    assert members(order, dict(full, b=[70.0, 60.0]), plan, 2) is None
    assert members(order, dict(full, b=[70.0, 60.0], c=[70.0, 60.0]), plan, 2) == ["b"]


def test_edf_and_weights_by_hand():
    errors = [10.0, 20.0, 20.0, 40.0]
    assert edf.edf(errors, [5, 10, 20, 30, 40]) == [0.0, 0.25, 0.75, 0.75, 1.0]
    w = [1.0, 1.0, 2.0, 0.0]
    assert edf.edf(errors, [10, 20, 40], w) == [0.25, 1.0, 1.0]
    # costs 1, 1, 1, e^5 in 5 log bins: three share bin 0, the last is alone in bin 4;
    # weights 1/3, 1/3, 1/3, 1 scaled to sum to 4: 2/3 each and 2
    ws = edf.complexity_weights([1, 1, 1, math.exp(5)])
    assert ws == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])


def test_bootstrap_band_brackets_the_edf_and_collapses_without_spread():
    lo, hi = edf.bootstrap_band([5.0, 5.0, 5.0], [5.0], n=50)
    assert lo == [1.0] and hi == [1.0]
    errors = [1.0, 2.0, 3.0, 4.0]
    grid = [1.0, 2.0, 3.0, 4.0]
    lo, hi = edf.bootstrap_band(errors, grid, n=400, seed=1)
    mid = edf.edf(errors, grid)
    assert all(a <= m <= b for a, m, b in zip(lo, mid, hi))
    assert lo[-1] == hi[-1] == 1.0  # every resample is at most the largest error
    assert lo[0] == 0.0 and hi[0] >= 0.5  # P(no 1.0 drawn) = (3/4)^4 = 0.32 > 2.5%
    assert edf._percentile([0.0, 1.0, 2.0, 3.0, 4.0], 2.5) == pytest.approx(0.1)


def test_rank_correlations_by_hand():
    assert edf.ranks([10, 30, 20, 20]) == [1.0, 4.0, 2.5, 2.5]
    a, b = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    # Spearman: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120 = 0.8
    assert edf.spearman(a, b) == pytest.approx(0.8)
    # Kendall: 10 pairs, 2 discordant: (8 - 2) / 10 = 0.6
    assert edf.kendall(a, b) == pytest.approx(0.6)
    assert edf.spearman(a, a[::-1]) == pytest.approx(-1.0)
    # tau-b with a tie in x: pairs (1,2) tied in x; concordant 5, discordant 0, tx 1
    x, y = [1, 1, 2, 3], [1, 2, 3, 4]
    assert edf.kendall(x, y) == pytest.approx(5 / math.sqrt(5 * 6))
    assert edf.spearman([1, 1], [1, 2]) is None  # no spread


def test_pareto_front():
    rows = [{"candidate": "a", "error": 10, "macs": 5}, {"candidate": "b", "error": 20,
            "macs": 2}, {"candidate": "c", "error": 20, "macs": 6},
            {"candidate": "d", "error": 10, "macs": 5}]
    assert edf.pareto(rows, "macs") == ["a", "b", "d"]


def test_analyse_reports_the_correlations_of_the_held_out():
    rows = [{"candidate": f"c{i}", "top1": t, "epochs": 1, "rung_top1": [t], "params": p,
             "macs": 10 * p, "check_top1": c, "check_epochs": 3}
            for i, (t, p, c) in enumerate([(50, 1, 60), (70, 2, 80), (60, 3, 75),
                                           (40, 4, None)])]
    rep = edf.analyse({"candidates": rows}, n_boot=20)
    corr = rep["rank_correlation"]["versus_longer_schedule"]
    assert rep["rank_correlation"]["held_out"] == ["c0", "c1", "c2"]
    assert corr["short_schedule"]["spearman"] == pytest.approx(1.0)
    assert corr["params"]["spearman"] == pytest.approx(0.5)
    assert corr["params"]["kendall"] == pytest.approx(1 / 3)
    assert [p["fraction"] for p in rep["edf"]] == [0.25, 0.5, 0.75, 1.0]


def test_refusals_are_clear_errors(tmp_path):
    from conftest import run

    (tmp_path / "empty").mkdir()
    code, text = run("sweep", tmp_path / "empty", "-o", tmp_path / "S")
    assert code == 2 and "no candidate specs" in text
    code, text = run("compare", tmp_path / "empty", "--edf", "-o", tmp_path / "E")
    assert code == 2 and "not a sweep folder" in text
    (tmp_path / "c.mf").write_text("model c {}\n")
    code, text = run("sweep", tmp_path, "-o", tmp_path / "S", "--check-ranking", "2")
    assert code == 2 and "--check-epochs" in text
