"""Export to PT2 / ONNX, then the exported file is run and compared with eager."""
from __future__ import annotations

import importlib.util
import stat

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from mfdsl.api import check_spec
from mfdsl.cli import main
from mfdsl.target.export import ExportError, export_model
from mfdsl.ir import ModelSpec, StageSpec, call, default_downsample
from mfdsl.lower import lower
from tolerances import assert_close, tolerance

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))

SMALL_YAML = """model: small_hybrid
input: {size: 32}
classes: 10
stages:
  - {mixer: sepconv, depth: 1, width: 16}
  - {mixer: attention, depth: 1, width: 32, res_scale: 1.0}
head: mlp
"""


def small_spec() -> ModelSpec:
    stages = [
        StageSpec(depth=1, width=16, mixers=[call("sepconv", kernel=3)]),
        StageSpec(depth=1, width=32, mixers=[call("attention", head_dim=16)],
                  res_scale=1.0, downsample=default_downsample()),
    ]
    return ModelSpec(name="small", img_size=(32, 32), num_classes=10, stages=stages,
                     head=call("mlp"))


# The small model in fp32: the longest reduction is the MLP's hidden width (4 x 32), a
# forward chains ~10 products (tests/tolerances.py).
K, STEPS = 128, 10


@torch.no_grad()
def _atol(model: nn.Module) -> float:
    """The derived absolute tolerance at the size of the model's outputs."""
    return tolerance(torch.float32, K, model(torch.randn(2, 3, 32, 32)).abs().max(),
                     STEPS)["atol"]


@pytest.fixture(scope="module")
def small_model() -> nn.Module:
    torch.manual_seed(0)
    return lower(small_spec()).eval()


def test_pt2_round_trip_matches_eager(small_model, tmp_path):
    out = tmp_path / "small.pt2"
    res = export_model(small_model, str(out), "pt2", input_shape=(3, 32, 32), batch=2)
    assert out.stat().st_size > 0
    assert res.ok and res.batches == [2]
    assert res.max_abs_diff < _atol(small_model)
    # The file stands alone: load it again and run a fresh input.
    loaded = torch.export.load(str(out)).module()
    x = torch.randn(2, 3, 32, 32)
    assert_close(loaded(x), small_model(x), k=K, steps=STEPS)


def test_pt2_dynamic_batch(small_model, tmp_path):
    out = tmp_path / "dyn.pt2"
    res = export_model(small_model, str(out), "pt2", input_shape=(3, 32, 32), batch=1,
                       dynamic_batch=True)
    assert res.ok and len(res.batches) == 2
    loaded = torch.export.load(str(out)).module()
    assert loaded(torch.randn(5, 3, 32, 32)).shape == (5, 10)


class _Drifting(nn.Module):
    """Adds a Python float that export bakes in as a constant; changing it afterwards makes
    eager and the exported file disagree, which the check must catch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.offset = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.offset


def _drift_after_export(monkeypatch, model: _Drifting):
    """Make ``model`` change right after it is exported, so the check must fail; returns
    the real exporter, to put back."""
    import mfdsl.target.export as ex

    real = ex._export_pt2

    def export_then_drift(m, example, path, dynamic):
        out = real(m, example, path, dynamic)
        model.offset = 0.5
        return out

    monkeypatch.setattr(ex, "_export_pt2", export_then_drift)
    return real


def test_check_detects_a_mismatch(tmp_path, monkeypatch):
    model = _Drifting()
    _drift_after_export(monkeypatch, model)
    res = export_model(model, str(tmp_path / "d.pt2"), "pt2", input_shape=(4,))
    assert not res.ok
    # tolerance: the drift planted by the test is exactly 0.5; fp32 rounding around it
    assert res.max_abs_diff == pytest.approx(0.5, abs=1e-6)


def test_failed_export_keeps_the_previous_file(tmp_path, monkeypatch):
    import mfdsl.target.export as ex

    good = tmp_path / "m.pt2"
    good.write_bytes(b"the previous good export")
    good.chmod(0o600)
    model = _Drifting()
    real = _drift_after_export(monkeypatch, model)
    res = export_model(model, str(good), "pt2", input_shape=(4,))
    assert not res.ok and not res.written
    assert good.read_bytes() == b"the previous good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]  # no temporary left
    monkeypatch.setattr(ex, "_export_pt2", real)
    model.offset = 0.0
    res = export_model(model, str(good), "pt2", input_shape=(4,))
    assert res.ok and good.read_bytes() != b"the previous good export"
    assert stat.S_IMODE(good.stat().st_mode) == 0o600


def test_bad_format_and_directory(small_model, tmp_path):
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(small_model, str(tmp_path / "x"), "tflite", input_shape=(3, 32, 32))
    with pytest.raises(ExportError, match="does not exist"):
        export_model(small_model, str(tmp_path / "no" / "x.pt2"), "pt2",
                     input_shape=(3, 32, 32))


@pytest.mark.skipif(not HAS_ONNX, reason="onnx / onnxscript not installed")
def test_onnx_export_matches_eager(small_model, tmp_path):
    import onnx

    out = tmp_path / "small.onnx"
    res = export_model(small_model, str(out), "onnx", input_shape=(3, 32, 32),
                       dynamic_batch=True)
    assert res.ok, res.summary()
    assert res.max_abs_diff < _atol(small_model)
    model = onnx.load(str(out))
    assert model.graph.input[0].name == "x"


def test_onnx_missing_is_a_clear_error(small_model, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *a, **k):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'", name="onnxscript")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ExportError, match="onnxscript is missing"):
        export_model(small_model, str(tmp_path / "m.onnx"), "onnx", input_shape=(3, 32, 32))


def test_cli_export_pt2_with_checkpoint(tmp_path):
    spec_file = tmp_path / "small.yaml"
    spec_file.write_text(SMALL_YAML)
    model = lower(check_spec(str(spec_file)))
    ckpt = tmp_path / "w.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "m.pt2"
    res = CliRunner().invoke(main, ["export", str(spec_file), "--format", "pt2",
                                    "--checkpoint", str(ckpt), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output and out.exists()
    # The exported program carries the checkpoint's weights.
    x = torch.randn(1, 3, 32, 32)
    assert_close(torch.export.load(str(out)).module()(x), model.eval()(x), k=K, steps=STEPS)


def test_cli_export_errors(tmp_path):
    spec_file = tmp_path / "small.yaml"
    spec_file.write_text(SMALL_YAML)
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(spec_file), "--format", "pt2",
                               "--checkpoint", str(tmp_path / "none.pt"), "-o",
                               str(tmp_path / "m.pt2")])
    assert res.exit_code == 2 and "no such checkpoint" in res.stderr
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint")
    res = runner.invoke(main, ["export", str(spec_file), "--format", "pt2",
                               "--checkpoint", str(corrupt), "-o", str(tmp_path / "m.pt2")])
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL_YAML.replace("width: 32", "width: -1"))
    res = runner.invoke(main, ["export", str(bad), "--format", "pt2", "-o",
                               str(tmp_path / "m.pt2")])
    assert res.exit_code == 2 and "error" in res.stderr
