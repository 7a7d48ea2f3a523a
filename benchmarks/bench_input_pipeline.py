"""Training input pipeline throughput (decode + the recipe's augmentation + collate), in
images/s, for several DataLoader worker counts. Prints a markdown table.

    python benchmarks/bench_input_pipeline.py                      # embedded TinyShapes, 64 px
    python benchmarks/bench_input_pipeline.py --data /datasets/imagenet --img-size 224

Uses the paper's training recipe (RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25,
random interpolation) unless --light is given (no RandAugment / erasing).
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from mfdsl.ir import RecipeSpec  # noqa: E402
from mfdsl.runner.imagefolder import (ResumableDistributedSampler, SkippingImageFolder,  # noqa: E402
                                      make_loader, train_transform)


def measure(ds: SkippingImageFolder, workers: int, batch: int, batches: int, warmup: int) -> float:
    sampler = ResumableDistributedSampler(ds, 1, 0, seed=0)
    loader = make_loader(ds, sampler, batch, workers, 0, drop_last=True, pin_memory=False)
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and first-batch latency are not throughput
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        images, _, _ = next(it)
        n += images.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="ImageFolder root with train/ (default: embedded TinyShapes)")
    ap.add_argument("--img-size", type=int, default=None, help="default 64 embedded, 224 else")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--light", action="store_true", help="no RandAugment / random erasing")
    args = ap.parse_args()
    if args.data is None:
        from mfdsl.data.tinyshapes import ensure_tinyshapes

        root = str(ensure_tinyshapes())
        size = args.img_size or 64
    else:
        root = args.data
        size = args.img_size or 224
    recipe = RecipeSpec()
    if args.light:
        recipe = RecipeSpec(randaugment=None, random_erasing=0.0)
    tf = train_transform(recipe, (size, size), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ds = SkippingImageFolder(os.path.join(root, "train"), tf)
    need = (args.batches + args.warmup) * args.batch_size
    if len(ds) < need:
        sys.exit(f"error: {len(ds)} images; need {need} (lower --batches/--batch-size)")
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        rows.append((w, measure(ds, w, args.batch_size, args.batches, args.warmup)))
    print(f"Command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}`  ")
    print(f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs (load average at start: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}), Python "
          f"{platform.python_version()}, torch {torch.__version__}  ")
    print(f"Data: {root} ({len(ds)} train images), {size}x{size}, batch {args.batch_size}, "
          f"{'light' if args.light else 'paper'} augmentation, {args.batches} timed batches\n")
    print("| workers | img/s |")
    print("|---:|---:|")
    for w, ips in rows:
        print(f"| {w} | {ips:.0f} |")


if __name__ == "__main__":
    main()
