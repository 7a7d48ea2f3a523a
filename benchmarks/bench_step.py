"""The compiled training step, mfdsl against timm, with LAMB on both sides: ms per step,
images/s, MFU and the optimizer's share of the step (docs/benchmarks.md "Training step").

    python benchmarks/bench_step.py caformer_s18 --device cuda --batch 128   # one model
    python benchmarks/bench_step.py --smoke                                  # CPU, tiny

One step is what the runner's step does for one micro-batch: forward under autocast,
cross-entropy, backward, gradient clipping, optimizer step, zero_grad. mfdsl: the zoo
model through ``compile_for_target`` (its speed variants, channels-last) and the runner's
``FusedLamb`` (what ``optimizer lamb`` builds); timm: ``timm.create_model`` compiled the
same way in its own NCHW layout, and ``timm.optim.Lamb``, the recipe's optimizer there.
The optimizer's share is its step timed alone (on the last gradients) over the whole step.
Rounds interleave the two sides.

Each model runs in a child process under ``--budget-s`` (compilation included), so a slow
compilation costs that model, not the session: a model past its budget is recorded as
``{"status": "timeout"}``. ``--smoke``: a two-stage 32x32 model on the CPU for both sides
(no timm twin: the reference side is the same architecture with timm's Lamb), eager unless
``--compile``: the same code, in seconds (tests/test_bench_step.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_MODELS = ("caformer_s18", "convformer_s18", "poolformerv2_s12")
SMOKE = "smoke"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _smoke_spec():
    from mfdsl import ir

    return ir.ModelSpec(
        name=SMOKE, img_size=(32, 32), num_classes=10,
        stages=[ir.StageSpec(depth=1, width=16, mixers=[ir.call("pooling")]),
                ir.StageSpec(depth=1, width=32, downsample=ir.default_downsample(),
                             mixers=[ir.call("pooling")])])


def _side(impl: str, spec: Any, device: str, dtype: str, compiled: bool, lr: float) -> Dict:
    """The model prepared for the device and its LAMB."""
    import torch

    from mfdsl.lower import lower
    from mfdsl.runner.lamb import FusedLamb
    from mfdsl.target import compile_for_target

    if impl == "timm" and spec.name != SMOKE:
        import timm

        from mfdsl.bench.throughput import timm_name_for

        model = timm.create_model(timm_name_for(spec.name), num_classes=spec.num_classes)
    else:
        model = lower(spec, target=device)
    model.train()
    target = compile_for_target(model, target=device, dtype=dtype,
                                mode="default" if compiled else "eager",
                                channels_last=impl == "mfdsl",
                                variants="keep" if impl == "mfdsl" else "reference")
    params = [p for p in model.parameters() if p.requires_grad]
    if impl == "mfdsl":
        opt: torch.optim.Optimizer = FusedLamb(params, lr=lr, weight_decay=0.05)
    else:
        from timm.optim import Lamb

        opt = Lamb(params, lr=lr, weight_decay=0.05)
    return {"model": target, "params": params, "opt": opt}


def _step(side: Dict, x, y) -> None:
    import torch
    import torch.nn.functional as F

    out = side["model"](x)
    F.cross_entropy(out.float(), y).backward()
    torch.nn.utils.clip_grad_norm_(side["params"], 1.0)
    side["opt"].step()
    side["opt"].zero_grad(set_to_none=False)


def measure(name: str, device: str, batch: int, dtype: str, compiled: bool, rounds: int,
            iters: int, warmup: int) -> Dict[str, Any]:
    """One model's record (both sides)."""
    import torch

    from mfdsl.analysis.counting import count_macs_meta
    from mfdsl.api import check_spec
    from mfdsl.bench.throughput import mfu_peak
    from mfdsl.target.compile_counts import CompileCounts

    spec = _smoke_spec() if name == SMOKE else check_spec(
        name if os.path.exists(name) else os.path.join(ROOT, "specs", name + ".mf"))
    torch.manual_seed(0)
    x = torch.randn(batch, spec.in_chans, *spec.img_size, device=device)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)
    sides: Dict[str, Dict] = {}
    compile_s: Dict[str, float] = {}
    for impl in ("mfdsl", "timm"):
        t0 = time.perf_counter()
        sides[impl] = _side(impl, spec, device, dtype, compiled, lr=1e-3)
        for _ in range(warmup):
            _step(sides[impl], x, y)
        _sync(device)
        compile_s[impl] = round(time.perf_counter() - t0, 2)
    warm = CompileCounts.now()
    step_ms: Dict[str, List[float]] = {k: [] for k in sides}
    opt_ms: Dict[str, List[float]] = {k: [] for k in sides}
    for _ in range(rounds):
        for impl, side in sides.items():  # interleaved: drift hits both alike
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                _step(side, x, y)
            _sync(device)
            step_ms[impl].append((time.perf_counter() - t0) * 1e3 / iters)
            t0 = time.perf_counter()
            for _ in range(iters):
                side["opt"].step()
            _sync(device)
            opt_ms[impl].append((time.perf_counter() - t0) * 1e3 / iters)
    after = CompileCounts.now().since(warm)
    macs = count_macs_meta(spec)  # per image, forward
    peak, peak_source = mfu_peak(device, dtype)
    rec: Dict[str, Any] = {"model": name, "status": "ok", "device": device, "batch": batch,
                           "dtype": dtype, "compiled": compiled, "macs_per_image": macs,
                           "peak_tflops": peak, "peak_source": peak_source,
                           "compile_counts_while_timed": after.as_dict()}
    for impl in sides:
        ms = sorted(step_ms[impl])[len(step_ms[impl]) // 2]
        oms = sorted(opt_ms[impl])[len(opt_ms[impl]) // 2]
        flops = 3 * 2 * macs * batch  # forward + backward (2x forward)
        rec[impl] = {"step_ms": round(ms, 3), "img_s": round(batch / ms * 1e3, 1),
                     "optimizer_ms": round(oms, 3), "optimizer_share": round(oms / ms, 3),
                     "mfu": round(flops / (ms / 1e3) / (peak * 1e12), 4) if peak else None,
                     "warmup_s": compile_s[impl], "optimizer": type(sides[impl]["opt"]).__name__}
    rec["mfdsl_vs_timm"] = round(rec["timm"]["step_ms"] / rec["mfdsl"]["step_ms"], 3)
    return rec


def markdown(records: List[Dict[str, Any]]) -> str:
    rows = ["| model | side | ms/step | img/s | MFU | optimizer ms | optimizer share | "
            "warm-up s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if r.get("status") != "ok":
            rows.append(f"| {r['model']} | {r.get('status')} | | | | | | |")
            continue
        for impl in ("mfdsl", "timm"):
            s = r[impl]
            mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] is not None else "n/a"
            rows.append(f"| {r['model']} | {impl} ({s['optimizer']}) | {s['step_ms']:.1f} | "
                        f"{s['img_s']:.0f} | {mfu} | {s['optimizer_ms']:.2f} | "
                        f"{100 * s['optimizer_share']:.0f}% | {s['warmup_s']:.0f} |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=None)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 4 smoke")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--eager", action="store_true", help="no torch.compile")
    ap.add_argument("--compile", action="store_true", help="with --smoke: compile anyway")
    ap.add_argument("--smoke", action="store_true", help="the tiny CPU model (tests)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=160.0,
                    help="seconds per model, compilation included")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_results",
                    help="results folder (default: $OUT, else ./gpu_results)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child
    args = ap.parse_args(argv)
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    models = [SMOKE] if args.smoke else (args.models or list(DEFAULT_MODELS))
    batch = args.batch or (4 if args.smoke else 128)
    compiled = args.compile if args.smoke else not args.eager
    if args.one:  # the child: one model, its record as JSON on the last stdout line
        rec = measure(models[0], device, batch, args.dtype, compiled, args.rounds, args.iters,
                      args.warmup)
        print(json.dumps(rec), flush=True)
        return 0
    os.makedirs(args.out, exist_ok=True)
    records = []
    for name in models:
        cmd = [sys.executable, os.path.abspath(__file__), name, "--one", "--device", device,
               "--batch", str(batch), "--dtype", args.dtype, "--rounds", str(args.rounds),
               "--iters", str(args.iters), "--warmup", str(args.warmup)]
        cmd += ["--smoke"] * args.smoke + ["--compile"] * (args.smoke and args.compile)
        cmd += ["--eager"] * args.eager
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.budget_s)
            if p.returncode == 0:
                rec = json.loads(p.stdout.strip().splitlines()[-1])
            else:
                rec = {"model": name, "status": f"failed (rc {p.returncode})",
                       "stderr": p.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            rec = {"model": name, "status": "timeout", "budget_s": args.budget_s}
        rec["wall_s"] = round(time.perf_counter() - t0, 1)
        records.append(rec)
        print(f"{name}: {rec['status']} in {rec['wall_s']} s", file=sys.stderr, flush=True)
    from mfdsl.bench.throughput import machine_info

    result = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": machine_info(device), "records": records}
    with open(os.path.join(args.out, "step.json"), "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    table = markdown(records)
    with open(os.path.join(args.out, "step.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
