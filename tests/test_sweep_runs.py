"""Sweeps on tiny data: results, compare --edf, a SIGKILLed sweep restarted, two workers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run, runner_env, solid_folder, tiny_mf

pytestmark = pytest.mark.slow


def candidates(tmp_path: Path, n: int = 3) -> Path:
    folder = tmp_path / "cands"
    folder.mkdir()
    widths = ["@16", "@24", "@32", "@8"]
    for i in range(n):
        text = tiny_mf("pooling", epochs=4).replace("model tiny", f"model c{i}")
        (folder / f"c{i:03d}.mf").write_text(text.replace("stage pooling x1 @32",
                                                          f"stage pooling x1 {widths[i]}"))
    return folder


def data(tmp_path: Path) -> Path:
    return solid_folder(tmp_path / "data", 4, {"a": 30, "b": 130, "c": 230})


def sweep_proc(cands: Path, data_dir: Path, out: Path, *extra: str, **env: str):
    return subprocess.Popen(
        [sys.executable, "-m", "mfdsl", "sweep", str(cands), "--data", str(data_dir), "-o",
         str(out), "--epochs", "2", "--data-workers", "0", "--device", "cpu", *extra],
        cwd=ROOT, env=runner_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def top1s(out: Path):
    rows = json.loads((out / "results.json").read_text())["candidates"]
    return [(r["candidate"], r["top1"], r["epochs"], r["status"]) for r in rows]


def test_a_sweep_writes_results_and_compare_edf_its_files(tmp_path):
    cands, d, out = candidates(tmp_path), data(tmp_path), tmp_path / "S"
    code, text = run("sweep", cands, "--data", d, "-o", out, "--epochs", "1",
                     "--data-workers", "0", "--device", "cpu", "--check-ranking", "2",
                     "--check-epochs", "2", "--dry-run")
    assert code == 0, text
    assert "epochs 4 -> 1, warmup 0 -> 0, cooldown 0 -> 0" in text
    assert "steps: 3 per epoch x 1 epochs" in text and not out.exists()
    code, text = run("sweep", cands, "--data", d, "-o", out, "--epochs", "1",
                     "--data-workers", "0", "--device", "cpu", "--check-ranking", "2",
                     "--check-epochs", "2")
    assert code == 0, text
    rows = json.loads((out / "results.json").read_text())["candidates"]
    assert [r["candidate"] for r in rows] == ["c000", "c001", "c002"]
    assert all(r["top1"] is not None and r["epochs"] == 1 and r["params"] > 0
               and r["macs"] > 0 and r["fingerprint"] for r in rows)
    assert sum(r["check_top1"] is not None for r in rows) == 2
    assert (out / "results.csv").read_text().startswith("candidate,fingerprint,choices")
    assert (out / "runs" / "c000" / "summary.json").exists()
    code, text = run("compare", out, "--edf", "-o", tmp_path / "edf", "--bootstrap", "50")
    assert code == 0, text
    assert "rank correlation with 2 epochs on 2 held-out candidates" in text
    for name in ("edf.csv", "edf.json", "edf.png"):
        assert (tmp_path / "edf" / name).stat().st_size > 0
    # a restart with other settings is refused, nothing trained
    code, text = run("sweep", cands, "--data", d, "-o", out, "--epochs", "2")
    assert code == 2 and "other settings" in text, text


def test_a_sigkilled_sweep_restarted_ends_like_an_uninterrupted_one(tmp_path):
    cands, d = candidates(tmp_path), data(tmp_path)
    whole = sweep_proc(cands, d, tmp_path / "A", "--halving", "2")
    killed = sweep_proc(cands, d, tmp_path / "B", "--halving", "2",
                        MFDSL_TEST_KILL_AFTER_STEP="4")  # mid-epoch 2 of the first run
    whole_out = whole.communicate(timeout=600)[0]
    killed.communicate(timeout=600)
    assert whole.returncode == 0, whole_out
    assert killed.returncode == -9
    again = sweep_proc(cands, d, tmp_path / "B", "--halving", "2")
    text = again.communicate(timeout=600)[0]
    assert again.returncode == 0, text
    assert "resumed from" in text  # the killed candidate went on from its checkpoint
    assert top1s(tmp_path / "A") == top1s(tmp_path / "B")
    assert [s for *_, s in top1s(tmp_path / "A")].count("complete") == 1


def test_two_workers_train_each_candidate_once(tmp_path):
    cands, d, out = candidates(tmp_path, 4), data(tmp_path), tmp_path / "S"
    procs = [sweep_proc(cands, d, out) for _ in range(2)]
    texts = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], texts
    both = "".join(texts)
    for name in ("c000", "c001", "c002", "c003"):
        assert both.count(f"sweep: training {name} ") == 1, both
    assert "resumed from" not in both
    assert all(t is not None for _, t, _, _ in top1s(out))
