"""Activation memory of one training step with and without gradient checkpointing.

    python benchmarks/bench_grad_checkpointing.py specs/caformer_b36_384.mf --batch 1 64
    python benchmarks/bench_grad_checkpointing.py specs/caformer_s18.mf --batch 1 --cpu

Two measurements:
* analysis (always): mfdsl.analysis.checkpoint_memory on meta tensors, no compute: the bytes
  autograd keeps between forward and backward, and with checkpointing the held bytes plus
  the largest block's recomputed activations (the backward peak's activation part);
* ``--cpu``: one real forward + backward on the CPU per setting, each in a fresh process,
  fp32; the peak resident memory (ru_maxrss) above the resident memory before the step
  (model, gradients and optimizer-free state already allocated), and the step's time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 2 ** 20


def analysis(spec_path: str, batch: int) -> dict:
    import torch

    from mfdsl.analysis.checkpoint_memory import measure_checkpointing
    from mfdsl.lower import lower
    from mfdsl.pipeline import check_spec

    spec = check_spec(spec_path, size_limits=False)
    with torch.device("meta"):
        model = lower(spec)
    x = torch.empty(batch, spec.in_chans, *spec.img_size, device="meta")
    r = measure_checkpointing(model, x, spec.num_classes)
    return dict(spec=spec.name, img=spec.img_size[0], batch=batch,
                plain_mib=r.plain_bytes / MIB, held_mib=r.held_bytes / MIB,
                recompute_mib=r.recompute_bytes / MIB, peak_mib=r.peak_bytes / MIB,
                ratio=r.saving)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_step(spec_path: str, batch: int, ckpt: bool) -> dict:
    """Runs in its own process: one fp32 training step on the CPU."""
    import resource
    import time

    import torch
    import torch.nn.functional as F

    from mfdsl.api import build_model

    torch.manual_seed(0)
    model = build_model(spec_path, check_sizes=False).train()
    model.set_grad_checkpointing(ckpt)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    spec = model.spec
    x = torch.randn(batch, spec.in_chans, *spec.img_size)
    y = torch.zeros(batch, dtype=torch.long)
    before = _rss_bytes()
    t = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return dict(ckpt=ckpt, step_s=seconds, peak_above_mib=(peak - before) / MIB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--cpu", action="store_true", help="also run real steps on the CPU")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._one:
        print(json.dumps(one_step(a._one[0], int(a._one[1]), a._one[2] == "1")))
        return
    rows = []
    for path in a.specs:
        for b in a.batch:
            row = analysis(path, b)
            if a.cpu:
                for ckpt in (False, True):
                    out = subprocess.run(
                        [sys.executable, __file__, path, "--_one", path, str(b),
                         "1" if ckpt else "0"], capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    key = "ckpt" if ckpt else "plain"
                    row[f"cpu_{key}_peak_mib"] = r["peak_above_mib"]
                    row[f"cpu_{key}_step_s"] = r["step_s"]
            rows.append(row)
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}")
    head = ("| spec | img | batch | saved, plain (MiB) | held, ckpt (MiB) | + one block "
            "recomputed | ckpt peak / plain |")
    if a.cpu:
        head += " CPU peak above, plain | CPU peak above, ckpt | step s plain / ckpt |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (f"| {r['spec']} | {r['img']} | {r['batch']} | {r['plain_mib']:.1f} | "
                f"{r['held_mib']:.1f} | {r['recompute_mib']:.1f} | {r['ratio']:.3f} |")
        if a.cpu:
            line += (f" {r['cpu_plain_peak_mib']:.0f} | {r['cpu_ckpt_peak_mib']:.0f} | "
                     f"{r['cpu_plain_step_s']:.2f} / {r['cpu_ckpt_step_s']:.2f} |")
        print(line)


if __name__ == "__main__":
    main()
