"""The README's first command, end to end: the demo spec on the built-in offline dataset
(generated into a fresh cache) rises well above chance (10%) within a few CPU minutes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_spec_trains_on_builtin_data_well_above_chance(tmp_path: Path) -> None:
    env = dict(os.environ, MFDSL_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    out = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "mfdsl", "train", str(ROOT / "specs" / "demo_tiny.mf"),
         "-o", str(out), "--no-tensorboard"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final_val"]["images"] == 500
    assert summary["final_val"]["top1"] >= 50.0, summary  # chance is 10%
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "spec.mf").is_file() and (out / "environment.json").is_file()
