"""Issue 8: nothing silently wrong, nothing lost, nothing written outside the folder asked for.

Runs carry their context (model fingerprint, input size, eval transform, class list) and
`--resume`/`eval` check and use it; earlier runs and input files are never overwritten;
every write is atomic, keeps permissions and never follows a link out of a run folder;
spec and checkpoint reads refuse FIFOs and devices.
"""
from __future__ import annotations

import faulthandler
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from mfdsl import fsio
from conftest import run, solid_folder, solid_images as _images, tiny_mf

ROOT = Path(__file__).resolve().parents[1]


def _spec(mixer: str) -> str:
    """The tiny model's text, with a comment its canonical form drops."""
    return "# a comment the canonical form would drop\n" + tiny_mf(mixer, epochs=1)


FAST = ["--max-steps", "2", "--workers", "0", "--no-tensorboard", "--log-every", "1"]


def _tree(root: Path) -> dict:
    """path -> bytes of every file below ``root`` (links as their target text)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p)] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return solid_folder(tmp_path_factory.mktemp("data"), 4, {"a": 30, "b": 130, "c": 230})


@pytest.fixture(scope="module")
def other_data(data) -> Path:
    """Other class folders (a, b, d) beside ``data``."""
    return solid_folder(data.parent / "other", 4, {"a": 30, "b": 130, "d": 230})


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("specs")
    (d / "pool.mf").write_text(_spec("pooling"))
    # Same tensor shapes, another model: the checkpoint loads, the function differs.
    (d / "ident.mf").write_text(_spec("identity"))
    # The same model written differently (explicit default argument).
    (d / "pool3.mf").write_text(_spec("pooling(pool_size=3)"))
    return d


@pytest.fixture(scope="module")
def trained(data, specs, tmp_path_factory) -> Path:
    """A run trained at 64x64 on a 32 px spec."""
    out = tmp_path_factory.mktemp("runs") / "r64"
    code, text = run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out,
                     "--img-size", "64")
    assert code == 0, text
    return out


def _eval_json(*args) -> dict:
    code, out = run("eval", *args, "--workers", "0", "--json")
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


# =========================================================================== context
def test_run_records_its_context(trained, specs):
    ctx = json.loads((trained / "run.json").read_text())
    assert ctx["classes"] == ["a", "b", "c"] and ctx["img_size"] == [64, 64]
    assert ctx["model"].startswith("sha256:")
    from safetensors import safe_open

    with safe_open(str(trained / "checkpoints" / "last.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["mfdsl"])
    assert meta["run"]["model"] == ctx["model"] and meta["run"]["classes"] == ctx["classes"]


def test_fingerprint_is_the_model_not_its_spelling(specs):
    from mfdsl.api import load_spec
    from mfdsl.fingerprint import model_fingerprint

    pool, pool3, ident = (model_fingerprint(load_spec(specs / n))
                          for n in ("pool.mf", "pool3.mf", "ident.mf"))
    assert pool == pool3 and pool != ident


def test_eval_uses_the_runs_size_and_needs_no_spec(trained, data, specs):
    res = _eval_json("-c", trained, "--data", data)
    assert res["img_size"] == [64, 64] and res["class_source"] == "run"
    # The same model spelled differently is accepted; the run's size still wins.
    res2 = _eval_json(specs / "pool3.mf", "-c", trained, "--data", data)
    assert res2["img_size"] == [64, 64] and res2["top1"] == res["top1"]


def test_eval_img_size_override_is_explicit_and_checked(trained, data):
    res = _eval_json("-c", trained, "--data", data, "--img-size", "32")
    assert res["img_size"] == [32, 32]
    code, out = run("eval", "-c", trained, "--data", data, "--img-size", "8", "--workers", "0")
    assert code == 2 and "--img-size" in out  # too small for two downsamplings: located
    assert _eval_json("-c", trained, "--data", data, "--crop-pct", "0.5")["crop_pct"] == 0.5
    code, out = run("eval", "-c", trained, "--data", data, "--crop-pct", "1.5")
    assert code == 2 and "--crop-pct" in out


def test_eval_refuses_a_same_shaped_other_model(trained, data, specs):
    before = _tree(trained)
    code, out = run("eval", specs / "ident.mf", "-c", trained, "--data", data,
                    "--workers", "0")
    assert code == 2 and "different model" in out and "identity here, pooling in the run" in out
    # ... also for the bare weights file copied out of the run folder
    code, out = run("eval", specs / "ident.mf", "-c",
                    trained / "checkpoints" / "last.safetensors", "--data", data)
    assert code == 2 and "different model" in out
    assert _tree(trained) == before


def test_resume_refuses_a_same_shaped_other_model_and_keeps_spec(trained, data, specs):
    before = _tree(trained)
    code, out = run("train", specs / "ident.mf", *FAST, "--data", data, "-o", trained,
                    "--resume", "auto")
    assert code == 2 and "different model" in out
    assert _tree(trained) == before  # spec.mf and every checkpoint untouched


def test_resume_keeps_the_runs_size_and_refuses_another(trained, data, specs, tmp_path):
    code, out = run("train", specs / "pool.mf", *FAST, "--data", data, "-o", trained,
                    "--resume", "auto", "--img-size", "48")
    assert code == 2 and "trained at 64x64" in out


def _set_head(run_dir: Path, favour: int) -> None:
    """Make the run's last checkpoint predict class ``favour`` for every image."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run_dir / "checkpoints" / "last.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        w = {k: f.get_tensor(k) for k in f.keys()}
    hw = next(k for k in w if k.startswith("head") and k.endswith("weight"))
    hb = hw[: -len("weight")] + "bias"
    w[hw] = torch.zeros_like(w[hw])
    w[hb] = torch.full_like(w[hb], -10.0)
    w[hb][favour] = 10.0
    path.unlink()  # last is a hard link: do not change ckpt-N through it
    save_file(w, str(path), metadata=meta)


