"""One optimizer step over a model's parameters (caformer_s18's by default): timm's Lamb,
mfdsl's FusedLamb (what ``optimizer lamb`` builds: the CPU kernel here), ForeachLamb (its
multi-tensor form) and torch's fused AdamW.

    python benchmarks/bench_lamb.py --threads 1 --rounds 15
    python benchmarks/bench_lamb.py --device cuda
    python benchmarks/bench_lamb.py --spec specs/poolformerv2_s12.mf

The model is built from --spec (mfdsl.api.build_model) and given random gradients once;
each optimizer gets the runner's two parameter groups (weight decay 0.05 on
matrices/kernels, none on 1-D params) and its own copy of the weights and gradients
(FusedLamb and ForeachLamb write into theirs: the update direction, the clipped gradient;
the time does not depend on the values). After two warm-up steps each, the four are timed
in interleaved rounds (timm, FusedLamb, ForeachLamb, AdamW, timm, ...) and the median per
optimizer is printed with the ratio to timm's Lamb. The operations one step issues are
counted with torch.profiler (top-level events: no parent event; FusedLamb's kernel calls
are record_function events). The JSON keeps every round and the machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from mfdsl.api import build_model  # noqa: E402
from mfdsl.bench.throughput import machine_info  # noqa: E402
from mfdsl.runner.lamb import ForeachLamb, FusedLamb  # noqa: E402
from mfdsl.runner.optim import param_groups  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _top_level_ops(opt: torch.optim.Optimizer) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        opt.step()
    events = [e for e in prof.events() if e.cpu_parent is None]
    # The step's own record_function event holds the rest: count its children.
    steps = [e for e in events if e.name.startswith("Optimizer.step")]
    return sum(len(e.cpu_children) for e in steps) + len(events) - len(steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--spec", default=os.path.join(ROOT, "specs", "caformer_s18.mf"),
                    help="the model whose parameters are stepped (default: caformer_s18)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from timm.optim import Lamb

    base = build_model(args.spec).to(args.device)
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen).to(args.device) for p in base.parameters()]
    makers = {
        "timm Lamb": lambda ps: Lamb(ps, lr=1e-3),
        "FusedLamb": lambda ps: FusedLamb(ps, lr=1e-3),
        "ForeachLamb": lambda ps: ForeachLamb(ps, lr=1e-3),
        "fused AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
    }
    opts = {}
    for name, make in makers.items():
        model = copy.deepcopy(base)
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        opts[name] = make(param_groups(model, 0.05))
        for _ in range(2):
            opts[name].step()
    _sync(args.device)
    times = {name: [] for name in opts}
    for _ in range(args.rounds):
        for name, opt in opts.items():
            _sync(args.device)
            t = time.perf_counter()
            opt.step()
            _sync(args.device)
            times[name].append(time.perf_counter() - t)
    n_tensors = sum(1 for p in base.parameters() if p.requires_grad)
    ops = {name: _top_level_ops(opt) for name, opt in opts.items()}
    ref = statistics.median(times["timm Lamb"])
    print(f"{os.path.basename(args.spec)}: {n_tensors} tensors, "
          f"{sum(p.numel() for p in base.parameters())} "
          f"params, {args.device}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"{'optimizer':<12} {'median ms':>10} {'timm / this':>12} {'top-level ops':>14}")
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = dict(median_ms=med * 1e3, rounds_ms=[t * 1e3 for t in ts], ops=ops[name])
        print(f"{name:<12} {med * 1e3:>10.1f} {ref / med:>11.2f}x {ops[name]:>14}")
    fused = opts["FusedLamb"]
    out["machine"] = dict(
        machine_info(args.device), platform=platform.platform(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        load_average=os.getloadavg(), fused_lamb_path=fused.kernel_path)
    print(f"machine: {out['machine']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
