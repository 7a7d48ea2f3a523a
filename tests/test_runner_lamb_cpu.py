"""mfdsl.runner.lamb_cpu: the CPU LAMB kernel FusedLamb takes, when it takes it, and how it
is built (tests/test_runner_lamb.py holds both LAMBs to timm's update)."""
from __future__ import annotations

import copy
import os
import stat
import subprocess
import sys
from typing import Dict, List

import pytest
import torch
import torch.nn as nn

from mfdsl.runner import lamb as lamb_module, lamb_cpu
from mfdsl.runner.lamb import ForeachLamb, FusedLamb


def _groups(model: nn.Module, wd: float = 0.05) -> List[Dict]:
    ps = [p for p in model.parameters() if p.requires_grad]
    return [dict(params=[p for p in ps if p.ndim > 1], weight_decay=wd),
            dict(params=[p for p in ps if p.ndim <= 1], weight_decay=0.0)]


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int = 0,
           scale: float = 10.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in model.parameters():
            # the gradient laid out as the parameter, as autograd lays it out
            p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(
                p.dtype).to(memory_format=_format(p))
        opt.step()


def _format(p: torch.Tensor) -> torch.memory_format:
    if p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _convnet(dtype: torch.dtype = torch.float32, channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(1, 16), nn.Conv2d(16, 8, 1),
                        nn.Flatten(), nn.Linear(8, 4)).to(dtype)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _max_rel(a: nn.Module, b: nn.Module) -> float:
    with torch.no_grad():
        return max(float((x - y).abs().max() / x.abs().max())
                   for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_cpu_tensors_take_the_kernel_and_match_the_foreach_form(dtype, channels_last):
    """Dense CPU float tensors in any memory order (channels-last conv weights too) take
    the kernel; the result is ForeachLamb's to rounding."""
    a, b = _convnet(dtype, channels_last), _convnet(dtype, channels_last)
    if channels_last:
        assert not a[0].weight.is_contiguous() and lamb_cpu.dense(a[0].weight)
    fused, foreach = FusedLamb(_groups(a), lr=1e-2), ForeachLamb(_groups(b), lr=1e-2)
    _steps(a, fused, 30)
    _steps(b, foreach, 30)
    assert fused.kernel_path == "cpu kernel"
    # tolerance: as tests/test_runner_lamb.py against timm (float32 measured ~3e-7)
    assert _max_rel(a, b) <= (1e-5 if dtype == torch.float32 else 1e-12)


def test_the_result_does_not_depend_on_the_thread_count():
    """Partial sums are per block, added in block order: 1 and 4 threads give the same bits
    (a tensor of 2^20 values is cut among the threads)."""
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 4):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(1024, 1024), nn.LayerNorm(1024))
            assert lamb_cpu.threads_for(1024 * 1024) == min(n, 4)
            opt = FusedLamb(_groups(model), lr=1e-2)
            _steps(model, opt, 3)
            assert opt.kernel_path == "cpu kernel"
            results.append([p.detach().clone() for p in model.parameters()])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(x, y) for x, y in zip(*results))


def _odd_layouts() -> Dict[str, nn.Module]:
    """Models the kernel cannot walk, each with the reason."""
    torch.manual_seed(0)
    strided = nn.Linear(4, 4)
    strided.weight = nn.Parameter(torch.randn(4, 8)[:, ::2])  # gaps between elements
    bf16 = nn.Linear(4, 4).to(torch.bfloat16)
    mixed = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).double())  # one group, 2 dtypes
    return {"strided": strided, "bfloat16": bf16, "mixed_dtypes": mixed}


@pytest.mark.parametrize("case", ["strided", "bfloat16", "mixed_dtypes"])
def test_what_the_kernel_cannot_walk_takes_the_foreach_form(case):
    model = _odd_layouts()[case]
    twin = copy.deepcopy(model)
    fused, foreach = FusedLamb(_groups(model), lr=1e-2), ForeachLamb(_groups(twin), lr=1e-2)
    _steps(model, fused, 5)
    _steps(twin, foreach, 5)
    assert fused.kernel_path == "foreach"
    assert all(torch.equal(x, y) for x, y in zip(model.parameters(), twin.parameters()))


def test_a_gradient_laid_out_unlike_its_parameter_takes_the_foreach_form():
    model = _convnet(channels_last=True)
    opt = FusedLamb(_groups(model), lr=1e-2)
    for p in model.parameters():
        p.grad = torch.randn(p.shape)  # contiguous, the weights channels-last
    opt.step()
    assert opt.kernel_path == "foreach"


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """lamb_cpu as a new process finds it, with its cache under tmp_path."""
    monkeypatch.setenv("MFDSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lamb_cpu, "_loaded", None)
    monkeypatch.setattr(lamb_cpu, "_failure", None)
    return tmp_path / "cache" / "kernels"


def test_the_kernel_is_built_once_into_the_cache(fresh_kernel, monkeypatch):
    assert lamb_cpu.kernel() is not None
    built = list(fresh_kernel.iterdir())
    assert len(built) == 1 and built[0].name.startswith("lamb_cpu-")  # no temporary left
    assert built[0].name.endswith(".so")
    mode = stat.S_IMODE(built[0].stat().st_mode)
    assert mode == 0o666 & ~_umask()
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(lamb_cpu, "_loaded", None)  # the next process loads, not builds
    assert lamb_cpu.kernel() is not None
    assert [p.stat().st_mtime_ns for p in fresh_kernel.iterdir()] == [mtime]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_changed_source_or_flags_get_their_own_build(fresh_kernel, monkeypatch):
    cc = lamb_cpu._compiler()
    assert cc is not None
    first = lamb_cpu.library_path(cc)
    monkeypatch.setattr(lamb_cpu, "_flags", lambda: ["-O2", "-shared", "-fPIC", "-pthread"])
    assert lamb_cpu.library_path(cc) != first


def _linear_step(opt_cls: type) -> torch.optim.Optimizer:
    model = nn.Linear(4, 4)
    opt = opt_cls(_groups(model), lr=1e-2)
    _steps(model, opt, 2)
    return opt


def test_no_compiler_means_the_foreach_form_and_a_reason(fresh_kernel, monkeypatch):
    monkeypatch.setattr(lamb_cpu.shutil, "which", lambda name: None)
    monkeypatch.setattr(lamb_module, "_warned", [])
    with pytest.warns(RuntimeWarning, match="multi-tensor form on the CPU.*no C compiler"):
        assert _linear_step(FusedLamb).kernel_path == "foreach"
    assert "no C compiler" in lamb_cpu.unavailable_reason()
    assert not fresh_kernel.exists()


def test_a_failing_build_leaves_no_file_and_means_the_foreach_form(fresh_kernel,
                                                                   monkeypatch):
    monkeypatch.setenv("CC", "false")  # found, and fails
    monkeypatch.setattr(lamb_module, "_warned", [])
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert _linear_step(FusedLamb).kernel_path == "foreach"
    assert "could not be built" in lamb_cpu.unavailable_reason()
    assert list(fresh_kernel.iterdir()) == []  # the temporary file is gone too


def test_a_damaged_cached_build_is_built_again(fresh_kernel):
    assert lamb_cpu.kernel() is not None
    (built,) = fresh_kernel.iterdir()
    # Truncated, as a copy cut short would be. A new file renamed over it: this process
    # has the old one mapped, and truncating a mapped file in place would SIGBUS it.
    damaged = built.with_suffix(".damaged")
    damaged.write_bytes(built.read_bytes()[:100])
    os.replace(damaged, built)
    # The next process (this one holds the library loaded already).
    out = subprocess.run(
        [sys.executable, "-c", "from mfdsl.runner import lamb_cpu as k; "
         "print(k.kernel() is not None, k.unavailable_reason())"],
        capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert out.stdout.split() == ["True", "None"], out.stderr
    assert [p.name for p in fresh_kernel.iterdir()] == [built.name]
    assert built.stat().st_size > 1000


def test_a_cached_build_others_may_write_is_not_loaded(fresh_kernel, monkeypatch):
    assert lamb_cpu.kernel() is not None
    (built,) = fresh_kernel.iterdir()
    built.chmod(0o666)  # anyone may replace its code
    monkeypatch.setattr(lamb_cpu, "_loaded", None)
    with pytest.raises(RuntimeError, match="not this user's own file"):
        lamb_cpu._load(built)
    # kernel() builds it again as this user's own file (an atomic rename over it)
    assert lamb_cpu.kernel() is not None
    assert stat.S_IMODE(built.stat().st_mode) & 0o022 == 0


def test_sum_of_squares_is_exact_in_float64():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, generator=gen, dtype=torch.float64) for n in (1, 7, 40000, 3)]
    want = sum(float(x.square().sum()) for x in xs)
    # tolerance: two float64 sums of 40011 positive terms in different orders (~1e-16 each)
    assert lamb_cpu.sum_of_squares(xs) == pytest.approx(want, rel=1e-14)


def test_the_trust_ratios_are_the_norms_ratio():
    """The kernel's per-tensor ratios are |p| / |u| with u timm's update (clipped gradient,
    bias-corrected moments), computed here in float64 from the same state."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(3, 5), (40000,), (2, 2, 3, 3)]
    ps = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    gs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    ms = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    vs = [torch.rand(s, generator=gen, dtype=torch.float64) for s in shapes]
    b1, b2, eps, wd, step = 0.9, 0.999, 1e-6, 0.05, 2.0
    sumsq = sum(float(g.square().sum()) for g in gs)
    clip = max(1.0, sumsq ** 0.5 / 0.5)
    want = []
    for p, g, m, v in zip(ps, gs, ms, vs):
        m2 = m + (1 - b1) * (g / clip - m)
        v2 = b2 * v + (1 - b2) * (g / clip) ** 2
        u = m2 / (1 - b1 ** step) / (v2.sqrt() / (1 - b2 ** step) ** 0.5 + eps) + wd * p
        want.append(float(p.norm() / u.norm()))
    got = lamb_cpu.lamb_group(
        ps, gs, ms, vs, step=torch.tensor(step), found_inf=None, grad_scale=None,
        sumsq=sumsq, max_grad_norm=0.5, beta1=b1, beta2=b2, bias_correction=True, eps=eps,
        weight_decay=wd, lr=0.0, adapt=True, trust_clip=False)
    # tolerance: float64 elementwise work and two sums per tensor, in other orders (~1e-15)
    assert got == pytest.approx(want, rel=1e-12)
    assert lamb_cpu.lamb_group(
        ps, gs, ms, vs, step=torch.tensor(step), found_inf=torch.tensor(1.0),
        grad_scale=None, sumsq=sumsq, max_grad_norm=0.5, beta1=b1, beta2=b2,
        bias_correction=True, eps=eps, weight_decay=wd, lr=0.0, adapt=True,
        trust_clip=False) is None
