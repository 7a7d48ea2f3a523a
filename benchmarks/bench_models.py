"""Model throughput: mfdsl's zoo models against timm's, side by side (docs/benchmarks.md).

    python benchmarks/bench_models.py                       # CPU, eager, 3 models, batch 8
    python benchmarks/bench_models.py --compile             # + torch.compile (slow on CPU)
    python benchmarks/bench_models.py --device cuda --batch 256 --compile --no-eager

Runs ``mfdsl.bench.throughput.run_benchmark`` (the engine behind ``mfdsl bench``) for
each model and prints one markdown section per model; ``--json`` keeps everything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from mfdsl.analysis.counting import count_macs_meta  # noqa: E402
from mfdsl.api import check_spec  # noqa: E402
from mfdsl.lower import lower  # noqa: E402
from mfdsl.bench.throughput import markdown_table, report_header, run_benchmark  # noqa: E402

DEFAULT_MODELS = ("caformer_s18", "convformer_s18", "poolformerv2_s12")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=list(DEFAULT_MODELS),
                    help="zoo names (specs/<name>.mf) or spec paths")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tasks", choices=("both", "infer", "train"), default="both")
    ap.add_argument("--compile", action="store_true", help="also torch.compile'd models")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak for MFU (default: a GPU's bf16 data sheet, else matrix "
                    "products measured here in the compute dtype)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", default=None, help="write all reports here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")
    reports = []
    for name in args.models:
        path = name if os.path.exists(name) else os.path.join(ROOT, "specs", name + ".mf")
        spec = check_spec(path)
        report = run_benchmark(
            lambda: lower(spec, target=device), spec.name, img_size=spec.img_size,
            num_classes=spec.num_classes, in_chans=spec.in_chans, device=device,
            batch=args.batch, tasks=("infer", "train") if args.tasks == "both"
            else (args.tasks,), compile=args.compile, eager=not args.no_eager, dtype=dtype,
            rounds=args.rounds, iters=args.iters, warmup=args.warmup,
            memory=not args.no_memory, macs=count_macs_meta(spec),
            peak_tflops=args.peak_tflops, drop_path_rate=spec.drop_path_rate,
            head_dropout=spec.head_dropout, log=lambda s: print(s, file=sys.stderr, flush=True),
        )
        reports.append(report)
        print(report_header(report) + "\n\n" + markdown_table(report) + "\n", flush=True)
    if args.json:
        from mfdsl.fsio import write_atomic

        write_atomic(args.json, json.dumps(reports, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
