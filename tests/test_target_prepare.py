"""compile_for_target: outputs match the eager model, the state dict is the original's,
options are validated, and the benchmark report is well formed."""
from __future__ import annotations

import copy

import pytest
import torch

from mfdsl.api import build_model
from mfdsl.ir import ModelSpec, StageSpec, call, default_downsample
from mfdsl.target import TargetError, compile_for_target
from mfdsl.bench.throughput import (markdown_table, mfu_peak, report_header, run_benchmark,
                                     timm_name_for)
from tolerances import assert_close


# The tiny model in fp32: the longest reduction is the head MLP's hidden width (4 x 32),
# a forward chains ~8 products (tests/tolerances.py).
K, STEPS = 128, 8


def tiny_spec() -> ModelSpec:
    stages = [
        StageSpec(depth=1, width=16, mixers=[call("sepconv", kernel=3)], mlp_ratio=2.0,
                  res_scale=1.0),
        StageSpec(depth=1, width=32, mixers=[call("attention", head_dim=8)], mlp_ratio=2.0,
                  layer_scale=0.5, downsample=default_downsample()),
    ]
    return ModelSpec(name="tiny", img_size=(32, 32), num_classes=7, stages=stages,
                     head=call("mlp"))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(tiny_spec()).eval()
    with torch.no_grad():  # move scales off their init so every parameter matters
        for p in m.parameters():
            if p.ndim <= 1:
                p.add_(0.2 * torch.randn_like(p))
    return m


@pytest.mark.slow
def test_cpu_eager_matches_and_keeps_state_dict() -> None:
    model = _model()
    ref_sd = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    opt = compile_for_target(copy.deepcopy(model), "cpu", mode="eager")
    summary = opt.summary
    with torch.no_grad():
        out = opt(x)
    assert_close(out, ref, k=K, steps=STEPS)
    sd = opt.state_dict()
    assert list(sd) == list(ref_sd)
    for k in sd:
        # tolerance: none: the same optimizer state, compared exactly
        torch.testing.assert_close(sd[k], ref_sd[k], rtol=0, atol=0)
    assert summary["mode"] == "eager" and summary["target"] == "cpu"
    assert any("channels_last" in a for a in summary["applied"])
    # checkpoints move between the wrapper and a plain model
    fresh = build_model(tiny_spec())
    fresh.load_state_dict(opt.state_dict())
    opt.load_state_dict(model.state_dict())
    # attributes of the inner model stay reachable
    assert opt.pretrained_cfg["num_classes"] == 7
    assert opt.forward_features(x).shape == (2, 32, 4, 4)


def test_spec_input_and_fold() -> None:
    opt = compile_for_target(tiny_spec(), "cpu", mode="eager", fold=True)
    assert opt.summary["fold"] and "fold_for_inference" in opt.summary["applied"][0]
    assert not opt.training
    out = opt(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 7)


@pytest.mark.slow
def test_bf16_autocast_on_cpu_close() -> None:
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = compile_for_target(copy.deepcopy(model), "cpu", dtype="bf16", mode="eager")(x)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), ref, dtype=torch.bfloat16, accumulate=torch.float32, k=K,
                 steps=STEPS)


