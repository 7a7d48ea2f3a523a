"""A demanding user's bad inputs to `mfdsl train`, `eval`, `bench` and `compile --target/--fold`.

Each must end in one clear message and a non-zero exit (never a traceback), or, where the
input is fine, succeed; and an interrupted run must leave its last checkpoint usable.
"""
from __future__ import annotations

import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run, solid_images as _images, two_class_folder

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "specs" / "demo_tiny.mf")
CUDA = torch.cuda.is_available()
# Seconds-long runs: 3 steps of batch 4 on a 16-image folder, no loader processes.
FAST = ["--max-steps", "3", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0",
        "--no-tensorboard", "--batch-size", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return two_class_folder(tmp_path_factory.mktemp("data"), 8)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ok"
    code, text = run("train", DEMO, *FAST, "--data", data, "-o", out)
    assert code == 0, text
    return out


@pytest.fixture(scope="module")
def wide_spec(tmp_path_factory) -> Path:
    """demo_tiny with a wider first stage: checkpoints of one do not fit the other."""
    p = tmp_path_factory.mktemp("specs") / "wide.mf"
    p.write_text(Path(DEMO).read_text().replace("@32", "@48"))
    return p


# --- train: data ------------------------------------------------------------------------

def test_train_data_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, out = run("train", DEMO, *FAST, "--data", f, "-o", tmp_path / "r")
    assert code == 2 and "no such folder" in out


def test_train_data_empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    code, out = run("train", DEMO, *FAST, "--data", tmp_path / "empty", "-o", tmp_path / "r")
    assert code == 2 and "no 'train' folder" in out


def test_train_data_without_class_folders(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "x.png").write_bytes(b"")
    code, out = run("train", DEMO, *FAST, "--data", tmp_path / "d", "-o", tmp_path / "r")
    assert code == 2 and "no class folders" in out


def test_train_without_val_split_trains(tmp_path):
    _images(tmp_path / "d" / "train" / "a", 8, 10)
    _images(tmp_path / "d" / "train" / "b", 8, 200)
    code, out = run("train", DEMO, *FAST, "--data", tmp_path / "d", "-o", tmp_path / "r")
    assert code == 0, out
    assert "16 train / 0 val" in out
    assert (tmp_path / "r" / "checkpoints" / "last.safetensors").is_file()


# --- train: output folder ---------------------------------------------------------------

def test_train_output_is_an_existing_file(data, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    code, out = run("train", DEMO, *FAST, "--data", data, "-o", f)
    assert code == 2 and "--output" in out
    assert f.read_text() == "keep me"


def test_train_output_below_a_file_names_the_option(data, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, out = run("train", DEMO, *FAST, "--data", data, "-o", f / "run")
    assert code == 2
    assert "--output" in out and "cannot write the run folder" in out


def test_train_refuses_to_overwrite_a_run(data, trained):
    code, out = run("train", DEMO, *FAST, "--data", data, "-o", trained)
    assert code == 2 and "--resume auto" in out


# --- train: resume / init ---------------------------------------------------------------

def test_resume_garbage_file(data, tmp_path):
    g = tmp_path / "g.safetensors"
    g.write_text("garbage")
    code, out = run("train", DEMO, *FAST, "--data", data, "-o", tmp_path / "r", "--resume", g)
    assert code == 2 and "corrupt" in out


def test_resume_missing_path(data, tmp_path):
    code, out = run("train", DEMO, *FAST, "--data", data, "-o", tmp_path / "r",
                    "--resume", tmp_path / "nope.safetensors")
    assert code == 2 and "not found" in out


def test_resume_checkpoint_of_another_spec_names_the_difference(data, trained, wide_spec,
                                                                tmp_path):
    before = (trained / "spec.mf").read_text()
    code, out = run("train", wide_spec, *FAST, "--data", data, "-o", trained, "--resume", "auto")
    assert code == 2
    assert "different model" in out
    assert "stages[0].width: 48 here, 32 in the run" in out
    assert (trained / "spec.mf").read_text() == before  # the run folder is untouched


def test_init_from_corrupt_file(data, tmp_path):
    g = tmp_path / "g.safetensors"
    g.write_text("garbage")
    code, out = run("train", DEMO, *FAST, "--data", data, "-o", tmp_path / "r",
                    "--init-from", g)
    assert code == 2 and "not a valid safetensors file" in out
    assert not (tmp_path / "r").exists()


# --- train: option values ---------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--batch-size", "-1"], "batch_size must be >= 1"),
    (["--lr", "nan"], "lr must be finite"),
    (["--img-size", "0"], "'--img-size'"),
    (["--img-size", "abc"], "'--img-size'"),
    (["--accum", "0"], "--accum must be >= 1"),
    (["--betas", "a,b"], "'--betas'"),
    (["--randaugment", "foo"], "unknown augmentation 'foo'"),
    (["--randaugment", "rand-w0"], "'w0' is not a setting of RandAugment"),
    (["--momentum", "0.5"], "does not use it"),
    (["--log-every", "0"], "--log-every must be >= 1, got 0"),
    (["--eval-every", "0"], "--eval-every must be >= 1, got 0"),
    (["--keep-recent", "-1"], "--keep-recent must be >= 0, got -1"),
    (["--ckpt-every", "-1"], "--ckpt-every must be >= 0, got -1"),
    (["--nan-max-consecutive", "0"], "--nan-max-consecutive must be >= 1, got 0"),
    (["--crop-scale-min", "2"], "--crop-scale-min"),
    (["--max-steps", "0"], "--max-steps"),
    (["--workers", "-1"], "--workers"),
    (["--per-device-batch", "64", "--batch-size", "64"], "smaller than one global batch"),
])
def test_train_nonsense_options(data, tmp_path, args, words):
    code, out = run("train", DEMO, *FAST, "--data", data, "-o", tmp_path / "r", *args)
    assert code == 2, out
    assert words in out, out
    assert not (tmp_path / "r").exists()


def test_img_size_the_model_cannot_take_blames_the_option(data, tmp_path):
    code, out = run("train", DEMO, *FAST, "--data", data, "-o", tmp_path / "r",
                    "--img-size", "8")
    assert code == 2
    # the spec is right at its own size: the first error at 8x8 is the option's
    assert "--img-size 8x8: kernel 3 is larger than the 2x2 feature map" in out, out
    assert not re.search(r"demo_tiny\.mf:\d", out)  # no line of the file is the culprit


def test_epochs_below_the_specs_warmup_says_what_to_do(data, tmp_path):
    code, out = run("train", DEMO, "--max-steps", "3", "--epochs", "1", "--data", data,
                    "-o", tmp_path / "r")
    assert code == 2 and "lower --warmup-epochs" in out


def test_spec_that_fails_the_checks(data, tmp_path):
    bad = tmp_path / "bad.mf"
    bad.write_text("model bad {\n  input 3x64x64\n  stage sepconv x0 @32\n}\n")
    code, out = run("train", bad, *FAST, "--data", data, "-o", tmp_path / "r")
    assert code == 2 and "bad.mf:3:" in out and "depth" in out


def test_fp16_loss_scaling_survives_an_overflowing_first_step(data, tmp_path):
    # fp16 gradients scaled by 65536 overflow at first: the scaler must skip the step and
    # lower its scale, not treat it as a non-finite loss (and then crash in unscale_).
    code, out = run("train", DEMO, *FAST, "--data", data, "-o", tmp_path / "r", "--amp",
                    "--amp-dtype", "float16", "--nan-policy", "stop")
    assert code == 0, out
    assert "non-finite" not in out


# --- train: Ctrl-C ----------------------------------------------------------------------

@pytest.mark.slow
def test_sigint_stops_cleanly_and_keeps_the_last_checkpoint(data, tmp_path):
    from mfdsl.runner import checkpointing as ckpt

    out_dir = tmp_path / "r"
    last = out_dir / "checkpoints" / "last.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfdsl", "train", DEMO, "--max-steps", "100000",
         "--epochs", "1000", "--warmup-epochs", "0", "--workers", "0", "--no-tensorboard",
         "--batch-size", "4", "--ckpt-every", "1", "--data", str(data), "-o", str(out_dir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # A shell that runs jobs in the background ignores SIGINT for them: undo that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while not last.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert last.exists(), "no checkpoint was written"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert "interrupted at step" in out and "--resume auto" in out
    step = ckpt.pair_step(str(out_dir / "checkpoints" / "last"))
    assert step is not None and step >= 1


# --- eval -------------------------------------------------------------------------------

def test_eval_missing_checkpoint(data, tmp_path):
    code, out = run("eval", DEMO, "--workers", "0", "--data", data,
                    "-c", tmp_path / "nope.safetensors")
    assert code == 2 and "no such file" in out


def test_eval_corrupt_checkpoint(data, tmp_path):
    g = tmp_path / "g.safetensors"
    g.write_bytes(b"\x00" * 3)
    code, out = run("eval", DEMO, "--workers", "0", "--data", data, "-c", g)
    assert code == 2 and "cannot load checkpoint" in out


def test_eval_wrong_architecture(data, trained, wide_spec):
    code, out = run("eval", wide_spec, "--workers", "0", "--data", data, "-c", trained)
    assert code == 2 and "different model" in out and "stages[0].width: 48 here" in out


def test_eval_refuses_pickled_code(data, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, p)
    code, out = run("eval", DEMO, "--workers", "0", "--data", data, "-c", p)
    assert code == 2 and "pickled" in out
    assert not marker.exists()


def test_eval_missing_data(trained, tmp_path):
    code, out = run("eval", DEMO, "--workers", "0", "--data", tmp_path / "nope", "-c", trained)
    assert code == 2 and "no such folder" in out


def test_eval_root_without_the_split_is_not_taken_for_classes(trained, tmp_path):
    _images(tmp_path / "d" / "train" / "a", 2, 10)
    code, out = run("eval", DEMO, "--workers", "0", "--data", tmp_path / "d", "-c", trained)
    assert code == 2 and "no 'val' split" in out and "--split" in out


def test_eval_folder_without_checkpoints(data, tmp_path):
    (tmp_path / "run").mkdir()
    code, out = run("eval", DEMO, "--workers", "0", "--data", data, "-c", tmp_path / "run")
    assert code == 2 and "without checkpoints" in out


def test_eval_run_folder(data, trained):
    code, out = run("eval", DEMO, "--workers", "0", "--data", data, "-c", trained)
    assert code == 0 and "16 images, 2 classes" in out


# --- bench ------------------------------------------------------------------------------

BENCH_FAST = ["--batch", "1", "--rounds", "1", "--iters", "1", "--warmup", "1",
              "--tasks", "infer", "--no-memory"]


def test_bench_spec_without_timm_twin():
    code, out = run("bench", DEMO, *BENCH_FAST)
    assert code == 0 and "timm `(none)`" in out


@pytest.mark.slow
def test_bench_edited_spec_keeping_a_timm_name_is_not_compared(tmp_path):
    p = tmp_path / "caformer_s18.mf"
    p.write_text((ROOT / "specs" / "caformer_s18.mf").read_text().replace("@64", "@80"))
    code, out = run("bench", p, *BENCH_FAST)
    assert code == 0, out
    assert "differs from this spec" in out and "timm `(none)`" in out


@pytest.mark.slow
def test_bench_gives_timms_twin_the_specs_drop_path(monkeypatch):
    """A training step compared with timm's does the same work: the spec's drop path and
    head dropout go to timm's model too (it defaults to none)."""
    import timm

    seen = {}
    real = timm.create_model

    def create_model(name, **kw):
        seen.update(kw)
        return real(name, **kw)

    monkeypatch.setattr(timm, "create_model", create_model)
    code, out = run("bench", ROOT / "specs" / "poolformerv2_s12.mf", "--batch", "1",
                    "--rounds", "1", "--iters", "1", "--warmup", "1", "--no-memory",
                    "--tasks", "train")
    assert code == 0, out
    assert seen["drop_path_rate"] == pytest.approx(0.1) and seen["drop_rate"] == 0.0
    assert "drop path 0.1 in both" in out


@pytest.mark.parametrize("batch", ["0", "-3", "abc"])
def test_bench_bad_batch(batch):
    code, out = run("bench", DEMO, "--batch", batch)
    assert code == 2 and "'--batch'" in out


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_bench_cuda_without_gpu():
    code, out = run("bench", DEMO, "--device", "cuda", "--batch", "1")
    assert code == 2 and "no CUDA device" in out


def test_a_compiler_failure_is_a_clear_error_not_an_internal_one(monkeypatch):
    """torch.compile failing inside inductor/Triton (seen on an H100 with torch 2.11:
    'PassManager::run failed') is reported as a compiler failure with the way out."""
    from torch._inductor.exc import InductorError

    def broken_compile(model, **kw):
        def call(*a, **k):
            raise InductorError(RuntimeError("PassManager::run failed"), None)
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    code, out = run("bench", DEMO, *BENCH_FAST, "--compile", "--no-eager", "--no-timm")
    assert code == 1 and "torch.compile failed" in out and "--no-compile" in out
    assert "PassManager::run failed" in out


def test_bench_json_into_a_missing_folder_fails_before_measuring(tmp_path):
    code, out = run("bench", DEMO, *BENCH_FAST, "--json", tmp_path / "no" / "x.json")
    assert code == 2 and "--json" in out
    assert "round 1/1" not in out


# --- compile --target / --fold ----------------------------------------------------------

@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_compile_target_cuda_without_gpu():
    code, out = run("compile", DEMO, "--target", "cuda")
    assert code == 2 and "no CUDA device" in out


def test_compile_fold_eager_cpu():
    code, out = run("compile", DEMO, "--fold", "--target", "cpu", "--mode", "eager")
    assert code == 0 and "fold=True" in out and "fold_for_inference" in out


def test_compile_fold_randformer():
    code, out = run("compile", ROOT / "specs" / "randformer_s12.mf", "--fold", "--target",
                    "cpu", "--mode", "eager")
    assert code == 0 and "fold=True" in out


def test_compile_corrupt_checkpoint(tmp_path):
    g = tmp_path / "g.safetensors"
    g.write_text("garbage")
    code, out = run("compile", DEMO, "--fold", "--target", "cpu", "--mode", "eager",
                    "--checkpoint", g)
    assert code == 2 and "not a valid safetensors file" in out
