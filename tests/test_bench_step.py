"""benchmarks/bench_step.py's CPU smoke path: the code a GPU session runs (a child per
model under its budget, both sides with their LAMB, the record, the table, $OUT), on a
tiny model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, runner_env


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_step.py"),
                           "--smoke", "--rounds", "1", "--iters", "1", "--warmup", "1",
                           *args], cwd=tmp_path, env=runner_env(OUT=str(tmp_path / "out")),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_smoke_writes_the_record_under_out(tmp_path: Path) -> None:
    p = _bench(tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads((tmp_path / "out" / "step.json").read_text())
    assert "--smoke" in got["command"] and got["machine"]
    (rec,) = got["records"]
    assert rec["status"] == "ok" and rec["batch"] == 4
    assert rec["mfdsl"]["optimizer"] == "FusedLamb" and rec["timm"]["optimizer"] == "Lamb"
    for side in ("mfdsl", "timm"):
        s = rec[side]
        assert s["step_ms"] > 0 and 0 < s["optimizer_share"] and s["mfu"] > 0
    assert rec["compile_counts_while_timed"]["frames"] == 0  # eager smoke: nothing compiles
    assert "| smoke | mfdsl (FusedLamb) |" in (tmp_path / "out" / "step.md").read_text()


def test_a_model_past_its_budget_is_recorded_and_the_run_ends(tmp_path: Path) -> None:
    p = _bench(tmp_path, "--budget-s", "0.5")
    assert p.returncode == 1
    (rec,) = json.loads((tmp_path / "out" / "step.json").read_text())["records"]
    assert rec["status"] == "timeout" and rec["budget_s"] == 0.5