@pytest.mark.parametrize("kw, msg", [
    (dict(target="tpu"), "unknown target"),
    (dict(dtype="int8"), "unknown dtype"),
    (dict(mode="fast"), "unknown mode"),
])
def test_bad_options(kw, msg) -> None:
    with pytest.raises(TargetError, match=msg):
        compile_for_target(_model(), **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(TargetError, match="no CUDA device"):
        compile_for_target(_model(), "cuda")


@pytest.mark.slow  # torch.compile of even a tiny model takes ~30 s on 2 cores
def test_compiled_cpu_matches_eager() -> None:
    """The one compiled test: the tiny model through torch.compile (default mode)."""
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    opt = compile_for_target(copy.deepcopy(model), "cpu", mode="default")
    with torch.no_grad():
        out = opt(x)
    assert_close(out, ref, k=K, steps=STEPS)
    assert list(opt.state_dict()) == list(model.state_dict())


def test_benchmark_report_tiny() -> None:
    report = run_benchmark(lambda: build_model(tiny_spec()), "tiny", img_size=(32, 32),
                           num_classes=7, batch=2, rounds=2, iters=1, warmup=1)
    assert report["timm_model"] is None  # timm has no "tiny": mfdsl only
    rows = {(r["impl"], r["mode"], r["task"]): r for r in report["results"]}
    assert set(rows) == {("mfdsl", "eager", "infer"), ("mfdsl", "eager", "train")}
    for r in rows.values():
        assert r["img_s"] > 0 and len(r["img_s_all"]) == 2
    table = markdown_table(report)
    assert table.count("\n") == 3 and "| infer | eager |" in table
    assert report["machine"]["torch"] == torch.__version__


@pytest.mark.slow
def test_benchmark_mfu_on_cpu_is_against_a_measured_gemm() -> None:
    """MFU on every device: on a CPU against the matrix products measured here, in the
    benchmark's dtype; a given peak wins; model FLOPs are 2x / 6x MACs per image. The
    peaks are measured within small time budgets (that they keep them on a slow CPU is
    the next test's)."""
    macs = 1_000_000
    report = run_benchmark(lambda: build_model(tiny_spec()), "tiny", img_size=(32, 32),
                           num_classes=7, batch=2, rounds=1, iters=1, warmup=1, macs=macs,
                           memory=False, peak_budget_s=0.5)
    assert report["peak_source"].startswith("measured fp32 GEMM / 1x1 conv, n=")
    assert report["peak_tflops"] > 0
    for r in report["results"]:
        factor = 6 if r["task"] == "train" else 2
        flops = macs * factor * r["img_s"]
        assert r["mfu"] == pytest.approx(flops / (report["peak_tflops"] * 1e12))
    table = markdown_table(report)
    assert "MFU mfdsl" in table.splitlines()[0]
    assert "measured fp32 GEMM / 1x1 conv, n=" in report_header(report)
    assert mfu_peak("cpu", "bf16", 2.5) == (2.5, "given")
    assert mfu_peak("cpu", "bf16", budget_s=0.5)[1].startswith("measured bf16 GEMM / 1x1 conv")


class _SlowMatmulClock:
    """A stand-in for ``time`` in mfdsl.bench.throughput whose clock moves only by the
    matrix products, as if this CPU multiplied at ``flops_per_s`` (1.5 GFLOP/s: bf16 on an
    AVX2-only CPU, where a 2048^3 product takes 11 s)."""

    def __init__(self, monkeypatch, flops_per_s: float) -> None:
        import mfdsl.bench.throughput as tp

        self.now, self.flops_per_s, self.sizes = 0.0, flops_per_s, []
        monkeypatch.setattr(tp, "time", self)
        mm, conv = torch.mm, torch.nn.functional.conv2d
        monkeypatch.setattr(torch, "mm", lambda a, b: self._product(a.shape[0], mm, a[:1], b))
        monkeypatch.setattr(torch.nn.functional, "conv2d",
                            lambda x, w: self._product(w.shape[0], conv, x[..., :1, :1], w))

    def _product(self, n: int, real, *small):
        self.sizes.append(n)
        self.now += 2 * n ** 3 / self.flops_per_s
        return real(*small)  # a sliver of the real product: the test costs nothing

    def perf_counter(self) -> float:
        return self.now


@pytest.mark.parametrize("flops_per_s", [1.5e9, 3e7, 1e15])
def test_the_measured_peak_keeps_its_time_budget_on_any_cpu(monkeypatch, flops_per_s):
    """The MFU peak is sized by a time budget, not a fixed n: on a CPU multiplying bf16 at
    1.5 GFLOP/s (AVX2, no native bf16) it used to run 22 products of 2048^3, ~250 s; now
    it stays within its budget at any speed, stops growing at 2048 on a fast one, and
    still reports the speed the products ran at."""
    from mfdsl.bench.throughput import PEAK_BUDGET_S, PEAK_MAX_N, PEAK_ROUNDS

    clock = _SlowMatmulClock(monkeypatch, flops_per_s)
    tflops, source = mfu_peak("cpu", "bf16")
    assert clock.now <= PEAK_BUDGET_S, (clock.now, max(clock.sizes))
    assert tflops == pytest.approx(flops_per_s / 1e12)
    n = int(source.rsplit("n=", 1)[1])
    assert n == max(clock.sizes) and (n == PEAK_MAX_N) == (flops_per_s > 1e12)
    assert clock.sizes.count(n) >= 4  # the size reached is timed more than once
    assert clock.sizes.count(n) <= 2 * (1 + PEAK_ROUNDS)


def test_compile_leaves_mfdsls_layout_alone_and_a_foreign_models_to_inductor(monkeypatch):
    """mfdsl lays out memory itself (channels_last): inductor's layout optimisation, which
    would treat a (B, H, W, C) tensor's H as channels, is off; a model timed as its authors
    ship it keeps inductor's defaults; the mode's own options are kept either way."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: seen.append(kw) or m)
    compile_for_target(_model(), "cpu", mode="default")
    compile_for_target(_model(), "cpu", mode="max-autotune", channels_last=False)
    compile_for_target(_model(), "cpu", mode="max-autotune")
    assert seen[0::2] == seen[1::2]  # training and evaluation callables alike
    seen = seen[0::2]
    assert seen[0]["options"] == {"layout_optimization": False}
    assert seen[1]["options"]["max_autotune"] is True
    assert "layout_optimization" not in seen[1]["options"]
    assert seen[2]["options"]["max_autotune"] is True
    assert seen[2]["options"]["layout_optimization"] is False
    assert "mode" not in seen[0]  # torch.compile takes mode or options, not both


def test_training_and_evaluation_compile_separately(monkeypatch):
    """Evaluation has a compiled callable (and code object) of its own: through the
    training one, its no_grad guard would recompile the training frame."""
    from mfdsl.target.prepare import Inference

    seen = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: seen.append(m) or m)
    model = _model()
    compile_for_target(model, "cpu", mode="default")
    assert seen[0] is model and isinstance(seen[1], Inference) and seen[1].model is model


def test_timm_name_mapping() -> None:
    pytest.importorskip("timm")
    assert timm_name_for("caformer_s18") == "caformer_s18"
    assert timm_name_for("identityformer_s12") is None  # timm lacks it


def test_channels_last_converts_conv_weights_only() -> None:
    """global_filter's 4-d complex weight keeps its layout (view_as_complex needs a unit
    last stride); every conv weight goes channels-last; the model still runs."""
    from mfdsl.layers.mixers import GlobalFilter

    spec = ModelSpec(name="gf", img_size=(32, 32), num_classes=3, stages=[
        StageSpec(depth=1, width=16, mixers=[call("global_filter")]),
        StageSpec(depth=1, width=32, mixers=[call("dwconv", kernel=3)],
                  downsample=default_downsample())])
    opt = compile_for_target(build_model(spec), "cpu", dtype="bf16", mode="eager")
    gf = [m for m in opt.modules() if isinstance(m, GlobalFilter)]
    assert gf and all(m.complex_weight.is_contiguous() for m in gf)
    convs = [m for m in opt.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last)
                         for c in convs)
    out = opt.train()(torch.randn(2, 3, 32, 32))
    out.float().sum().backward()


def test_unknown_device_is_a_target_error() -> None:
    with pytest.raises(TargetError, match="unknown target"):
        compile_for_target(_model(), "tpu")
    with pytest.raises(TargetError, match="variants"):
        compile_for_target(_model(), "cpu", variants="fastest")


def test_variants_follow_the_mode() -> None:
    from mfdsl.layers.variants import VARIANTS_FOR, variants_in_use

    eager = compile_for_target(_model(), "cpu", mode="eager")
    assert set(variants_in_use(eager.model)) <= set(VARIANTS_FOR[("cpu", False)])
    assert "mlp_starrelu_into_fc2" in variants_in_use(eager.model)
    ref = compile_for_target(_model(), "cpu", mode="eager", variants="reference")
    assert variants_in_use(ref.model) == {}
    assert ref.summary["variants"] == []


def test_cuda_graph_mode_is_refused_off_cuda():
    with pytest.raises(TargetError, match="reduce-overhead .*needs target cuda"):
        compile_for_target(_model(), "cpu", mode="reduce-overhead")
