"""Time the compiler's front half per spec: parse, check, size limits, lower.

    python benchmarks/bench_compile.py specs/*.mf specs/*.yaml [--repeat 5] [--json]
    python benchmarks/bench_compile.py --large 20x1000 --no-lower   # checking cost at depth

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
from mfdsl.size_limits import check_size_limits  # noqa: E402


def time_spec(path: str, repeat: int, with_lower: bool = True) -> dict:
    phases = {"parse": [], "check": [], "size": [], "lower": []}
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        spec = load_spec(path)
        t1 = time.perf_counter()
        check(spec)
        t2 = time.perf_counter()
        check_size_limits(spec)
        t3 = time.perf_counter()
        if with_lower:
            lower(spec)
        t4 = time.perf_counter()
        if i:  # the first run warms the grammar cache and the allocator
            phases["parse"].append(t1 - t0)
            phases["check"].append(t2 - t1)
            phases["size"].append(t3 - t2)
            phases["lower"].append(t4 - t3)
    return {k: statistics.median(v) * 1e3 for k, v in phases.items()}


def large_spec(shape: str) -> str:
    """A spec of S stages of D pooling blocks (``SxD``), written to a temporary file."""
    import tempfile

    stages, depth = (int(v) for v in shape.lower().split("x"))
    lines = ["model large {", "  input 3x64x64", "  downsample none"]
    lines += [f"  stage pooling x{depth} @8"] * stages
    f = tempfile.NamedTemporaryFile("w", suffix=".mf", delete=False)
    f.write("\n".join(lines + ["}"]) + "\n")
    f.close()
    return f.name


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
    ap.add_argument("--large", metavar="SxD", help="also time a generated spec of S stages "
                    "of D blocks (e.g. 20x1000)")
    ap.add_argument("--no-lower", action="store_true", help="skip building the real model")
    args = ap.parse_args()
    paths = args.specs or ([] if args.large else
                           sorted(glob.glob("specs/*.mf") + glob.glob("specs/*.yaml")))
    if args.large:
        paths = paths + [large_spec(args.large)]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [dict(spec=p, **time_spec(p, args.repeat, not args.no_lower)) for p in paths]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"Machine: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"median of {args.repeat} runs (ms)\n")
    print("| spec | parse ms | check ms | size limits ms | lower ms |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        lower_ms = f"{r['lower']:.1f}" if not args.no_lower else "-"
        print(f"| {r['spec']} | {r['parse']:.1f} | {r['check']:.1f} | {r['size']:.1f} | "
              f"{lower_ms} |")


if __name__ == "__main__":
    main()
