"""Issue 29: beyond one machine, exactly (real processes throughout, gloo on CPU).

The resume decision is rank 0's, shared (or refused in one message when the ranks see
different run folders); a resume at another world size sees the same samples per step;
plain processes with SLURM's (or Open MPI's) variables form one job; the run lock knows a
restarted job from a second writer.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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


# --------------------------------------------------------------------------- item 3
def test_the_launchers_environment_is_read_from_torchrun_srun_or_mpirun(monkeypatch):
    from mfdsl.runner import launch
    from mfdsl.runner.errors import RunError

    for names in launch.LAUNCHERS.values():
        for n in names:
            monkeypatch.delenv(n, raising=False)
    for n in ("SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS", "SLURM_JOB_ID", "SLURM_JOB_NODELIST",
              "SLURM_NODELIST", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(n, raising=False)
    assert (launch.launcher(), launch.launched_rank(), launch.launched_world_size()) == (None, 0, 1)
    # A batch script outside srun is no task of a step: no launcher.
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert launch.launcher() is None and launch.launched_world_size() == 1
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert (launch.launcher(), launch.launched_rank(), launch.launched_world_size(),
            launch.launched_local_rank()) == ("slurm", 5, 8, 1)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-09,12],cpu1")
    monkeypatch.setenv("SLURM_JOB_ID", "4321")
    assert launch.rendezvous() == ("gpu07", 29500 + 4321)
    monkeypatch.setenv("MASTER_PORT", "1234")
    assert launch.rendezvous() == ("gpu07", 1234)
    # torchrun's variables win (torchrun inside an allocation).
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (launch.launcher(), launch.launched_rank(), launch.launched_local_rank()) == (
        "torchrun", 2, 0)
    for n in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "MASTER_PORT"):
        monkeypatch.delenv(n)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    assert (launch.launcher(), launch.launched_rank(), launch.launched_world_size(),
            launch.launched_local_rank()) == ("openmpi", 3, 4, 3)
    with pytest.raises(RunError, match="MASTER_ADDR and MASTER_PORT is not set"):
        launch.rendezvous()


def reap(procs) -> None:
    """Kill, and wait for, whichever of ``procs`` still runs (a test that failed midway)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_four_srun_tasks_form_one_job_and_stop_with_one_checkpoint_on_sigusr1(setup, tmp_path):
    root, spec, data = setup
    out = tmp_path / "slurm"
    port = free_port()
    procs = []
    for rank in range(4):
        env = runner_env(SLURM_PROCID=str(rank), SLURM_NTASKS="4", SLURM_LOCALID=str(rank),
                         SLURM_STEP_ID="0", SLURM_JOB_ID="77", SLURM_JOB_NODELIST="localhost",
                         MASTER_PORT=str(port))
        for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
            env.pop(n, None)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mfdsl", "train", str(spec), "--data", str(data), "-o",
             str(out), *QUIET, "--epochs", "100000", "--ckpt-every", "2", "--keep-recent", "2"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        deadline = time.time() + 240
        last = out / "checkpoints" / "last.safetensors"
        while not last.exists() and time.time() < deadline and all(
                p.poll() is None for p in procs):
            time.sleep(0.2)
        assert last.exists(), [p.poll() for p in procs]
        for p in procs:  # srun --signal / scancel -s USR1 signal every task
            os.kill(p.pid, signal.SIGUSR1)
        texts = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        reap(procs)
    assert [p.returncode for p in procs] == [75] * 4, texts[0][-3000:]
    text = "".join(texts)
    assert "x4;" in texts[0], texts[0][-3000:]  # one job of 4 processes
    assert text.count("stopped by SIGUSR1 at step") == 1, text[-3000:]
    assert "Traceback" not in text
    from mfdsl.runner import checkpointing as ckpt

    stopped = int(text.split("stopped by SIGUSR1 at step ")[1].split()[0])
    assert ckpt.pair_step(str(out / "checkpoints" / "last")) == stopped


