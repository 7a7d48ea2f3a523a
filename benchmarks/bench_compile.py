"""Time the compiler's front half per spec: parse, check, lower (build the nn.Module).

    python benchmarks/bench_compile.py specs/*.mf specs/*.yaml [--repeat 5] [--json]

Each phase is timed separately (median of --repeat runs, cold caches excluded by one
warm-up run) and printed as a markdown table with the machine it ran on.
"""
from __future__ import annotations

import argparse
import glob
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mfdsl.api import load_spec  # noqa: E402
from mfdsl.checks import check  # noqa: E402
from mfdsl.lower import lower  # noqa: E402


def time_spec(path: str, repeat: int) -> dict:
    phases = {"parse": [], "check": [], "lower": []}
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        spec = load_spec(path)
        t1 = time.perf_counter()
        check(spec)
        t2 = time.perf_counter()
        model = lower(spec)
        t3 = time.perf_counter()
        del model
        if i:  # the first run warms the grammar cache and the allocator
            phases["parse"].append(t1 - t0)
            phases["check"].append(t2 - t1)
            phases["lower"].append(t3 - t2)
    return {k: statistics.median(v) * 1e3 for k, v in phases.items()}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="*", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    paths = args.specs or sorted(glob.glob("specs/*.mf") + glob.glob("specs/*.yaml"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [dict(spec=p, **time_spec(p, args.repeat)) for p in paths]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"Machine: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"median of {args.repeat} runs (ms)\n")
    print("| spec | parse ms | check ms | lower ms |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['spec']} | {r['parse']:.1f} | {r['check']:.1f} | {r['lower']:.1f} |")


if __name__ == "__main__":
    main()
