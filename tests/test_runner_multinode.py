"""Issue 29: beyond one machine, exactly (real processes throughout, gloo on CPU).

The resume decision is rank 0's, shared (or refused in one message when the ranks see
different run folders); a resume at another world size sees the same samples per step;
plain processes with SLURM's (or Open MPI's) variables form one job; the run lock knows a
restarted job from a second writer.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, runner_env, solid_folder, tiny_mf, weights

QUIET = ["--workers", "0", "--no-tensorboard", "--log-every", "1", "--device", "cpu"]
CKPTS = ["--ckpt-every", "2", "--keep-recent", "20"]


def mfdsl(*args, env: dict = None, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mfdsl", *map(str, args)], cwd=ROOT,
                          env=env or runner_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """24 training images of 3 classes; a tiny model, global batch 4: 6 steps per epoch at
    any world size that divides 4."""
    root = tmp_path_factory.mktemp("multinode")
    data = solid_folder(root / "data", 8, {"a": 30, "b": 130, "c": 230})
    spec = root / "tiny.mf"
    spec.write_text(tiny_mf(epochs=1))
    return root, spec, data


@pytest.fixture(scope="module")
def two_ranks(setup):
    """An uninterrupted 2-process run with a checkpoint every 2 steps (all kept)."""
    root, spec, data = setup
    out = root / "two"
    p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, *CKPTS, "--nproc-per-node", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def older_copy(run: Path, dst: Path, step: int) -> Path:
    """``run`` as a node that has not yet seen anything after ``step`` would (mtimes kept)."""
    shutil.copytree(run, dst)
    ck = dst / "checkpoints"
    for f in ck.iterdir():
        if f.name.startswith(("last.", "best.")) or (
                f.name.startswith("ckpt-") and int(f.name[5:13]) > step):
            f.unlink()
    for ext in (".safetensors", ".state.pt"):
        os.link(ck / f"ckpt-{step:08d}{ext}", ck / f"last{ext}")
    return dst


# --------------------------------------------------------------------------- item 1
@pytest.mark.slow
def test_a_rank_with_an_older_view_of_the_run_folder_is_refused_in_one_message(
        setup, two_ranks, tmp_path):
    root, spec, data = setup
    view = older_copy(two_ranks, tmp_path / "node2", 4)
    before = sorted(os.listdir(two_ranks / "checkpoints"))
    p = mfdsl("train", spec, "--data", data, "-o", two_ranks, *QUIET, *CKPTS,
              "--nproc-per-node", "2", "--resume", "auto",
              env=runner_env(MFDSL_TEST_OUTPUT_VIEW=f"1:{view}"))
    text = p.stdout + p.stderr
    assert p.returncode == 2, text[-3000:]
    assert text.count("the ranks do not see the same checkpoints") == 1, text[-3000:]
    assert "rank 0 chose checkpoints/ckpt-00000006 (step 6" in text, text[-3000:]
    assert "rank 1 cannot read that pair (it sees checkpoints/ckpt-00000006 (not a " \
           "complete, readable pair))" in text, text[-3000:]
    assert "its own pick was checkpoints/ckpt-00000004 (step 4" in text, text[-3000:]
    assert "Traceback" not in text
    assert sorted(os.listdir(two_ranks / "checkpoints")) == before


@pytest.mark.slow
def test_ranks_that_can_read_rank_0s_pick_adopt_it_and_resume_exactly(setup, two_ranks,
                                                                      tmp_path):
    root, spec, data = setup
    # Rank 0 sees the folder as it was at step 2; rank 1 sees it whole (newer): both can
    # read ckpt-2, so both continue from it, and the run ends as the uninterrupted one did.
    out = older_copy(two_ranks, tmp_path / "out", 2)
    p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, *CKPTS,
              "--nproc-per-node", "2", "--resume", "auto",
              env=runner_env(MFDSL_TEST_OUTPUT_VIEW=f"1:{two_ranks}"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert ("note: rank 1 chose checkpoints/ckpt-00000006 (step 6" in p.stdout
            and "every rank resumes from rank 0's checkpoints/ckpt-00000002 (step 2"
            in p.stdout), p.stdout[-3000:]
    a = weights(two_ranks / "checkpoints" / "last.safetensors")
    b = weights(out / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
