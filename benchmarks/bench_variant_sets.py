"""Whole models under torch.compile with different sets of speed variants, side by side.

    python benchmarks/bench_variant_sets.py caformer_s18 --task train
    python benchmarks/bench_variant_sets.py convformer_s18 --sets eager,compiled:none,compiled:all

``bench_variants.py`` times one layer at a time; this times what a target actually runs:
a whole zoo model through ``compile_for_target``, once eager with the eager table and once
compiled per variant set, all cases interleaved round by round in one process (medians).
A set is ``eager`` (eager, ``VARIANTS_FOR[(device, False)]``), or ``compiled:<set>`` with
<set> = ``table`` (``VARIANTS_FOR[(device, True)]``), ``none`` (reference layers), ``all``
(every registered variant), or variant names joined by ``+``; a ``@inductor-layout``
suffix compiles that case with inductor's layout optimisation on (mfdsl turns it off for
its own layout). ``--leave-one-out`` adds, for every variant of the compiled table, the
table without it. The ratio column is
eager / case (above 1: the case is faster than eager). A training step is forward +
cross-entropy + backward + AdamW, as in ``bench_models.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from typing import List, Tuple
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mfdsl.api import build_model  # noqa: E402
from mfdsl.layers.variants import VARIANTS, select_variants, variants_for, variants_in_use  # noqa: E402
from mfdsl.target import prepare as targets  # noqa: E402
from mfdsl.target.prepare import TargetModel, compile_for_target  # noqa: E402
from mfdsl.bench.throughput import interleaved_ms, machine_info  # noqa: E402


# case suffix: compiled with inductor's layout optimisation on, as mfdsl did until it
# measured that off is faster for its (B, H, W, C) blocks (mfdsl.target.prepare.compile_options)
INDUCTOR_LAYOUT = "@inductor-layout"


def variant_names(spec: str, device: str) -> Tuple[str, ...]:
    if spec == "table":
        return variants_for(device, True)
    if spec == "none":
        return ()
    if spec == "all":
        return tuple(VARIANTS)
    names = tuple(spec.split("+"))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(VARIANTS))}")
    return names


def build_case(spec_path: str, case: str, device: str, dtype: str) -> TargetModel:
    if case == "eager":
        return compile_for_target(build_model(spec_path, target="reference"), device,
                                  dtype=dtype, mode="eager")
    if not case.startswith("compiled:"):
        raise SystemExit(f"a case is 'eager' or 'compiled:<set>[{INDUCTOR_LAYOUT}]', "
                         f"got {case!r}")
    variant_set, layout = case.split(":", 1)[1], None
    if variant_set.endswith(INDUCTOR_LAYOUT):
        variant_set = variant_set[:-len(INDUCTOR_LAYOUT)]
        # the options a foreign NCHW model gets: inductor's layout optimisation on
        own = targets.compile_options
        layout = mock.patch.object(targets, "compile_options",
                                   lambda mode, channels_last: own(mode, False))
    with layout or contextlib.nullcontext():
        tm = compile_for_target(build_model(spec_path, target="reference"), device,
                                dtype=dtype)
    # torch.compile traces lazily: swapping variants before the first call is what runs.
    select_variants(tm.model, variant_names(variant_set, device))
    return tm


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="zoo name (specs/<name>.mf) or spec path")
    ap.add_argument("--task", choices=("train", "infer"), default="train")
    ap.add_argument("--sets", default="eager,compiled:table,compiled:none")
    ap.add_argument("--leave-one-out", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                    help="autocast dtype (default: bf16 on CUDA, fp32 on CPU, as the runner)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model if os.path.exists(args.model) else os.path.join(
        ROOT, "specs", args.model + ".mf")
    names = args.sets.split(",")
    if args.leave_one_out:
        table = variants_for(args.device, True)
        names += ["compiled:" + ("+".join(v for v in table if v != left) or "none")
                  for left in table]
    torch.manual_seed(0)
    dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    cases = {n: build_case(path, n, args.device, dtype) for n in dict.fromkeys(names)}
    model0 = next(iter(cases.values()))
    spec = model0.spec
    x = torch.randn(args.batch, spec.in_chans, *spec.img_size, device=args.device)
    y = torch.randint(0, spec.num_classes, (args.batch,), device=args.device)
    opts = {n: torch.optim.AdamW(tm.parameters(), lr=1e-4, foreach=True)
            for n, tm in cases.items()}

    def step(name: str) -> None:
        tm = cases[name]
        if args.task == "infer":
            tm.eval()
            with torch.inference_mode():
                tm(x)
        else:
            tm.train()
            F.cross_entropy(tm(x), y).backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)

    for n in cases:
        t0 = time.perf_counter()
        step(n)
        step(n)
        print(f"{n}: warm-up {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    ms = interleaved_ms({n: (lambda n=n: step(n)) for n in cases}, args.rounds, args.iters,
                        args.device)
    info = machine_info(args.device)
    print(f"{spec.name}, {args.task}, {dtype}, batch {args.batch}, {args.rounds} rounds x "
          f"{args.iters}; "
          f"{info['cpu']}, torch {info['torch']}, {info['torch_threads']} threads; "
          f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    base = statistics.median(ms["eager"]) if "eager" in ms else None
    print("| case | variants | ms / step | eager / case | rounds (ms) |\n|---|---|---:|---:|---|")
    for n, tm in cases.items():
        med = statistics.median(ms[n])
        used = "+".join(sorted(variants_in_use(tm.model))) or "none"
        ratio = f"{base / med:.2f}x" if base else "-"
        print(f"| {n} | {used} | {med:.1f} | {ratio} | {', '.join(f'{v:.0f}' for v in ms[n])} |")
    return 0



if __name__ == "__main__":
    sys.exit(main())