def test_eval_val_folder_lacking_a_class_keeps_labels(data, specs, tmp_path):
    out = tmp_path / "run"
    code, text = run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out)
    assert code == 0, text
    _set_head(out, favour=2)  # always "c"
    val = tmp_path / "val_bc" / "val"
    _images(val / "b", 3, 130)
    _images(val / "c", 3, 230)
    res = _eval_json("-c", out, "--data", val.parent)
    # "c" is label 2 of the run; by folder position it would be 1 and score 0%.
    assert res["top1"] == pytest.approx(50.0) and res["class_source"] == "run"
    only_c = tmp_path / "only_c"
    _images(only_c / "c", 3, 230)
    assert _eval_json("-c", out, "--data", only_c)["top1"] == pytest.approx(100.0)
    # A class the run never saw is an error, not a shifted label.
    _images(val / "zebra", 2, 0)
    code, text = run("eval", "-c", out, "--data", val.parent, "--workers", "0")
    assert code == 2 and "zebra" in text and "not trained on" in text


def test_bare_checkpoint_needs_spec_and_matching_class_count(data, specs, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    assert run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out)[0] == 0
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(out / "checkpoints" / "last.safetensors")), str(bare))
    code, text = run("eval", "-c", bare, "--data", data)
    assert code == 2 and "give the SPEC" in text
    two = tmp_path / "two"
    _images(two / "a", 2, 30)
    _images(two / "b", 2, 130)
    code, text = run("eval", specs / "pool.mf", "-c", bare, "--data", two, "--workers", "0")
    assert code == 2 and "2 class folders but the model has 3" in text
    res = _eval_json(specs / "pool.mf", "-c", bare, "--data", data)
    assert res["class_source"] == "folder" and res["img_size"] == [32, 32]


def test_resume_refuses_other_classes(data, specs, tmp_path):
    out = tmp_path / "run"
    assert run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out)[0] == 0
    other = solid_folder(tmp_path / "other", 4, {"a": 30, "b": 130, "d": 230})
    before = _tree(out)
    code, text = run("train", specs / "pool.mf", *FAST, "--max-steps", "4", "--data", other,
                     "-o", out, "--resume", "auto")
    assert code == 2 and "lacks c" in text and "adds d" in text
    assert _tree(out) == before


# =========================================================================== data loss
@pytest.mark.parametrize("damage", ["no_state", "corrupt_state", "weights_only"])
def test_a_damaged_run_is_never_overwritten(data, specs, tmp_path, damage):
    out = tmp_path / "run"
    assert run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out)[0] == 0
    ck = out / "checkpoints"
    for p in ck.glob("*.state.pt"):
        if damage == "corrupt_state":
            p.write_bytes(b"garbage")
        else:
            p.unlink()
    if damage == "weights_only":
        for n in os.listdir(out):
            if n != "checkpoints":
                p = out / n
                p.unlink() if p.is_file() else None
    before = _tree(out)
    code, text = run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out)
    assert code == 2 and "earlier run" in text and "--overwrite" in text
    code, text = run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out,
                     "--resume", "auto")
    assert code == 2 and "nothing was changed" in text
    assert _tree(out) == before
    # Asked for explicitly, a new run replaces it.
    code, text = run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out,
                     "--overwrite")
    assert code == 0, text
    assert (ck / "last.state.pt").is_file()


