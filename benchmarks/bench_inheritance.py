"""Does inheriting trained stages pay? A hybrid trained from scratch against the same hybrid
started from a trained demo model's stem and first two stages, on the built-in TinyShapes.

    python benchmarks/bench_inheritance.py [--out runs/bench_inherit] [--epochs 8]
        [--source-epochs 30] [--source RUN] [--json]

Trains (CPU is fine) ``specs/demo_tiny.mf`` as the source (unless --source names a finished
run), then ``specs/hybrid_tiny_attn.mf`` twice with the same recipe and seed: from scratch
and with ``--inherit stage0-1=<source>``. Reports the scratch run's final val top-1 and the
first epoch at which the inheriting run reaches it, with the machine. A run folder that
already holds a finished run is reused, not retrained.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent


def train(spec: str, out: Path, *extra: str, epochs: Optional[int] = None) -> None:
    if (out / "summary.json").is_file():
        done = json.loads((out / "recipe.json").read_text())["recipe"]["epochs"]
        if epochs is not None and done != epochs:
            sys.exit(f"{out} holds a {done}-epoch run, not {epochs}: choose another --out")
        print(f"reusing {out}", file=sys.stderr)
        return
    cmd = [sys.executable, "-m", "mfdsl", "train", spec, "-o", str(out), "--no-progress",
           "--no-tensorboard", *extra]
    print("$ " + " ".join(cmd[1:]), file=sys.stderr)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def val_curve(run: Path) -> List[Dict]:
    """The val record at each completed epoch, in order."""
    out = []
    with open(run / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "val":
                out.append(rec)
    return out


def first_epoch_reaching(curve: List[Dict], target: float) -> Optional[int]:
    return next((r["epoch"] for r in curve if r["top1"] >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench_inherit")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of both hybrid runs")
    ap.add_argument("--source-epochs", type=int, default=30)
    ap.add_argument("--source", help="a finished demo_tiny run folder to inherit from")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = (ROOT / args.out) if not os.path.isabs(args.out) else Path(args.out)
    source = Path(args.source).resolve() if args.source else out / "demo_tiny"
    if not args.source:
        train("specs/demo_tiny.mf", source, "--epochs", str(args.source_epochs))
    hybrid = "specs/hybrid_tiny_attn.mf"
    train(hybrid, out / "hybrid_scratch", "--epochs", str(args.epochs), epochs=args.epochs)
    train(hybrid, out / "hybrid_inherit", "--epochs", str(args.epochs),
          "--inherit", f"stage0-1={source}", epochs=args.epochs)
    scratch, inherit = val_curve(out / "hybrid_scratch"), val_curve(out / "hybrid_inherit")
    target = scratch[-1]["top1"]
    reached = first_epoch_reaching(inherit, target)
    inh = json.loads((out / "hybrid_inherit" / "inheritance.json").read_text())
    result = {
        "source": str(source),
        "source_final_top1": json.loads((source / "summary.json").read_text())
        ["final_val"]["top1"],
        "epochs": args.epochs,
        "scratch_final_top1": target,
        "inherit_final_top1": inherit[-1]["top1"],
        "inherit_epoch_reaching_scratch_final": reached,
        "scratch_curve": [r["top1"] for r in scratch],
        "inherit_curve": [r["top1"] for r in inherit],
        "params_copied": sum(p["params_copied"] for p in inh["parts"]),
        "params_new": sum(p["params_new"] for p in inh["parts"]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"source demo_tiny final top-1 {result['source_final_top1']:.1f}%")
    print(f"hybrid from scratch: {args.epochs} epochs -> {target:.1f}%   curve "
          f"{result['scratch_curve']}")
    print(f"hybrid inheriting stem + stages 0-1 ({result['params_copied']} of "
          f"{result['params_copied'] + result['params_new']} parameters): reaches "
          f"{target:.1f}% at epoch {reached}; final {result['inherit_final_top1']:.1f}%   "
          f"curve {result['inherit_curve']}")
    print(f"machine: {result['machine']}")


if __name__ == "__main__":
    main()
