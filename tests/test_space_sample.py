"""`mfdsl sample` and `mfdsl space`: uniform draws, reproducible files, budgets kept."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from conftest import error_of, mf_file, run, write

from mfdsl.api import check_spec, load_spec
from mfdsl.space.budgets import BYTES_PER_PARAM
from mfdsl.space.read import load_space
from mfdsl.space.sample import sample, wilson

SMALL = ("stage {pooling | identity | sepconv} x{1..2} @{16, 24}",)  # 12 distinct models


def test_sample_is_uniform_chi_square(tmp_path: Path):
    space = load_space(mf_file(tmp_path, *SMALL))
    counts = Counter(sample(space, 1, seed)[0].picks for seed in range(600))
    assert len(counts) == 12
    expected = 600 / 12
    stat = sum((c - expected) ** 2 / expected for c in counts.values())
    try:
        from scipy.stats import chi2

        critical = chi2.ppf(0.999, 11)
    except ImportError:  # the tabulated 0.999 quantile of chi-square with 11 degrees
        critical = 31.264
    assert stat < critical, (stat, counts)


def test_sample_files_are_byte_identical_for_a_seed(tmp_path: Path):
    p = mf_file(tmp_path, *SMALL)
    for out in ("a", "b"):
        code, text = run("sample", p, "-n", 5, "--seed", 7, "-o", tmp_path / out)
        assert code == 0, text
    a = sorted((tmp_path / "a").iterdir())
    assert [f.name for f in a] == ["c000.mf", "c001.mf", "c002.mf", "c003.mf", "c004.mf",
                                   "manifest.json"]
    for f in a:
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["space_fingerprint"].startswith("sha256:")
    rows = manifest["candidates"]
    assert len({r["fingerprint"] for r in rows}) == 5
    assert set(rows[0]["choices"]) == {"stage1.mixers", "stage1.depth", "stage1.width"}
    spec = load_spec(tmp_path / "a" / rows[0]["file"])
    assert spec.stages[0].width == rows[0]["choices"]["stage1.width"]


def test_sample_refuses_an_earlier_sample_unless_overwrite(tmp_path: Path):
    p = mf_file(tmp_path, *SMALL)
    assert run("sample", p, "-n", 2, "-o", tmp_path / "o")[0] == 0
    code, out = run("sample", p, "-n", 2, "-o", tmp_path / "o")
    assert code == 2 and "--overwrite" in out
    assert run("sample", p, "-n", 2, "-o", tmp_path / "o", "--overwrite")[0] == 0


def test_every_sampled_candidate_meets_its_budgets_when_remeasured(tmp_path: Path):
    from mfdsl.size_limits import estimate_size

    p = mf_file(tmp_path, "stage {pooling | sepconv} x{1..3} @{16, 32, 48}",
                "stage {pooling | attention(head_dim=16)} x{1..2} @{32, 64}",
                "require params 20K..150K, macs <= 40M, train_memory <= 1G at batch 64")
    assert run("sample", p, "-n", 8, "--seed", 3, "-o", tmp_path / "o")[0] == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    for row in manifest["candidates"]:
        spec = check_spec(tmp_path / "o" / row["file"])  # the normal compile path
        est = estimate_size(spec)
        assert 20_000 <= est.params <= 150_000 and est.macs <= 40_000_000
        assert est.activation_bytes * 64 + est.params * BYTES_PER_PARAM <= 10**9
        assert (row["params"], row["macs"]) == (est.params, est.macs)


def test_too_few_candidates_names_how_many_exist(tmp_path: Path):
    space = load_space(mf_file(tmp_path, *SMALL))
    err = error_of(sample, space, 13, 0)
    assert "12 distinct candidates" in err.message


def test_budgets_nobody_meets_show_the_closest(tmp_path: Path):
    space = load_space(mf_file(tmp_path, "stage {pooling | sepconv} x{1..2} @{16, 24}",
                               "require params <= 10"))
    err = error_of(sample, space, 1, 0, max_draws=50)
    assert "no candidate meets the budgets" in err.message and "closest: params" in err.hint
    assert err.loc.line == 5


def test_space_command_counts_exactly_and_reports_the_share(tmp_path: Path):
    p = mf_file(tmp_path, *SMALL, "require params <= 20K")
    code, out = run("space", p, "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["assignments"] == 12 and data["distinct"] == 12 and data["distinct_exact"]
    share = data["inside_budgets"]
    assert share["exact"] and 0 < share["share"] < 1
    assert data["quantiles"]["params"]["min"] <= data["quantiles"]["params"]["max"]


def test_wilson_interval():
    lo, hi = wilson(26, 100)
    assert abs(lo - 0.1840) < 1e-3 and abs(hi - 0.3537) < 1e-3
    assert wilson(0, 0) == (0.0, 1.0)