def test_train_never_rewrites_the_users_spec(data, specs, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    spec = out / "spec.mf"
    spec.write_text(_spec("pooling"))
    spec.chmod(0o640)
    before = spec.read_bytes()
    code, text = run("train", spec, *FAST, "--data", data, "-o", out)
    assert code == 0, text
    assert spec.read_bytes() == before and stat.S_IMODE(spec.stat().st_mode) == 0o640
    assert "is the spec file you gave" in text
    # The run's own spec (canonical) is in run.json; eval needs no spec.
    assert "model tiny" in json.loads((out / "run.json").read_text())["spec_mf"]
    assert _eval_json("-c", out, "--data", data)["images"] == 12


def test_pruning_deletes_only_this_runs_checkpoints(tmp_path):
    from mfdsl.runner import checkpointing as ck

    w = {"x": torch.zeros(2)}
    foreign = ck.CheckpointWriter(str(tmp_path), 5, {"run_id": "other"})
    foreign.save(1, 0, w, {}, False)
    for n in ("last.safetensors", "last.state.pt"):
        os.unlink(tmp_path / n)
    mine = ck.CheckpointWriter(str(tmp_path), 1, {"run_id": "mine"})
    for step in (2, 3, 4):
        mine.save(step, 0, w, {}, False)
    left = sorted(p.name for p in tmp_path.glob("ckpt-*.safetensors"))
    assert left == ["ckpt-00000001.safetensors", "ckpt-00000004.safetensors"]


def test_convert_never_overwrites_its_input(specs, tmp_path):
    src = tmp_path / "a.mf"
    src.write_text(_spec("pooling"))
    before = src.read_bytes()
    os.symlink(src, tmp_path / "link.mf")
    os.link(src, tmp_path / "hard.mf")
    for target in (src, tmp_path / "link.mf", tmp_path / "hard.mf"):
        code, out = run("convert", src, "--to", "mf", "-o", target)
        assert code == 1 and "input" in out, out
    assert src.read_bytes() == before


@pytest.mark.slow
def test_export_and_draw_refuse_to_overwrite_the_spec(specs, tmp_path):
    spec = tmp_path / "s.mf"
    spec.write_text(_spec("pooling"))
    link = tmp_path / "s.svg"
    os.symlink(spec, link)
    before = spec.read_bytes()
    code, out = run("draw", spec, "-o", link)
    assert code == 1 and "input" in out
    for cmd in (["inspect", spec, "--graph-out", spec], ["bench", spec, "--json", spec],
                ["export", spec, "--format", "pt2", "-o", tmp_path / "s.pt2",
                 "--checkpoint", tmp_path / "s.pt2"]):
        if cmd[0] == "export":
            os.link(spec, tmp_path / "s.pt2")  # a hard link to the spec
        code, out = run(*cmd)
        assert code in (1, 2) and "input" in out, (cmd, out)
    assert spec.read_bytes() == before


# =========================================================================== unsafe
@pytest.mark.parametrize("name", ["recipe.json", "spec.mf", "summary.json", "metrics.jsonl",
                                  "checkpoints"])
def test_links_inside_a_run_folder_are_refused(data, specs, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(outside if name == "checkpoints" else victim, out / name)
    for extra in ([], ["--resume", "auto"], ["--overwrite"]):
        code, text = run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out, *extra)
        assert code == 2 and "symbolic link" in text, text
    assert victim.read_text() == "precious" and os.listdir(outside) == ["victim"]


def test_fmt_and_convert_keep_mode_and_write_through_links(specs, tmp_path):
    real = tmp_path / "real.mf"
    real.write_text(_spec("pooling").replace("# a comment the canonical form "
                                                          "would drop\n", "").replace(
        "  head linear", "  head   linear"))
    real.chmod(0o600)
    link = tmp_path / "link.mf"
    os.symlink(real, link)
    code, out = run("fmt", "-w", link)
    assert code == 0, out
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "head   linear" not in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    dst = tmp_path / "out.yaml"
    dst.write_text("old")
    dst.chmod(0o600)
    assert run("convert", real, "--to", "yaml", "-o", dst)[0] == 0
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600 and "old" != dst.read_text()


def test_fsio_refuses_read_only_outputs(tmp_path, monkeypatch):
    p = tmp_path / "ro.txt"
    p.write_text("keep")
    p.chmod(0o444)
    if os.access(p, os.W_OK):  # root may write anything: act as a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda q, m, **k: False if m == os.W_OK and
                            os.fspath(q) == str(p) else real(q, m, **k))
    with pytest.raises(PermissionError):
        fsio.write_atomic(str(p), "new")
    assert p.read_text() == "keep"


