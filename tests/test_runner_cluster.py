"""Issue 19: runs that survive a shared cluster (real processes throughout).

One writer per run folder (a lock naming its holder, stale locks taken over); SIGTERM /
SIGUSR1 end a run with a checkpoint at the next step boundary and exit code 75, and
``--resume auto`` continues bitwise; leftover temporary files of interrupted writes are
removed on the next start; the same through ``--nproc-per-node``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import ROOT, runner_env as _env, tiny_mf

SPEC = tiny_mf(epochs=3)
QUIET = ["--workers", "0", "--no-tensorboard", "--log-every", "1"]
# A run that lasts until it is stopped.
LONG = ["--epochs", "100000", "--ckpt-every", "2", "--keep-recent", "2"]


def mfdsl(*args, env: dict = None, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mfdsl", *map(str, args)], cwd=ROOT,
                          env=env or _env(), capture_output=True, text=True, timeout=timeout)


def start(*args, env: dict = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mfdsl", *map(str, args)], cwd=ROOT,
                            env=env or _env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert path.exists(), (proc.poll(), proc.stdout.read() if proc.poll() is not None else "")


def finish(proc: subprocess.Popen, timeout: float = 90) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return out


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    for split in ("train", "val"):
        for c, col in (("a", 30), ("b", 130), ("c", 230)):
            d = root / "data" / split / c
            d.mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (20, 20), (col, 40 * i % 256, 0)).save(d / f"{i}.png")
    spec = root / "tiny.mf"
    spec.write_text(SPEC)
    return root, spec, root / "data"


@pytest.fixture(scope="module")
def reference(setup):
    """An uninterrupted run: 3 epochs x 6 steps."""
    root, spec, data = setup
    ref = root / "ref"
    p = mfdsl("train", spec, "--data", data, "-o", ref, *QUIET)
    assert p.returncode == 0, p.stderr[-3000:]
    return ref


# --------------------------------------------------------------------------- the lock
@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_holder_then_sigterm_checkpoints(setup):
    root, spec, data = setup
    out = root / "locked"
    first = start("train", spec, "--data", data, "-o", out, *QUIET, *LONG)
    waiter = None
    try:
        wait_for(out / "checkpoints" / "last.safetensors", first)
        lock = json.loads((out / ".mfdsl-lock").read_text())
        assert lock["pid"] == first.pid and lock["host"] == socket.gethostname()
        # A requeued job started while the first still runs, and a plain second start.
        for extra in (["--resume", "auto"], ["--overwrite"], []):
            p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, *extra)
            assert p.returncode == 2, (extra, p.stdout, p.stderr)
            assert "being written by another mfdsl run" in p.stderr, p.stderr
            assert f"pid {first.pid}" in p.stderr and "Traceback" not in p.stderr
        assert first.poll() is None, "the first run must go on undisturbed"
        t0 = time.time()
        p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, "--resume", "auto",
                  "--wait-for-lock", "2")
        assert p.returncode == 2 and "waited 2 s; nothing was changed" in p.stderr, p.stderr
        assert time.time() - t0 >= 2
        # A waiting requeue goes on once the holder ends (here: stopped by SIGTERM).
        waiter = start("train", spec, "--data", data, "-o", out, *QUIET, *LONG,
                       "--resume", "auto", "--wait-for-lock", "120")
        # A scheduler's stop: a checkpoint at the next step boundary, exit 75.
        os.kill(first.pid, signal.SIGTERM)
        text = finish(first)
    finally:
        for proc in (first, waiter):
            if proc is not None and proc.poll() is None and (proc is first or first.poll()
                                                             is None):
                os.killpg(proc.pid, signal.SIGKILL)
    assert first.returncode == 75, text[-2000:]
    assert "stopped by SIGTERM at step" in text and "--resume auto" in text, text[-2000:]
    assert "Traceback" not in text
    stopped = int(text.split("stopped by SIGTERM at step ")[1].split()[0])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and waiter.poll() is None and not (
                (out / ".mfdsl-lock").exists()
                and json.loads((out / ".mfdsl-lock").read_text() or "{}").get("pid")
                == waiter.pid):
            time.sleep(0.2)
        time.sleep(3)
        os.kill(waiter.pid, signal.SIGTERM)
        wtext = finish(waiter)
    finally:
        if waiter.poll() is None:
            os.killpg(waiter.pid, signal.SIGKILL)
    assert waiter.returncode == 75, wtext[-2000:]
    assert f"resumed from {out / 'checkpoints' / 'last'} (step {stopped}," in wtext, wtext[-2000:]
    stopped = int(wtext.split("stopped by SIGTERM at step ")[1].split()[0])
    from mfdsl.runner import checkpointing as ckpt

    assert ckpt.pair_step(str(out / "checkpoints" / "last")) == stopped
    assert not (out / ".mfdsl-lock").exists()
    # The refused starts changed nothing: the first run's history is whole.
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == list(range(1, stopped + 1))


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_named_and_taken_over(setup):
    root, spec, data = setup
    out = root / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".mfdsl-lock").write_text(json.dumps({
        "host": socket.gethostname(), "pid": dead.pid, "start": "1", "since": 0,
        "command": "mfdsl train old.mf"}))
    p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, "--max-steps", "1")
    assert p.returncode == 0, p.stderr
    assert f"a stale lock of a process no longer running (host {socket.gethostname()}, " \
           f"pid {dead.pid}" in p.stdout
    assert not (out / ".mfdsl-lock").exists()


def test_a_live_holder_on_another_host_is_respected_until_its_heartbeat_is_stale(
        tmp_path, monkeypatch):
    """Where flock is not shared between hosts, the record decides."""
    from mfdsl.runner import run_lock
    from mfdsl.runner.errors import RunError

    rec = {"host": "other-node-7", "pid": 4242, "start": "99", "since": time.time(),
           "command": "mfdsl train x.mf"}
    (tmp_path / ".mfdsl-lock").write_text(json.dumps(rec))
    with pytest.raises(run_lock.RunLocked, match="host other-node-7, pid 4242"):
        run_lock.RunLock(str(tmp_path)).acquire()
    old = time.time() - run_lock.STALE_AFTER_S - 5
    os.utime(tmp_path / ".mfdsl-lock", (old, old))
    lock = run_lock.RunLock(str(tmp_path)).acquire()
    try:
        assert any("stale lock" in n and "other-node-7" in n for n in lock.notes)
        # While held, a second lock in this same host is refused by flock alone.
        with pytest.raises(RunError, match=f"pid {os.getpid()}"):
            run_lock.RunLock(str(tmp_path)).acquire()
    finally:
        lock.release()
    assert not (tmp_path / ".mfdsl-lock").exists()


@pytest.mark.slow
def test_a_refused_start_in_a_new_folder_leaves_no_folder(setup, tmp_path):
    root, spec, data = setup
    out = tmp_path / "new"
    p = mfdsl("train", spec, "--data", tmp_path / "nope", "-o", out, *QUIET)
    assert p.returncode == 2 and "no such folder" in p.stderr, p.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- preemption
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_signal_checkpoints_at_the_step_boundary_and_resume_is_bitwise(setup, reference, sig):
    root, spec, data = setup
    out = root / f"pre-{sig}"
    # Step 7: one step into epoch 2, no periodic checkpoint there.
    p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET,
              env=_env(MFDSL_TEST_SIGNAL_AT_STEP=f"7:{sig}"))
    assert p.returncode == 75, p.stderr[-2000:]
    assert f"stopped by {sig} at step 7 (epoch 2)" in p.stderr
    assert "exit code 75" in p.stderr and "Traceback" not in p.stderr
    state = torch.load(out / "checkpoints" / "last.state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (7, 1, 1)
    # An interrupted write's hidden temporary file (as a SIGKILL mid-write leaves one).
    tmp = out / "checkpoints" / ".ckpt-00000008.state.pt.a1b2c3d4.tmp.pt"
    tmp.write_bytes(b"x" * 1000)
    theirs = out / "checkpoints" / ".notes.a1b2c3d4.tmp.txt"  # not a run file's: stays
    theirs.write_text("mine")
    r = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "removed 1 temporary file(s) of interrupted writes" in r.stdout
    assert not tmp.exists() and theirs.exists()
    a = weights(reference / "checkpoints" / "last.safetensors")
    b = weights(out / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_nproc_per_node_sigterm_is_one_message_and_exit_75(setup):
    root, spec, data = setup
    out = root / "ddp"
    proc = start("train", spec, "--data", data, "-o", out, *QUIET, *LONG,
                 "--nproc-per-node", "2", "--device", "cpu")
    try:
        wait_for(out / "checkpoints" / "last.safetensors", proc, 180)
        os.kill(proc.pid, signal.SIGTERM)  # to the launcher, as `timeout` or a scheduler
        text = finish(proc, 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, text[-3000:]
    assert text.count("stopped by SIGTERM at step") == 1, text[-3000:]
    for bad in ("SignalException", "internal error", "Traceback"):
        assert bad not in text, text[-3000:]
    from mfdsl.runner import checkpointing as ckpt

    stopped = int(text.split("stopped by SIGTERM at step ")[1].split()[0])
    assert ckpt.pair_step(str(out / "checkpoints" / "last")) == stopped


@pytest.mark.slow
def test_nproc_per_node_ctrl_c_is_one_message(setup):
    root, spec, data = setup
    out = root / "ddp-int"
    proc = start("train", spec, "--data", data, "-o", out, *QUIET, *LONG,
                 "--nproc-per-node", "2", "--device", "cpu")
    try:
        wait_for(out / "checkpoints" / "last.safetensors", proc, 180)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        text = finish(proc, 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, text[-3000:]
    assert text.count("stopped by SIGINT") + text.count("interrupted") == 1, text[-3000:]
    for bad in ("SignalException", "internal error", "Traceback"):
        assert bad not in text, text[-3000:]


def test_only_interrupted_writes_of_run_files_count_as_leftovers(tmp_path):
    from mfdsl.runner.preemption import remove_leftover_temporaries

    ck = tmp_path / "checkpoints"
    ck.mkdir()
    ours = [tmp_path / ".run.json.k2j4h_x9.tmp.json", ck / ".last.safetensors.4242.lnk",
            ck / ".ckpt-00000012.safetensors.abcdefgh.tmp.safetensors"]
    theirs = [tmp_path / ".bashrc.abcdefgh.tmp", ck / ".notes.txt.abcdefgh.tmp.txt",
              tmp_path / "run.json.abcdefgh.tmp.json", ck / "ckpt-00000012.safetensors"]
    for p in ours + theirs:
        p.write_bytes(b"12345")
    removed, freed = remove_leftover_temporaries(str(tmp_path))
    assert sorted(removed) == sorted(map(str, ours)) and freed == 15
    assert all(p.exists() for p in theirs)


# --------------------------------------------------------------------------- recipe
@pytest.mark.slow
def test_resume_with_another_recipe_is_refused_or_recorded(setup):
    root, spec, data = setup
    out = root / "recipe"
    base = ["train", spec, "--data", data, "-o", out, *QUIET]
    assert mfdsl(*base, "--max-steps", "8").returncode == 0
    recipe = (out / "recipe.json").read_text()
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    p = mfdsl(*base, "--max-steps", "8", "--resume", "auto", "--lr", "0.01",
              "--weight-decay", "0.01", "--no-flip", "--seed", "3")
    assert p.returncode == 2, p.stderr
    for line in ("lr: 0.004 -> 0.01", "weight_decay: 0.05 -> 0.01",
                 "flip probability (--no-flip): 0.5 -> 0.0", "--seed: 0 -> 3"):
        assert line in p.stderr, p.stderr
    assert "--allow-recipe-change" in p.stderr and "Traceback" not in p.stderr
    assert (out / "recipe.json").read_text() == recipe
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    # Asked for: the optimizer changes (no crash: its state starts fresh), on record.
    p = mfdsl(*base, "--resume", "auto", "--optimizer", "sgd", "--weight-decay", "0.01",
              "--allow-recipe-change")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "its state (moments) starts fresh" in p.stdout
    assert (out / "recipe.json").read_text() == recipe  # the history is not rewritten
    recs = [json.loads(l) for l in (out / "recipe_changes.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["step"] == 8
    assert recs[0]["changes"]["recipe.optimizer"] == ["adamw", "sgd"]
    assert recs[0]["changes"]["recipe.weight_decay"] == [0.05, 0.01]
    assert recs[0]["changes"]["resolved.total_steps"] == [8, 18]
    state = torch.load(out / "checkpoints" / "last.state.pt", weights_only=True)
    assert all(g["weight_decay"] in (0.0, 0.01) for g in state["optimizer"]["param_groups"])
    assert "momentum" in state["optimizer"]["param_groups"][0]
    # The run's recipe is now the changed one: resuming with it is no change.
    from mfdsl.runner import recipe_history

    eff = recipe_history.effective(str(out))
    assert eff["recipe"]["optimizer"] == "sgd" and eff["resolved"]["total_steps"] == 18


# --------------------------------------------------------------------------- full disks
@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS", "EIO"])
def test_a_failed_write_names_the_file_and_what_was_kept(tmp_path, code):
    import errno

    from mfdsl import fsio

    def fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    old = tmp_path / "old.json"
    old.write_text("kept")
    with pytest.raises(fsio.WriteError) as info:
        fsio.write_atomic_with(str(old), fail)
    msg = str(info.value)
    assert msg.startswith(f"cannot write {old}: {os.strerror(getattr(errno, code))}")
    assert "the previous file is kept unchanged" in msg
    assert old.read_text() == "kept" and sorted(os.listdir(tmp_path)) == ["old.json"]
    with pytest.raises(fsio.WriteError, match="nothing was left there"):
        fsio.write_atomic_with(str(tmp_path / "new.json"), fail)
    assert sorted(os.listdir(tmp_path)) == ["old.json"]


def test_torch_writers_failure_without_errno_is_a_write_error(tmp_path, monkeypatch):
    from mfdsl import fsio
    from mfdsl.runner import checkpointing as ckpt

    def native(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")

    monkeypatch.setattr(torch, "save", native)
    with pytest.raises(fsio.WriteError, match=r"x\.state\.pt: the write failed"):
        ckpt.atomic_torch_save({"a": 1}, str(tmp_path / "x.state.pt"))
    assert os.listdir(tmp_path) == []


def _file_size_limit(limit: int):
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG, as on a full disk."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the process is killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        os.setsid()

    return apply


@pytest.mark.slow
def test_training_on_a_full_disk_stops_clearly_and_keeps_the_last_checkpoint(setup):
    root, spec, data = setup
    out = root / "full"
    # The weights file (~73 kB) fits, the state file (~175 kB) does not.
    p = subprocess.run([sys.executable, "-m", "mfdsl", "train", str(spec), "--data", str(data),
                        "-o", str(out), *QUIET], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=180, preexec_fn=_file_size_limit(120_000))
    assert p.returncode == 74, (p.returncode, p.stderr[-2000:])
    assert "cannot write " + str(out / "checkpoints" / "ckpt-00000006.state.pt") in p.stderr
    assert "Training stopped at step 6" in p.stderr and "--resume auto" in p.stderr
    for bad in ("internal error", "Traceback", "basic_ios", "enforce fail"):
        assert bad not in p.stderr, p.stderr
    assert not [n for n in os.listdir(out / "checkpoints") if n.startswith(".")]


@pytest.mark.slow
def test_export_pt2_to_a_full_disk_is_an_error_not_an_abort(tmp_path):
    spec = ROOT / "specs" / "demo_tiny.mf"
    target = tmp_path / "m.pt2"
    p = subprocess.run([sys.executable, "-m", "mfdsl", "export", str(spec), "--format", "pt2",
                        "-o", str(target)], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=180, preexec_fn=_file_size_limit(20_000))
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    assert f"cannot write {target}: File too large" in p.stderr, p.stderr
    assert "nothing was left there" in p.stderr and "Traceback" not in p.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_small_tmpfs_fills_up_cleanly(setup, tmp_path):
    """A real full file system where this test may mount one (root); skipped otherwise."""
    root, spec, data = setup
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        p = mfdsl("train", spec, "--data", data, "-o", mnt / "r", *QUIET, "--ckpt-every", "1",
                  "--keep-recent", "10")
        assert p.returncode == 74, p.stderr[-2000:]
        assert "No space left on device" in p.stderr and "Traceback" not in p.stderr
        from mfdsl.runner import checkpointing as ckpt

        assert ckpt.find_latest(str(mnt / "r" / "checkpoints")) is not None
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------- --overwrite
@pytest.mark.slow
def test_overwrite_removes_only_what_a_run_recorded_as_its_own(setup, tmp_path):
    root, spec, data = setup
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"spec.yaml": "my spec", "summary.json": "{}", "epochs.csv": "a,b\n",
             "curves.png": "not a png"}
    for name, text in files.items():
        (mine / name).write_text(text)
    p = mfdsl("train", spec, "--data", data, "-o", mine, *QUIET, "--max-steps", "1",
              "--overwrite")
    assert p.returncode == 2, p.stderr
    assert "were not written by an mfdsl run" in p.stderr
    for name in files:
        assert name in p.stderr and (mine / name).read_text() == files[name]
    # A run's own files are recorded, and --overwrite replaces exactly those.
    out = tmp_path / "run"
    assert mfdsl("train", spec, "--data", data, "-o", out, *QUIET,
                 "--max-steps", "1").returncode == 0
    rec = json.loads((out / ".mfdsl-files.json").read_text())
    assert "summary.json" in rec["entries"] and "checkpoints" in rec["entries"]
    (out / "notes.txt").write_text("keep")
    p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, "--max-steps", "2",
              "--overwrite")
    assert p.returncode == 0, p.stderr
    assert (out / "notes.txt").read_text() == "keep"
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


# --------------------------------------------------------------------------- output
@pytest.mark.slow
def test_a_closed_stdout_never_stops_training(setup, tmp_path):
    """`mfdsl train ... | head -1`: the reader goes away after one line."""
    root, spec, data = setup
    out = tmp_path / "piped"
    proc = subprocess.Popen([sys.executable, "-m", "mfdsl", "train", str(spec), "--data",
                             str(data), "-o", str(out), *QUIET], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` exits
    _, err = proc.communicate(timeout=180)
    assert first and proc.returncode == 0, err[-2000:]
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err
    assert "the run's output continues in" in err
    log = (out / "output.log").read_text()
    assert "stdout closed; training goes on" in log and "done: 18 steps" in log
    assert json.loads((out / "summary.json").read_text())["steps"] == 18


@pytest.mark.slow
def test_resuming_an_older_checkpoint_never_overwrites_newer_intact_ones(setup, tmp_path):
    root, spec, data = setup
    out = tmp_path / "run"
    assert mfdsl("train", spec, "--data", data, "-o", out, *QUIET, "--max-steps", "6",
                 "--ckpt-every", "2", "--keep-recent", "10").returncode == 0
    ck = out / "checkpoints"
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    p = mfdsl("train", spec, "--data", data, "-o", out, *QUIET, "--max-steps", "6",
              "--resume", ck / "ckpt-00000002.safetensors")
    assert p.returncode == 2, p.stderr
    assert "step 2 is older than intact checkpoints" in p.stderr
    assert "ckpt-00000004 (step 4)" in p.stderr and "incomplete" not in p.stderr
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    # Into another folder it continues.
    r = mfdsl("train", spec, "--data", data, "-o", tmp_path / "branch", *QUIET,
              "--max-steps", "6", "--resume", ck / "ckpt-00000002.safetensors")
    assert r.returncode == 0, r.stderr[-2000:]


def test_ctrl_c_inside_torchs_native_writer_stays_an_interrupt(tmp_path) -> None:
    """torch.save through a Python file turns a KeyboardInterrupt raised in the file's
    write() into a RuntimeError: it must reach the runner as an interrupt (exit 130),
    not as a failed write (exit 74), and leave no temporary file."""
    from mfdsl import fsio

    calls = []

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as f:
            class Interrupting:
                def write(self, b):
                    calls.append(len(b))
                    if len(calls) == 3:
                        raise KeyboardInterrupt
                    return f.write(b)

                def flush(self):
                    f.flush()

            torch.save({"w": torch.zeros(1000)}, Interrupting())

    with pytest.raises(KeyboardInterrupt):
        fsio.write_atomic_with(str(tmp_path / "x.state.pt"), writer)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []
