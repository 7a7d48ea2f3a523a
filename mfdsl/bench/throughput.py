"""Throughput benchmark: mfdsl's model against timm's same model, side by side.

Each case (implementation x eager/compiled) is built once, warmed up, then measured in
interleaved rounds (A, B, A, B, ...) so that a noisy, shared machine slows every case
alike; the reported figure is the median over rounds. Memory is measured in a separate
step per case after the timing rounds:

* CUDA: ``torch.cuda.max_memory_allocated`` over one step (weights included);
* CPU: the growth of the process's peak resident set over one step (Linux
  ``/proc/self/clear_refs`` resets the peak; glibc is told to return large blocks to the
  OS at once so freed activations do not hide in the heap). Weights already resident are
  not counted.

MFU = model FLOPs per second / a peak, with model FLOPs = 2 * MACs per image for
inference and 6 * MACs for a training step (forward + backward). The peak is, in this
order: the caller's ``peak_tflops``; on a GPU of known name computing in bf16 / fp16,
the data sheet's dense tensor-core peak; otherwise the matrix-product throughput measured
on this machine in the compute dtype (:func:`measured_matmul_tflops`), so that on a CPU
an MFU near 100% says the step runs as fast as this machine multiplies large matrices.

That measurement is sized by a time budget, not a fixed n: a CPU without native bf16
(AVX2 only) multiplies bf16 at ~1.5 GFLOP/s, where one 2048^3 product takes ~11 s and the
old fixed 22 products ran for minutes. n doubles from 64 while the next size's product
(8x the work) would still fit in a fraction of the budget (or until n = 2048, where large
products reach their plateau), then the products are timed until the budget is spent.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets), matched by substring of
# torch.cuda.get_device_name(). Override with peak_tflops.
GPU_BF16_PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
    ("L40S", 362.0), ("A10G", 70.0), ("RTX 4090", 165.0), ("RTX 5090", 209.0),
)


@dataclass
class Result:
    impl: str  # "mfdsl" | "timm"
    mode: str  # "eager" | "compiled"
    task: str  # "infer" | "train"
    img_s: float  # median images / second
    img_s_all: List[float] = field(default_factory=list)
    warmup_s: float = 0.0  # first calls (compilation for compiled cases)
    peak_mib: Optional[float] = None
    mfu: Optional[float] = None


def machine_info(device: str) -> Dict[str, Any]:
    """CPU model, cores, GPU, library versions: what a reader needs to compare numbers."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, Any] = {
        "cpu": cpu,
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = None
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def gpu_peak_tflops(name: str) -> Optional[float]:
    for key, peak in GPU_BF16_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


# The matrix-product peak's time budget (seconds, allocation and warm-up included), the
# largest n it grows to, and the share of the budget one product of the chosen size may
# take (growth costs ~4.6x that: two warm and two timed calls per size, a geometric sum).
PEAK_BUDGET_S = 3.0
PEAK_MAX_N = 2048
PEAK_PRODUCT_SHARE = 1 / 8
PEAK_ROUNDS = 5  # timings per product once the size is reached, budget allowing