def test_fsio_atomic_write_rules(tmp_path):
    old = os.umask(0o027)
    try:
        new = tmp_path / "new.txt"
        fsio.write_atomic(str(new), "x")
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    t = tmp_path / "t.txt"
    t.write_text("old")
    link = tmp_path / "l.txt"
    os.symlink(t, link)
    with pytest.raises(fsio.UnsafePathError):
        fsio.write_atomic(str(link), "new", links=fsio.INTERNAL)
    with pytest.raises(fsio.UnsafePathError):
        fsio.append_text(str(link), "new")
    assert t.read_text() == "old"

    def bad(_tmp):
        raise ValueError("check failed")

    with pytest.raises(ValueError):
        fsio.write_atomic_with(str(t), lambda p: Path(p).write_text("new"), verify=bad)
    assert t.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.txt", "new.txt", "t.txt"]


# =========================================================================== hangs
def _fifo(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    os.mkfifo(p)
    return p


def _no_hang(fn, seconds: float = 20):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", fn()), daemon=True)
    # A read that blocks while holding the GIL (a native open of a FIFO) stops this thread
    # too: then faulthandler's own thread ends the process with the blocked stack, a
    # failure instead of a suite that never ends.
    faulthandler.dump_traceback_later(seconds + 30, exit=True)
    t.start()
    try:
        t.join(seconds)
    finally:
        faulthandler.cancel_dump_traceback_later()
    if t.is_alive():
        # Unblock the reader so the test process can exit, then fail.
        raise AssertionError("blocked")
    return box["r"]


def test_fifo_and_device_specs_are_refused(tmp_path):
    fifo = _fifo(tmp_path, "f.mf")
    zero = tmp_path / "z.yaml"
    os.symlink("/dev/zero", zero)
    for p in (fifo, zero):
        for cmd in (["validate", p], ["fmt", p], ["convert", p, "--to", "yaml"],
                    ["train", p, "-o", tmp_path / "r"]):
            code, out = _no_hang(lambda: run(*cmd))
            assert code == 2 and "not a regular file" in out, (cmd, out)
    big = tmp_path / "big.mf"
    big.write_bytes(b"#" * (5 * 1024 * 1024))
    code, out = run("validate", big)
    assert code == 2 and "larger than" in out


def test_fifo_checkpoints_are_refused(tmp_path, specs, data):
    fifo = _fifo(tmp_path, "w.safetensors")
    code, out = _no_hang(lambda: run("eval", specs / "pool.mf", "-c", fifo, "--data", data))
    assert code == 2 and "not a regular file" in out
    code, out = _no_hang(lambda: run("train", specs / "pool.mf", *FAST, "--data", data,
                                     "-o", tmp_path / "r", "--init-from", fifo))
    assert code == 2 and "not a regular file" in out


# =========================================================================== torchrun
@pytest.mark.slow
def test_torchrun_refusal_is_one_message(trained, data, other_data, specs):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    before = _tree(trained)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "mfdsl.runner", "train", str(specs / "pool.mf"), "--data", str(data),
           "-o", str(trained), "--workers", "0", "--device", "cpu"]
    for extra, why in (([], "earlier run"),  # refused before the process group
                       # refused after it (the class folders are scanned by every rank)
                       (["--resume", "auto", "--data", str(data.parent / "other")],
                        "differ from the 3 classes")):
        p = subprocess.run(cmd + extra, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=240)
        text = p.stdout + p.stderr
        assert p.returncode != 0
        errors = [ln for ln in text.splitlines() if ln.startswith(("error:", "[rank"))]
        assert len(errors) == 1 and why in errors[0], text
        assert "gloo" not in text.lower() and "mfdsl/" not in text  # no rank's traceback
        assert _tree(trained) == before