# --------------------------------------------------------------------------- item 3: --nnodes
def separate_host(tmp_path: Path, name: str, **extra: str) -> dict:
    """The environment of a machine of its own: its own home, caches and temporary folder."""
    home = tmp_path / name
    for sub in ("tmp", "cache", "torch"):
        (home / sub).mkdir(parents=True)
    env = runner_env(HOME=str(home), TMPDIR=str(home / "tmp"), XDG_CACHE_HOME=str(home / "cache"),
                     TORCH_HOME=str(home / "torch"), **extra)
    for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RUN_ID"):
        env.pop(n, None)
    return env


@pytest.mark.slow
def test_two_agents_with_nnodes_2_end_as_a_one_node_run_of_the_same_world_size(
        setup, two_ranks, tmp_path):
    root, spec, data = setup
    out = tmp_path / "shared-run"  # the one run folder both machines see
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [subprocess.Popen(
        [sys.executable, "-m", "mfdsl", "train", str(spec), "--data", str(data), "-o", str(out),
         *QUIET, *CKPTS, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-endpoint", endpoint,
         "--rdzv-id", "two-agents"], cwd=ROOT, env=separate_host(tmp_path, f"host{i}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        texts = [a.communicate(timeout=300)[0] for a in agents]
    finally:
        reap(agents)
    assert [a.returncode for a in agents] == [0, 0], "\n----\n".join(t[-2000:] for t in texts)
    text = "".join(texts)
    assert "x2;" in text and "Traceback" not in text, text[-3000:]
    a = weights(two_ranks / "checkpoints" / "last.safetensors")
    b = weights(out / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_sigkilled_worker_under_max_restarts_resumes_and_ends_bitwise_equal(
        setup, two_ranks, tmp_path):
    root, spec, data = setup
    out = tmp_path / "restarted"
    # Both workers are killed after step 3 (the last checkpoint is step 2's); torchrun
    # restarts them once, and --resume auto continues from step 2.
    p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, *CKPTS, "--nproc-per-node", "2",
              "--max-restarts", "1", "--resume", "auto",
              env=runner_env(MFDSL_TEST_KILL_AFTER_STEP="3"), timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "resum" in p.stdout and "step 2" in p.stdout, p.stdout[-3000:]
    a = weights(two_ranks / "checkpoints" / "last.safetensors")
    b = weights(out / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, words", [
    (["--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
    (["--nnodes", "0"], "--nnodes must be N or MIN:MAX with 1 <= MIN <= MAX, got '0'"),
    (["--nnodes", "3:2", "--rdzv-endpoint", "h:1", "--rdzv-id", "j"], "got '3:2'"),
    (["--nnodes", "two"], "got 'two'"),
    (["--nnodes", "2", "--rdzv-endpoint", "node0"], "--rdzv-endpoint must be HOST:PORT"),
    (["--nnodes", "2", "--rdzv-endpoint", "node0:70000"], "a port 1-65535"),
    (["--nnodes", "2", "--rdzv-endpoint", "node0:29500"], "--rdzv-endpoint needs --rdzv-id"),
    (["--nproc-per-node", "2", "--max-restarts", "1"], "add --resume auto"),
])
def test_launch_options_are_checked_before_anything_starts(setup, tmp_path, args, words):
    root, spec, data = setup
    out = tmp_path / "never"
    p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, *args)
    assert p.returncode == 2, (p.stdout + p.stderr)[-2000:]
    assert words in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not out.exists()


def test_the_launch_plan_is_torchruns_command_line():
    from mfdsl.runner.launch import LaunchPlan, launch_plan, without_option

    assert launch_plan({"nproc_per_node": None}) is None
    one = launch_plan({"nproc_per_node": 4, "max_restarts": 2, "resume": "auto"})
    assert one.torchrun_args() == ["--standalone", "--nproc-per-node", "4", "--max-restarts", "2"]
    many = launch_plan({"nproc_per_node": 8, "nnodes": "2:4", "rdzv_endpoint": "n0:29400",
                        "rdzv_id": "job7"})
    assert many == LaunchPlan(8, 2, 4, "n0:29400", "job7", 0) and many.world_size == 32
    assert many.torchrun_args()[:8] == ["--nnodes", "2:4", "--rdzv-backend", "c10d",
                                        "--rdzv-endpoint", "n0:29400", "--rdzv-id", "job7"]
    argv = ["train", "s.mf", "--nnodes=2", "--rdzv-endpoint", "n0:1", "--rdzv-id", "j",
            "--nproc-per-node", "2", "--max-restarts=1", "--resume", "auto"]
    assert without_option(argv) == ["train", "s.mf", "--resume", "auto"]


def test_the_dry_run_plans_for_every_machine_of_the_job(setup):
    root, spec, data = setup
    p = mfdsl("train", spec, "--data", data, "--dry-run", "--json", "--nnodes", "2",
              "--nproc-per-node", "2", "--rdzv-endpoint", "n0:29400", "--rdzv-id", "j")
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    assert json.loads(p.stdout)["world_size"] == 4, p.stdout[:2000]


# --------------------------------------------------------------------------- item 4
def test_the_lock_takes_over_from_an_earlier_incarnation_of_the_same_job_only(
        tmp_path, monkeypatch):
    import json

    from mfdsl.runner import run_lock

    for n in ("SLURM_JOB_ID", "SLURM_STEP_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(n, raising=False)
    # A live holder on another host (flock not shared there): a requeued SLURM job or a
    # rank 0 moved to another node carries the same job id in its record.
    rec = {"host": "other-node-7", "pid": 4242, "start": "99", "since": time.time(),
           "command": "mfdsl train x.mf", "job": "slurm:123.0"}
    (tmp_path / ".mfdsl-lock").write_text(json.dumps(rec))
    with pytest.raises(run_lock.RunLocked, match="job slurm:123.0"):
        run_lock.RunLock(str(tmp_path)).acquire()  # no job: a second writer
    monkeypatch.setenv("SLURM_JOB_ID", "124")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    with pytest.raises(run_lock.RunLocked):
        run_lock.RunLock(str(tmp_path)).acquire()  # another job
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    lock = run_lock.RunLock(str(tmp_path)).acquire()
    try:
        assert any("earlier incarnation of this job" in n and "other-node-7" in n
                   for n in lock.notes), lock.notes
        assert json.loads((tmp_path / ".mfdsl-lock").read_text())["job"] == "slurm:123.0"
        # An elastic restart whose predecessor's flock is still held (here: by `lock`).
        monkeypatch.delenv("SLURM_JOB_ID")
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "rdzv-9")
        with pytest.raises(run_lock.RunLocked, match="job slurm:123.0"):
            run_lock.RunLock(str(tmp_path)).acquire()
    finally:
        lock.release()
    first = run_lock.RunLock(str(tmp_path)).acquire()
    try:
        again = run_lock.RunLock(str(tmp_path)).acquire()  # the same rendezvous id
        try:
            monkeypatch.setenv("TORCHELASTIC_RUN_ID", "rdzv-10")
            with pytest.raises(run_lock.RunLocked, match="job torchrun:rdzv-9"):
                run_lock.RunLock(str(tmp_path)).acquire()
        finally:
            again.release()
    finally:
        first.release()
    assert not (tmp_path / ".mfdsl-lock").exists()


# --------------------------------------------------------------------------- the end of a rank
LEAVE = """
import atexit, sys, torch, torch.distributed as dist
from mfdsl.runner import distributed
{join}
atexit.register(lambda: print("exit handler ran", flush=True))
distributed.teardown()
print("an unterminated line", end="")
distributed.leave_process(3)
print(" and a line after it")
"""
JOIN = """
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
distributed._joined = True
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))  # pins the group
"""


def test_a_rank_that_joined_a_group_ends_without_finalization_but_loses_nothing():
    script = LEAVE.format(join=JOIN.format(port=free_port()))
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=runner_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr[-2000:]
    assert p.stdout == "an unterminated lineexit handler ran\n", p.stdout
    assert "and a line after it" not in p.stdout


def test_a_process_that_never_joined_a_group_ends_as_usual():
    p = subprocess.run([sys.executable, "-c", LEAVE.format(join="")], cwd=ROOT,
                       env=runner_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout == "an unterminated line and a line after it\nexit handler ran\n"
