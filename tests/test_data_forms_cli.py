"""`mfdsl train` / `mfdsl eval` on the same images as an ImageFolder tree, parquet shards
and tar shards: the same run, bitwise; SIGKILL + resume on shards equals uninterrupted;
the class list carried by the run is checked across forms."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mfdsl.data.writers import folder_to_forms
from conftest import (runner as mfdsl, runner_env as _env, train_spec as tiny_spec, weights,
                      write_colour_folder, write_spec)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forms_cli")
    folder = write_colour_folder(tmp / "folder", n_train=11, n_val=4)
    (folder / "train" / "c1_green" / "zz_bad.png").write_bytes(b"")  # unreadable in all forms
    folder_to_forms(str(folder), str(tmp / "parquet"), str(tmp / "tar"), parquet_per_shard=10,
                    tar_per_shard=7)
    spec = write_spec(tmp / "aug.mf", tiny_spec(
        name="aug", randaugment="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0,
        random_erasing=0.25, drop_path=0.1, label_smoothing=0.1))
    common = ["--ckpt-every", "3", "--keep-recent", "10", "--log-every", "1"]
    ref = tmp / "ref"
    p = mfdsl("train", spec, "--data", str(folder), "-o", str(ref), "--workers", "0", *common)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp, spec, common, ref


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a / "checkpoints" / "last.safetensors"), weights(
        b / "checkpoints" / "last.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("form", ["parquet", "tar"])
def test_shards_train_like_the_folder_and_survive_sigkill(setup, form):
    tmp, spec, common, ref = setup
    run = tmp / f"{form}_killed"
    data = str(tmp / form)
    p = mfdsl("train", spec, "--data", data, "-o", str(run), "--workers", "2", *common,
              env=_env(MFDSL_TEST_KILL_AFTER_STEP="7"))
    assert p.returncode == -9, (p.returncode, p.stderr[-2000:])
    r = mfdsl("train", spec, "--data", data, "-o", str(run), "--workers", "2", "--resume",
              "auto", *common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    _same_weights(ref, run)
    ja = json.loads((ref / "summary.json").read_text())
    jb = json.loads((run / "summary.json").read_text())
    assert ja["skipped_images"] == jb["skipped_images"] == 1
    assert ja["skipped_image_fetches"] == jb["skipped_image_fetches"]
    assert ja["final_val"]["top1"] == jb["final_val"]["top1"]
    # eval on this form reproduces the final validation; the run's class list is used.
    e = mfdsl("eval", "--checkpoint", str(run), "--data", data, "--json", "--workers", "0")
    assert e.returncode == 0, e.stderr[-3000:]
    res = json.loads(e.stdout)
    assert res["class_source"] == "run" and res["images"] == jb["final_val"]["images"]
    # tolerance: a count ratio computed twice (float formatting only)
    assert res["top1"] == pytest.approx(jb["final_val"]["top1"], abs=1e-9)
    # A bounded evaluation, with a progress bar on stderr.
    q = mfdsl("eval", "--checkpoint", str(run), "--data", data, "--workers", "0",
              "--val-samples", "5", "--progress", "--batch-size", "2")
    assert q.returncode == 0, q.stderr[-3000:]
    assert "(5 images" in q.stdout and "eval val" in q.stderr and "/3 [" in q.stderr


def test_resume_on_another_form_with_other_classes_is_refused(setup):
    tmp, spec, common, ref = setup
    other = tmp / "tar_other"
    shutil.copytree(tmp / "tar", other)
    (other / "classes.txt").write_text("a\nb\nc\n")
    for p in other.glob(".mfdsl-index-*"):
        p.unlink()
    run = tmp / "cls_run"
    shutil.copytree(ref, run)
    r = mfdsl("train", spec, "--data", str(other), "-o", str(run), "--workers", "0",
              "--resume", "auto", "--max-steps", "9", *common)
    assert r.returncode == 2 and "differ" in r.stderr and "Traceback" not in r.stderr