def _products(device: str, dt: torch.dtype, n: int) -> Tuple[Callable[[], Any], ...]:
    """An n x n x n product as a GEMM and as a channels-last 1x1 convolution."""
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    img = a.t().reshape(1, n, 32, n // 32).contiguous(memory_format=torch.channels_last)
    kernel = b[:, :, None, None].contiguous(memory_format=torch.channels_last)
    return (lambda: torch.mm(a, b)), (lambda: F.conv2d(img, kernel))


def measured_matmul_tflops(device: str, dtype: str, budget_s: float = PEAK_BUDGET_S,
                           max_n: int = PEAK_MAX_N) -> Tuple[float, int]:
    """(TFLOP/s, n): the dense matrix-product throughput of this machine, the best timing
    of an n x n x n product in ``dtype`` on ``device`` (torch's current CPU threads), taken
    as a GEMM and as a channels-last 1x1 convolution (models run both, and on a CPU either
    may be the faster kernel).

    The whole measurement takes about ``budget_s`` whatever the CPU: n doubles from 64
    while a product of the next size (8x the work) would take at most
    ``PEAK_PRODUCT_SHARE`` of the budget, and stops at ``max_n``; the products of the size
    reached are then timed again while the budget lasts (every call is checked against it
    before it starts), at most ``PEAK_ROUNDS`` times. Only a CPU so slow that one 64^3 product overruns the budget by
    itself runs over."""
    from ..target.prepare import DTYPES

    dt = DTYPES[dtype]
    start = time.perf_counter()
    one_call = budget_s * PEAK_PRODUCT_SHARE
    n = 64
    with torch.inference_mode():
        while True:
            fns = _products(device, dt, n)
            times = []
            for fn in fns:
                fn()  # the first call picks kernels and allocates
                times.append(seconds_per_call(fn, 1, device))
            if n * 2 > max_n or 8 * max(times) > one_call:
                break
            n *= 2
        best = min(times)
        slowest = max(times)
        for _ in range(PEAK_ROUNDS - 1):  # the growth's last timing was the first round
            if time.perf_counter() - start + 2 * slowest > budget_s:
                break
            for fn in fns:
                best = min(best, seconds_per_call(fn, 1, device))
    return 2 * n ** 3 / best / 1e12, n


def mfu_peak(device: str, dtype: str, override: Optional[float] = None,
             budget_s: float = PEAK_BUDGET_S) -> Tuple[float, str]:
    """(peak TFLOP/s, where it comes from) for MFU; see the module's docstring.
    ``budget_s``: the wall time a measured peak may take."""
    if override:
        return override, "given"
    if device == "cuda" and dtype in ("bf16", "fp16"):
        sheet = gpu_peak_tflops(torch.cuda.get_device_name())
        if sheet:
            return sheet, "data sheet, dense bf16/fp16"
    tflops, n = measured_matmul_tflops(device, dtype, budget_s)
    return tflops, f"measured {dtype} GEMM / 1x1 conv, n={n}"


def timm_name_for(spec_name: str) -> Optional[str]:
    """timm's model of the same name, if timm has one (it lacks identity/randformer)."""
    try:
        import timm
    except ImportError:
        return None
    base = spec_name.split(".")[0]
    return base if timm.is_model(base) else None


def _shapes(model: nn.Module) -> List[tuple]:
    """Sorted parameter shapes, equal for the same architecture whatever its key names
    (a 1x1 convolution's kernel counts as the linear layer it is)."""
    shapes = []
    for p in model.parameters():
        shape = tuple(p.shape)
        while len(shape) > 2 and shape[-2:] == (1, 1):
            shape = shape[:-2]
        shapes.append(shape)
    return sorted(shapes)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], Any], iters: int, device: str) -> float:
    """Wall seconds per call of ``fn`` over ``iters`` calls, the device synchronised around."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def interleaved_ms(fns: Dict[str, Callable[[], Any]], rounds: int, iters: int,
                   device: str) -> Dict[str, List[float]]:
    """Milliseconds per call of each function, measured in interleaved rounds (A, B, A, B,
    ...) so that a noisy machine slows every case alike; one value per round."""
    ms: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            ms[k].append(seconds_per_call(fn, iters, device) * 1e3)
    return ms


class _Case:
    """One model in one mode, with its step functions."""

    def __init__(self, impl: str, mode: str, model: nn.Module, device: str, dtype: str,
                 batch: int, img_size, num_classes: int, in_chans: int) -> None:
        self.impl, self.mode, self.device, self.dtype = impl, mode, device, dtype
        self.model = model
        self.x = torch.randn(batch, in_chans, *img_size, device=device)
        self.y = torch.randint(0, num_classes, (batch,), device=device)
        params = [p for p in model.parameters() if p.requires_grad]
        # foreach AdamW on every device: the optimizer is part of a real training step
        self.opt = torch.optim.AdamW(params, lr=1e-4, foreach=True)

    def step(self, task: str) -> None:
        if task == "infer":
            self.model.eval()
            with torch.inference_mode():
                self.model(self.x)
        else:
            self.model.train()
            loss = F.cross_entropy(self.model(self.x).float(), self.y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def time(self, task: str, iters: int) -> float:
        return seconds_per_call(lambda: self.step(task), iters, self.device)


@contextlib.contextmanager
def _cpu_peak_rss():
    """Yields a dict that gets ``peak_mib``: peak RSS growth inside the block (Linux)."""
    out: Dict[str, Optional[float]] = {"peak_mib": None}

    def status(key: str) -> Optional[int]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])  # kB
        except OSError:
            return None
        return None

    try:  # hand freed heap pages back first, so the step's allocations show in RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        ok = True
    except OSError:
        ok = False
    base = status("VmRSS")
    yield out
    peak = status("VmHWM")
    if ok and base is not None and peak is not None:
        out["peak_mib"] = max(0, peak - base) / 1024.0


def _glibc_release_freed_memory() -> None:
    # Allocations >= 64 KiB get their own mapping and go back to the OS when freed, so
    # the peak-RSS probe sees the step's own memory rather than a warm heap.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def run_benchmark(
    build_mfdsl: Callable[[], nn.Module],
    spec_name: str,
    *,
    img_size=(224, 224),
    num_classes: int = 1000,
    in_chans: int = 3,
    device: str = "cpu",
    batch: int = 8,
    tasks: Sequence[str] = ("infer", "train"),
    compile: bool = False,
    eager: bool = True,
    dtype: str = "fp32",
    with_timm: bool = True,
    rounds: int = 5,
    iters: int = 2,
    warmup: int = 2,
    memory: bool = True,
    macs: Optional[int] = None,
    peak_tflops: Optional[float] = None,
    peak_budget_s: float = PEAK_BUDGET_S,
    drop_path_rate: float = 0.0,
    head_dropout: float = 0.0,
    log: Callable[[str], None] = lambda s: None,
) -> Dict[str, Any]:
    """Measure every (implementation, mode, task); returns a JSON-able report.

    ``peak_budget_s``: the wall time the measured MFU peak may take (module docstring).
    ``drop_path_rate`` / ``head_dropout``: the spec's (what ``build_mfdsl`` builds), given
    to timm's twin too, so that both training steps do the same work."""
    from ..target.prepare import compile_for_target

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but no CUDA device is available")
    modes = (["eager"] if eager else []) + (["compiled"] if compile else [])
    if not modes:
        raise ValueError("nothing to measure: enable eager and/or compiled")
    timm_name = timm_name_for(spec_name) if with_timm else None
    builders: Dict[str, Callable[[], nn.Module]] = {"mfdsl": build_mfdsl}
    timm_note = None
    if timm_name is not None:
        import timm

        def build_timm() -> nn.Module:
            return timm.create_model(timm_name, num_classes=num_classes, in_chans=in_chans,
                                     drop_path_rate=drop_path_rate, drop_rate=head_dropout)

        # A spec keeps its name when edited: only a model with the same parameter shapes
        # is a twin; comparing against another architecture would give a false ratio.
        if _shapes(build_mfdsl()) != _shapes(build_timm()):
            timm_note = (f"timm's {timm_name} differs from this spec (parameter shapes); "
                         "not compared")
            log(f"note: {timm_note}")
            timm_name = None
        else:
            builders["timm"] = build_timm
    cases: List[_Case] = []
    results: Dict[tuple, Result] = {}
    for impl, build in builders.items():
        for mode in modes:
            # the same autocast and torch.compile for both; timm's model keeps the NCHW
            # layout it ships with (what its users run), mfdsl's gets its target lowering
            model = compile_for_target(build(), target=device, dtype=dtype,
                                       mode="default" if mode == "compiled" else "eager",
                                       channels_last=impl == "mfdsl")
            case = _Case(impl, mode, model, device, dtype, batch, img_size, num_classes,
                         in_chans)
            for task in tasks:
                t0 = time.perf_counter()
                for _ in range(warmup):
                    case.step(task)
                _sync(device)
                results[(impl, mode, task)] = Result(impl, mode, task, 0.0,
                                                     warmup_s=time.perf_counter() - t0)
                log(f"warm-up {impl} {mode} {task}: {results[(impl, mode, task)].warmup_s:.1f}s")
            cases.append(case)
    for r in range(rounds):
        for task in tasks:
            for case in cases:  # interleaved: A, B, A, B, ...
                sec = case.time(task, iters)
                results[(case.impl, case.mode, task)].img_s_all.append(batch / sec)
        log(f"round {r + 1}/{rounds} done")
    for res in results.values():
        res.img_s = statistics.median(res.img_s_all)
    if memory:
        if device == "cpu":
            _glibc_release_freed_memory()
        for case in cases:
            for task in tasks:
                results[(case.impl, case.mode, task)].peak_mib = _measure_memory(case, task)
    peak, peak_source = (mfu_peak(device, dtype, peak_tflops, peak_budget_s) if macs else (None, None))
    if peak:
        for res in results.values():
            flops = macs * (6 if res.task == "train" else 2) * res.img_s
            res.mfu = flops / (peak * 1e12)
    return {
        "spec": spec_name, "timm_model": timm_name, "timm_note": timm_note,
        "device": device, "dtype": dtype,
        "batch": batch, "rounds": rounds, "iters_per_round": iters, "warmup_steps": warmup,
        "drop_path_rate": drop_path_rate, "head_dropout": head_dropout,
        "macs_per_image": macs, "peak_tflops": peak, "peak_source": peak_source,
        "machine": machine_info(device), "results": [asdict(r) for r in results.values()],
    }


def _measure_memory(case: _Case, task: str) -> Optional[float]:
    if case.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        case.step(task)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2 ** 20
    with _cpu_peak_rss() as out:
        case.step(task)
    return out["peak_mib"]


def markdown_table(report: Dict[str, Any]) -> str:
    """One row per (task, mode): mfdsl and timm img/s, their ratio, memory, MFU."""
    rows = {}
    for r in report["results"]:
        rows.setdefault((r["task"], r["mode"]), {})[r["impl"]] = r
    with_mfu = report.get("peak_tflops") is not None
    head = ["task", "mode", "mfdsl img/s", "timm img/s", "mfdsl/timm",
            "mfdsl peak MiB", "timm peak MiB", "warm-up s (mfdsl/timm)"]
    if with_mfu:
        head += ["MFU mfdsl", "MFU timm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def num(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    for (task, mode), by in rows.items():
        m, t = by.get("mfdsl"), by.get("timm")
        ratio = m["img_s"] / t["img_s"] if (m and t and t["img_s"]) else None
        cells = [task, mode, num(m and m["img_s"]), num(t and t["img_s"]),
                 num(ratio, "{:.2f}x"), num(m and m["peak_mib"], "{:.0f}"),
                 num(t and t["peak_mib"], "{:.0f}"),
                 f"{num(m and m['warmup_s'])} / {num(t and t['warmup_s'])}"]
        if with_mfu:
            cells += [num(m and m["mfu"], "{:.1%}"), num(t and t["mfu"], "{:.1%}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_header(report: Dict[str, Any]) -> str:
    mi = report["machine"]
    where = mi.get("gpu") or mi["cpu"]
    return (f"**{report['spec']}** vs timm `{report['timm_model'] or '(none)'}` on "
            f"{report['device']} ({where}; {mi['cores_available']} cores, "
            f"{mi['torch_threads']} torch threads), batch {report['batch']}, "
            f"{report['dtype']}, median of {report['rounds']} interleaved rounds x "
            f"{report['iters_per_round']} steps; drop path {report.get('drop_path_rate', 0)} "
            f"in both; torch {mi['torch']}, timm {mi['timm']}"
            + (f"; MFU against {report['peak_tflops']:.3g} TFLOP/s ({report['peak_source']})"
               if report.get("peak_tflops") else ""))
