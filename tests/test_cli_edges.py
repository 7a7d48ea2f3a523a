"""Issue 19, the smaller findings: contradictory flags, 0 meaning off, huge seeds, the
dataset cache's path and permissions, export/compile --checkpoint RUN_FOLDER."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import run

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "specs" / "demo_tiny.mf"


@pytest.mark.parametrize("args, msg", [
    (["--no-mixup", "--mixup", "0.5"], "--no-mixup and --mixup 0.5 contradict each other"),
    (["--no-ema", "--ema", "0.99"], "--no-ema and --ema 0.99 contradict each other"),
    (["--no-amp", "--amp-dtype", "float16"],
     "--no-amp and --amp-dtype float16 contradict each other"),
])
def test_contradictory_flags_are_refused(tmp_path, args, msg):
    code, out = run("train", DEMO, "-o", tmp_path / "r", *args)
    assert code == 2 and msg in out, out
    assert not (tmp_path / "r").exists()


def test_a_huge_seed_is_a_clear_error(tmp_path):
    code, out = run("train", DEMO, "-o", tmp_path / "r", "--seed", str(10**20))
    assert code == 2 and "--seed is out of range" in out and "Overflow" not in out, out


def test_zero_turns_ema_and_clipping_off():
    from mfdsl.cli.run_cmds import _recipe_overrides

    kw = {"ema": 0.0, "clip_grad": 0.0}
    assert _recipe_overrides(kw) == {"ema": None, "clip_grad": None}
    assert _recipe_overrides({"ema": 0.999})["ema"] == 0.999


def test_the_cache_path_expands_tilde(monkeypatch, tmp_path):
    from mfdsl.resources import default_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MFDSL_CACHE", "~/mfcache")
    assert default_cache_dir() == tmp_path / "mfcache"
    monkeypatch.delenv("MFDSL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert default_cache_dir() == tmp_path / "xdg" / "mfdsl"


def test_the_generated_cache_is_readable_by_others(monkeypatch, tmp_path):
    from mfdsl.data import tinyshapes

    monkeypatch.setattr(tinyshapes, "generate", lambda d: (Path(d) / "x.txt").write_text("x"))
    old = os.umask(0o022)
    try:
        target = tinyshapes.ensure_tinyshapes(tmp_path / "cache")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755


def test_an_unwritable_cache_is_one_clear_error(monkeypatch, tmp_path):
    from mfdsl.data import tinyshapes

    blocker = tmp_path / "file"
    blocker.write_text("")  # a read-only HOME reads the same way: the cache cannot be made
    monkeypatch.setenv("MFDSL_CACHE", str(blocker / "cache"))
    with pytest.raises(OSError) as info:
        tinyshapes.ensure_tinyshapes()
    msg = str(info.value)
    assert msg.startswith(f"cannot make the embedded dataset in {blocker / 'cache'}: ")
    assert "set MFDSL_CACHE to a writable folder" in msg
    code, out = run("train", DEMO, "-o", tmp_path / "r", "--max-steps", "1")
    assert code == 2 and "set MFDSL_CACHE to a writable folder" in out, out


@pytest.mark.slow
def test_export_and_compile_take_a_run_folder(tmp_path):
    from conftest import solid_folder, tiny_mf

    spec = tmp_path / "tiny.mf"
    spec.write_text(tiny_mf(epochs=3))
    solid_folder(tmp_path / "data", 4, {"a": 30, "b": 130, "c": 230})
    out = tmp_path / "run"
    code, text = run("train", spec, "--data", tmp_path / "data", "-o", out, "--max-steps", "1",
                     "--workers", "0", "--no-tensorboard")
    assert code == 0, text
    code, text = run("export", spec, "--format", "pt2", "--checkpoint", out, "-o",
                     tmp_path / "m.pt2")
    assert code == 0 and "[OK]" in text, text
    code, text = run("compile", spec, "--checkpoint", out)
    assert code == 0, text
    # Three classes: top-5 would read 100% whatever the model does; it is not reported.
    code, text = run("eval", "--checkpoint", out, "--data", tmp_path / "data", "--workers", "0")
    assert code == 0 and "top-5 n/a (< 5 classes)" in text, text
    code, text = run("export", spec, "--format", "pt2", "--checkpoint", tmp_path / "data",
                     "-o", tmp_path / "n.pt2")
    assert code == 2 and "is a directory with no checkpoints" in text, text


BN_HEAD = """\
model bnhead {
  input 3x32x32
  classes 10
  stage pooling x1 @16
  head mlp(norm=batchnorm)
}
"""


@pytest.mark.slow
def test_batchnorm_on_pooled_features_needs_two_images_in_training(tmp_path):
    spec = tmp_path / "bn.mf"
    spec.write_text(BN_HEAD)
    code, out = run("inspect", spec)
    assert code == 2 and "--batch 1: the model normalises pooled features with batchnorm" \
        in out and "Expected more than 1 value" not in out, out
    assert run("inspect", spec, "--batch", "2")[0] == 0
    code, out = run("train", spec, "-o", tmp_path / "r", "--per-device-batch", "1",
                    "--batch-size", "1", "--max-steps", "1", "--no-mixup",
                    "--no-cutmix")
    assert code == 2 and "--per-device-batch 1: the model normalises pooled features" in out
    assert not (tmp_path / "r").exists()


def test_a_specs_only_comparison_plots_labelled_costs(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from mfdsl import compare

    drawn = {"labels": [], "bars": []}
    real_labels, real_barh = Axes.set_yticklabels, Axes.barh
    monkeypatch.setattr(Axes, "set_yticklabels", lambda self, labels, **k: (
        drawn["labels"].append(list(labels)), real_labels(self, labels, **k))[1])
    monkeypatch.setattr(Axes, "barh", lambda self, y, w, **k: (
        drawn["bars"].append(list(w)), real_barh(self, y, w, **k))[1])
    entries = [compare.Entry("small", "spec", "a.mf", 2_000_000, 0, 1_000_000_000),
               compare.Entry("big", "spec", "b.mf", 8_000_000, 0, 3_000_000_000)]
    png = compare.plot(entries, {"throughput": False})
    assert png.startswith(b"\x89PNG")
    assert drawn["labels"] and all(lab == ["small", "big"] for lab in drawn["labels"])
    assert [1.0, 3.0] in drawn["bars"] and [2.0, 8.0] in drawn["bars"]


def test_a_cache_that_is_a_file_is_named_as_one(monkeypatch, tmp_path):
    from mfdsl.data import tinyshapes

    blocker = tmp_path / "cache.pth"
    blocker.write_text("")
    monkeypatch.setenv("MFDSL_CACHE", str(blocker))
    with pytest.raises(tinyshapes.CacheError, match="it is a file, not a folder"):
        tinyshapes.ensure_tinyshapes()


def test_an_optional_recipe_number_takes_none_as_a_spec_file_does():
    import json

    for value in ("none", "0"):
        code, out = run("train", DEMO, "--dry-run", "--json", "--ema", value,
                        "--clip-grad", "none")
        assert code == 0, out
        plan = json.loads(out[out.index("{"):])
        assert plan["recipe"]["ema"] is None and plan["recipe"]["clip_grad"] is None, plan
    code, out = run("train", DEMO, "--dry-run", "--ema", "abc")
    assert code == 2 and "'abc' is not a number or none" in out


def test_mfdsl_warnings_reach_the_cli_user_as_one_line(monkeypatch, capsys):
    """A warning raised in mfdsl's code (the CPU LAMB's fallback, a broken plugin) prints as
    'warning: ...', the runner's style; other packages' keep Python's form."""
    import warnings

    import mfdsl.runner.lamb as lamb
    from click.testing import CliRunner

    from mfdsl.cli.app import main, show_warning

    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda *a, **k: shown.append(a))
    spec = str(Path(__file__).resolve().parent.parent / "specs" / "demo_tiny.mf")
    assert CliRunner().invoke(main, ["validate", spec]).exit_code == 0  # the group installs it
    assert warnings.showwarning is show_warning
    show_warning(RuntimeWarning("LAMB takes its slower multi-tensor form on the CPU: no C "
                                "compiler found"), RuntimeWarning, lamb.__file__, 290)
    show_warning(UserWarning("something of torch's"), UserWarning, warnings.__file__, 1)
    assert capsys.readouterr().err == ("warning: LAMB takes its slower multi-tensor form on "
                                       "the CPU: no C compiler found\n")
    assert [str(a[0]) for a in shown] == ["something of torch's"]  # shown as before
