"""Costs of the zoo's small models at detection / segmentation sizes (docs/downstream.md).

    python benchmarks/dense_costs.py --json benchmarks/results_dense_costs.json  # the doc's
    python benchmarks/dense_costs.py --input 3x640x640 caformer_s18 --json out.json

Each model is counted by ``mfdsl.analysis.inspect.analyse`` (what ``mfdsl inspect --input``
prints) after the CLI's own size check, so a size-bound mixer is refused here as there.
Everything is counted on the meta device: the numbers do not depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from mfdsl.analysis.inspect import analyse  # noqa: E402
from mfdsl.cli.analysis_cmds import load_at_size  # noqa: E402
from mfdsl.cli.common import parse_input  # noqa: E402
from mfdsl.errors import SpecError  # noqa: E402

MODELS = ("identityformer_s12", "randformer_s12", "poolformerv2_s12", "convformer_s18",
          "caformer_s18")
INPUTS = ("3x800x1333", "3x512x512")
# Weights, their gradients and AdamW's two moments, all fp32: 4 x 4 bytes per parameter.
OPT_BYTES_PER_PARAM = 16


def cost(path: str, text: str) -> Dict[str, object]:
    """One row: params, MACs (total and attention-quadratic), training memory at batch 1."""
    size = parse_input(text)
    try:
        spec = load_at_size(path, None, size)
    except SpecError as err:
        return {"input": text, "refused": err.message}
    r = analyse(spec, batch=1, dtype="fp32")
    params = r.params + r.frozen_params
    return {
        "input": text, "params": params, "macs": r.macs, "attn_macs": r.attn_macs,
        "stages": {s.name: {"macs": s.macs, "attn_macs": s.attn_macs} for s in r.stages},
        "activation_bytes": r.memory.activation_bytes,
        # a training step's peak, roughly: saved activations plus the model's fp32 state
        "train_bytes": r.memory.activation_bytes + OPT_BYTES_PER_PARAM * r.params,
    }


def markdown(rows: Dict[str, List[Dict[str, object]]]) -> str:
    out = ["| model | input | params | GMACs | attention N^2 GMACs | act. memory | "
           "train memory |", "|---|---|---|---|---|---|---|"]
    for name, per in rows.items():
        for c in per:
            size = str(c["input"]).split("x", 1)[1]
            if "refused" in c:
                why = str(c["refused"]).split(" is sized")[0]  # "stage 2 mixer 'random'"
                out.append(f"| {name} | {size} | refused: {why} is sized for the spec's "
                           "input | | | | |")
                continue
            gib = 2 ** 30
            out.append(f"| {name} | {size} | {c['params'] / 1e6:.2f}M | "
                       f"{c['macs'] / 1e9:.2f} | {c['attn_macs'] / 1e9:.2f} | "
                       f"{c['activation_bytes'] / gib:.2f} GiB | "
                       f"{c['train_bytes'] / gib:.2f} GiB |")
    return "\n".join(out)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=list(MODELS),
                    help="zoo names (specs/<name>.mf) or spec paths")
    ap.add_argument("--input", action="append", default=None, metavar="CxHxW",
                    help="input sizes (repeatable; default 3x800x1333 and 3x512x512)")
    ap.add_argument("--json", metavar="FILE", help="also write every number here")
    args = ap.parse_args(argv)
    rows: Dict[str, List[Dict[str, object]]] = {}
    for name in args.models:
        path = name if os.path.exists(name) else os.path.join(ROOT, "specs", f"{name}.mf")
        rows[name] = [cost(path, text) for text in (args.input or INPUTS)]
        for c in rows[name]:
            print(f"{name} {c['input']}: " + (f"refused: {c['refused']}" if "refused" in c
                  else f"{c['macs'] / 1e9:.2f} GMACs"), file=sys.stderr)
    print(markdown(rows))
    machine = (f"{_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"python {platform.python_version()}")
    print(f"\nbatch 1, fp32, counted on the meta device; {machine}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "models": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
