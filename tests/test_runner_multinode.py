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
    p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, *CKPTS, "--nproc-per-node", "2",
              env=recording(root / "two-samples"))
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def recording(folder: Path) -> dict:
    """The environment of a run whose ranks record the samples of each step in ``folder``."""
    folder.mkdir()
    return runner_env(MFDSL_TEST_RECORD_SAMPLES=str(folder))


def samples_per_step(folder: Path) -> dict:
    """step -> the sorted sample indices every rank drew for it."""
    steps: dict = {}
    for f in folder.glob("rank*.txt"):
        for line in f.read_text().splitlines():
            step, index = map(int, line.split())
            steps.setdefault(step, []).append(index)
    return {s: sorted(v) for s, v in steps.items()}


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


# --------------------------------------------------------------------------- item 2
@pytest.mark.slow
def test_a_resume_at_another_world_size_sees_the_same_samples_per_step(setup, two_ranks,
                                                                       tmp_path):
    root, spec, data = setup
    two = samples_per_step(root / "two-samples")
    assert sorted(two) == [1, 2, 3, 4, 5, 6] and all(len(v) == 4 for v in two.values())
    # Uninterrupted at 4 processes (1 per device): the same block of the order per step.
    four_out = tmp_path / "four"
    p = mfdsl("train", spec, "--data", data, "-o", four_out, *QUIET, *CKPTS,
              "--nproc-per-node", "4", env=recording(tmp_path / "four-samples"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert samples_per_step(tmp_path / "four-samples") == two
    # Stopped at 4 processes after step 2, resumed at 2; and the reverse, after step 4.
    for src, step, nproc in ((four_out, 2, 2), (two_ranks, 4, 4)):
        out = older_copy(src, tmp_path / f"from-{nproc}", step)
        rec = tmp_path / f"resumed-{nproc}"
        p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, *CKPTS, "--resume", "auto",
                  "--nproc-per-node", nproc, env=recording(rec))
        assert p.returncode == 0, p.stderr[-3000:]
        assert f"the run continues at sample {4 * step} of epoch 1" in p.stdout, p.stdout
        assert samples_per_step(rec) == {s: v for s, v in two.items() if s > step}