@pytest.mark.slow
def test_nproc_per_node_launches_and_a_refusal_is_one_line_without_traceback(
        trained, data, specs, tmp_path):
    # torchrun's own launcher prints a ChildFailedError traceback for any failed worker;
    # `mfdsl train --nproc-per-node` keeps the worker's one line and its exit code.
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    before = _tree(trained)
    base = [sys.executable, "-m", "mfdsl", "train", str(specs / "pool.mf"), "--data", str(data),
            "--workers", "0", "--device", "cpu", "--nproc-per-node", "2"]
    p = subprocess.run(base + ["-o", str(trained)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=240)
    text = p.stdout + p.stderr
    assert p.returncode == 2, text
    errors = [ln for ln in text.splitlines() if ln.startswith(("error:", "[rank"))]
    assert len(errors) == 1 and "earlier run" in errors[0], text
    assert "Traceback" not in text and "gloo" not in text.lower(), text
    assert _tree(trained) == before
    out = tmp_path / "ddp"
    p = subprocess.run(base + ["--nproc-per-node=2", "-o", str(out), "--max-steps", "2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "stopped_at_max_steps"
    assert json.loads((out / "environment.json").read_text())["world_size"] == 2


def test_fifo_named_like_an_image_is_skipped_not_waited_on(specs, tmp_path):
    d = tmp_path / "d"
    for split in ("train", "val"):
        _images(d / split / "a", 4, 30)
        _images(d / split / "b", 4, 130)
        _images(d / split / "c", 4, 230)
    os.mkfifo(d / "val" / "a" / "zz.png")
    code, out = _no_hang(lambda: run("eval", specs / "pool.mf", "-c", _bare(specs, tmp_path),
                                     "--data", d, "--workers", "0"), 60)
    assert code == 0 and "skipped 1 unreadable" in out, out


def _bare(specs: Path, tmp_path: Path) -> Path:
    from mfdsl.api import build_model
    from safetensors.torch import save_file

    p = tmp_path / "init.safetensors"
    save_file(build_model(str(specs / "pool.mf")).state_dict(), str(p))
    return p


def test_export_and_compile_check_which_model_the_weights_are(trained, specs, tmp_path):
    w = trained / "checkpoints" / "last.safetensors"
    code, out = run("export", specs / "ident.mf", "--format", "pt2", "--checkpoint", w,
                    "-o", tmp_path / "x.pt2")
    assert code == 2 and "different model" in out and not (tmp_path / "x.pt2").exists()
    code, out = run("compile", specs / "ident.mf", "--checkpoint", w)
    assert code == 2 and "different model" in out
    code, out = run("export", specs / "pool.mf", "--format", "pt2", "--checkpoint", w,
                    "-o", tmp_path / "x.pt2")
    assert code == 0 and "run's input size 64x64" in out, out


@pytest.mark.slow
def test_resume_into_another_runs_folder_is_refused(data, specs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert run("train", specs / "pool.mf", *FAST, "--data", data, "-o", out)[0] == 0
    before = _tree(b)
    code, text = run("train", specs / "pool.mf", *FAST, "--max-steps", "4", "--data", data,
                     "-o", b, "--resume", a / "checkpoints" / "last.safetensors")
    assert code == 2 and "holds another run" in text
    assert _tree(b) == before
    # Into a new folder it continues, and eval there needs no spec.
    code, text = run("train", specs / "pool.mf", *FAST, "--max-steps", "4", "--data", data,
                     "-o", tmp_path / "c", "--resume", a / "checkpoints" / "last.safetensors",
                     "--allow-recipe-change")  # issue 19: more steps is a recipe change
    assert code == 0, text
    assert json.loads((tmp_path / "c" / "run.json").read_text())["run_id"] == json.loads(
        (a / "run.json").read_text())["run_id"]


def test_resume_without_img_size_keeps_the_runs(trained, data, specs):
    code, text = run("train", specs / "pool.mf", *FAST, "--max-steps", "3", "--data", data,
                     "-o", trained, "--resume", "auto", "--allow-recipe-change")
    assert code == 0, text
    resolved = json.loads((trained / "recipe.json").read_text())["resolved"]
    assert resolved["img_size"] == [64, 64]


def test_resume_past_an_unreadable_newer_checkpoint_says_so(data, specs, tmp_path):
    out = tmp_path / "run"
    assert run("train", specs / "pool.mf", *FAST, "--max-steps", "2", "--ckpt-every", "1",
               "--data", data, "-o", out)[0] == 0
    ck = out / "checkpoints"
    (ck / "ckpt-00000002.state.pt").write_bytes(b"garbage")
    (ck / "last.state.pt").unlink()
    code, text = run("train", specs / "pool.mf", *FAST, "--max-steps", "3", "--data", data,
                     "-o", out, "--resume", "auto", "--allow-recipe-change")
    assert code == 0, text
    assert "resuming from step 1" in text and "ckpt-00000002" in text
