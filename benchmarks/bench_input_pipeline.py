"""Training input pipeline throughput: mfdsl's loader vs timm's own loader on the same files.

Decode + the paper's training augmentation (RandomResizedCrop with random bilinear/bicubic
interpolation, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 in pixel mode,
normalisation) + collate, in images/s, for several DataLoader worker counts. The loaders are
measured interleaved (round by round, worker count by worker count, in an order rotated each
round) so that a busy machine slows both alike; the table gives medians over the rounds and
the ratio mfdsl/timm.

    python benchmarks/bench_input_pipeline.py                    # ImageNet-like JPEGs in a temp dir
    python benchmarks/bench_input_pipeline.py --data /datasets/imagenet/train --img-size 224

Without --data it writes --images JPEGs of 500x375 at quality 90 (ImageNet's typical size
and quality; smooth random fields with edges and fine grain, ~85 KB each) in 10 class folders
under --work-dir (default: a temporary folder, removed afterwards).

mfdsl's loader is measured as training uses it: the workers decode and augment to uint8
images (plus each sample's erasing rectangle and noise seed), and the main process runs
`BatchPreprocess` on each batch (normalise to float and fill the erased rectangles; on the
CPU device here), inside the timed loop. timm's loader is `timm.data.create_loader` over
`timm.data.ImageDataset` with the same settings, in two forms: `use_prefetcher=False`
(everything in the workers) and `use_prefetcher=True` on the CPU device (timm's training
default: the workers send uint8 images, the main process normalises and erases, also timed).
Each mfdsl measurement starts a new epoch (new samples and augmentation draws), as timm's
loader draws anew from its global RNG for each.

Two CPU-time comparisons follow, finer than the throughput rounds on a busy machine: a
worker's work per sample (alternating batch by batch, in this process), and the whole
0-worker loop of mfdsl and of timm's prefetcher form pulled alternately batch by batch
(`--ab-batches` each: both halves of the pipeline, normalising and erasing included).
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, Iterable, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from mfdsl.run_options import CROP_SCALE_MIN
from mfdsl.ir import RecipeSpec  # noqa: E402
from mfdsl.data.transforms import (BatchPreprocess, _patch_posterize,  # noqa: E402
                                     caller_rngs_preserved, train_transform)
from mfdsl.data.dataset import (ResumableDistributedSampler, SkippingImageFolder,  # noqa: E402
                                      collate, make_loader)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_imagenet_like(root: str, n: int, classes: int = 10, seed: int = 0) -> float:
    """``n`` photo-like 500x375 JPEGs (quality 90) in ``classes`` folders; mean KB per file."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        folder = os.path.join(root, f"n{i % classes:08d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"img_{i:05d}.JPEG")
        if not os.path.exists(path):
            # Low-frequency colour field + a few hard-edged shapes + fine grain.
            low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((500, 375), Image.Resampling.BICUBIC)
            a = np.asarray(img).astype(np.int16)
            yy, xx = np.mgrid[0:375, 0:500]
            for _ in range(4):
                cy, cx, r = rng.integers(0, 375), rng.integers(0, 500), rng.integers(20, 120)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
                a[mask] = rng.integers(0, 256, 3)
            a += rng.normal(0, 16, a.shape).astype(np.int16)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=90)
        total += os.path.getsize(path)
    return total / n / 1024


def mfdsl_loader(root: str, size: int, batch: int) -> Callable[[int], Iterable]:
    """mfdsl's training input: the loader, then the device-side batch step (here on the
    CPU, in this process), as ``Trainer._train_step`` runs them."""
    # the paper's recipe
    tf = train_transform(RecipeSpec(), (size, size), MEAN, STD, crop_scale_min=CROP_SCALE_MIN)
    ds = SkippingImageFolder(root, tf)
    prep = BatchPreprocess.for_transform(tf, "cpu", channels_last=False)
    made = [0]

    def make(workers: int) -> Iterable:
        # A new epoch for each measurement: new samples and augmentation draws, as timm's
        # loader gets from its global RNG (the same draws every time would be a bias).
        sampler = ResumableDistributedSampler(ds, 1, 0, seed=0)
        sampler.set_position(made[0])
        made[0] += 1
        loader = make_loader(ds, sampler, batch, workers, 0, drop_last=True, pin_memory=False)
        return ((prep(images), target) for images, target, _ in loader)
    return make


def per_sample_cpu(root: str, size: int, passes: int, batch: int
                   ) -> Tuple[float, float, int]:
    """CPU ms per sample of a worker's work (decode + augmentation to uint8 + collate;
    normalising and erasing are the main process's), mfdsl vs timm's prefetcher form
    (its ``fast_collate``), alternating batch by batch over the same files so that a busy
    machine slows both alike."""
    from timm.data import ImageDataset

    ours = SkippingImageFolder(root, train_transform(RecipeSpec(), (size, size), MEAN, STD,
                                                     crop_scale_min=CROP_SCALE_MIN))
    loader = timm_loader(root, size, 1, prefetcher=True)(0)
    theirs: ImageDataset = loader.loader.dataset  # with the transform create_loader gave it
    their_collate = loader.loader.collate_fn
    assert [p for p, _ in ours.samples] == [str(p) for p, _ in theirs.reader.samples], \
        "the two datasets list different files"
    t_ours = t_theirs = 0.0
    n = 0
    with caller_rngs_preserved():  # as in a worker: no save/restore of this process's RNGs
        for epoch in range(passes):
            for start in range(0, len(ours) - batch + 1, batch):
                keys = range(start, start + batch)
                c0 = time.thread_time()
                collate([ours[(i, 0, epoch)] for i in keys])
                c1 = time.thread_time()
                their_collate([theirs[i] for i in keys])
                c2 = time.thread_time()
                t_ours += c1 - c0
                t_theirs += c2 - c1
                n += batch
    return 1000 * t_ours / n, 1000 * t_theirs / n, n


def alternating_loop_cpu(loaders: Dict[str, Callable[[int], Iterable]], names: List[str],
                         batches: int, batch: int) -> Dict[str, float]:
    """CPU ms per image of whole 0-worker loops (fetch, decode, augmentation, collate and
    the main process's normalising and erasing), the loaders ``names`` pulled alternately
    batch by batch in this process (the order flipped each time; a loader starts its next
    epoch when one ends): the whole pipeline, compared finely enough that a busy machine
    slows each alike."""
    its = {k: iter(loaders[k](0)) for k in names}

    def pull(k: str) -> None:
        try:
            next(its[k])
        except StopIteration:
            its[k] = iter(loaders[k](0))
            next(its[k])

    for k in names:  # first-batch latency is not throughput
        pull(k)
    cpu = {k: 0.0 for k in names}
    for i in range(batches):
        for k in (names if i % 2 else names[::-1]):
            c0 = time.process_time()
            pull(k)
            cpu[k] += time.process_time() - c0
    return {k: 1000 * v / (batches * batch) for k, v in cpu.items()}


def timm_loader(root: str, size: int, batch: int, prefetcher: bool) -> Callable[[int], Iterable]:
    from timm.data import ImageDataset, create_loader

    r = RecipeSpec()

    def make(workers: int) -> Iterable:
        ds = ImageDataset(root)
        loader = create_loader(
            ds, input_size=(3, size, size), batch_size=batch, is_training=True,
            re_prob=r.random_erasing, re_mode="pixel", re_count=1, scale=(0.08, 1.0),
            ratio=(3 / 4, 4 / 3), hflip=0.5, auto_augment=r.randaugment,
            interpolation=r.train_interpolation, mean=MEAN, std=STD, num_workers=workers,
            pin_memory=False, device=torch.device("cpu"), use_prefetcher=prefetcher,
            persistent_workers=workers > 0)
        # Pillow >= 11 refuses timm's 0-bit posterize at RandAugment's top level: the same
        # fix as mfdsl's, or timm's loader stops at a random batch.
        for t in getattr(ds.transform, "transforms", []):
            _patch_posterize(t)
        return loader
    return make


def measure(make: Callable[[int], Iterable], workers: int, batches: int, warmup: int
            ) -> Tuple[float, float]:
    """(images/s wall clock, CPU ms per image of this process: meaningful with 0 workers)."""
    it = iter(make(workers))
    for _ in range(warmup):  # worker start-up and first-batch latency are not throughput
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for _ in range(batches):
        images = next(it)[0]
        n += images.shape[0]
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    del it
    return n / dt, 1000 * dc / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="an ImageFolder split (class folders of images); default: "
                    "generate ImageNet-like JPEGs")
    ap.add_argument("--work-dir", help="where to generate the JPEGs (kept); default: a "
                    "temporary folder (removed)")
    ap.add_argument("--images", type=int, default=400, help="JPEGs to generate")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=6, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--passes", type=int, default=3, help="passes over the files for the "
                    "per-sample CPU comparison")
    ap.add_argument("--ab-batches", type=int, default=24, help="batches per loader of the "
                    "alternating whole-loop CPU comparison (0: skip it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the main "
                    "process (DataLoader workers always use 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = None
    if args.data:
        root, kb = args.data, None
    else:
        root = args.work_dir or tempfile.mkdtemp(prefix="mfdsl-bench-jpeg-")
        tmp = None if args.work_dir else root
        kb = write_imagenet_like(root, args.images)
    try:
        run(args, root, kb)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, root: str, kb) -> None:
    loaders: Dict[str, Callable[[int], Iterable]] = {
        "mfdsl": mfdsl_loader(root, args.img_size, args.batch_size),
        "timm": timm_loader(root, args.img_size, args.batch_size, prefetcher=False),
        "timm_prefetch": timm_loader(root, args.img_size, args.batch_size, prefetcher=True),
    }
    n_img = len(SkippingImageFolder(root))
    # One batch more than are timed: timm's PrefetchLoader loads a batch ahead of the one
    # it yields, so the epoch's last batch costs it nothing inside the timed window; with
    # that batch timed, timm's figure would count a batch it did not load then.
    need = (args.batches + args.warmup + 1) * args.batch_size
    if n_img < need:
        sys.exit(f"error: {n_img} images; need {need} (raise --images or lower --batches)")
    workers = [int(x) for x in args.workers.split(",")]
    load0 = os.getloadavg()
    res: Dict[str, Dict[int, List[float]]] = {k: {w: [] for w in workers} for k in loaders}
    cpu: Dict[str, List[float]] = {k: [] for k in loaders}
    names = list(loaders)
    for r in range(args.rounds):
        for w in workers:
            # The order rotates each round: none always runs first (after the previous
            # measurement's workers shut down) or last.
            for name in names[r % len(names):] + names[:r % len(names)]:
                ips, ms = measure(loaders[name], w, args.batches, args.warmup)
                res[name][w].append(ips)
                if w == 0:
                    cpu[name].append(ms)
    med = {k: {w: statistics.median(v) for w, v in d.items()} for k, d in res.items()}
    ms_ours, ms_theirs, n_samples = per_sample_cpu(root, args.img_size, args.passes,
                                                   args.batch_size)
    ab = (alternating_loop_cpu(loaders, ["mfdsl", "timm_prefetch"], args.ab_batches,
                               args.batch_size) if args.ab_batches > 0 else None)
    print(f"Command: `{' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}`  ")
    print(f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs (load average at start / end: "
          f"{', '.join(f'{x:.1f}' for x in load0)} / "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}), Python "
          f"{platform.python_version()}, torch {torch.__version__}, "
          f"timm {__import__('timm').__version__}, Pillow {Image.__version__}, "
          f"main-process torch threads {args.threads}  ")
    print(f"Data: {n_img} images" + (f" (generated 500x375 JPEG q90, {kb:.0f} KB mean)"
                                     if kb else f" in {root}")
          + f", {args.img_size}x{args.img_size}, batch {args.batch_size}, paper augmentation, "
          f"{args.batches} timed batches x {args.rounds} interleaved rounds (medians)\n")
    print("| workers | mfdsl img/s | timm img/s | mfdsl / timm | timm prefetcher img/s "
          "| mfdsl / timm prefetcher | per-round mfdsl / timm | per-round mfdsl / timm "
          "prefetcher |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    for w in workers:
        m, t, tp = med["mfdsl"][w], med["timm"][w], med["timm_prefetch"][w]
        rounds = [", ".join(f"{a / b:.2f}" for a, b in zip(res["mfdsl"][w], res[k][w]))
                  for k in ("timm", "timm_prefetch")]
        print(f"| {w} | {m:.0f} | {t:.0f} | {m / t:.2f} | {tp:.0f} | {m / tp:.2f} | "
              f"{rounds[0]} | {rounds[1]} |")
    per = [w for w in workers if w > 0]
    if per:
        print("\nimg/s per worker: " + "; ".join(
            f"{w} worker(s): mfdsl {med['mfdsl'][w] / w:.0f}, timm {med['timm'][w] / w:.0f}, "
            f"timm prefetcher {med['timm_prefetch'][w] / w:.0f}" for w in per))
    print(f"\nPer-sample CPU time of a worker's work (decode + augmentation to uint8 + "
          f"collate), alternating batch by batch over {n_samples} samples: mfdsl "
          f"{ms_ours:.2f} ms, "
          f"timm prefetcher form {ms_theirs:.2f} ms; mfdsl's speed relative to timm "
          f"{ms_theirs / ms_ours:.2f}x")
    if ab:
        print(f"\nCPU time per image of the whole 0-worker loop, mfdsl and timm's prefetcher "
              f"form pulled alternately batch by batch ({args.ab_batches} batches each): "
              f"mfdsl {ab['mfdsl']:.2f} ms, timm prefetcher {ab['timm_prefetch']:.2f} ms; "
              f"mfdsl's speed relative to timm prefetcher "
              f"{ab['timm_prefetch'] / ab['mfdsl']:.2f}x")
    if cpu["mfdsl"]:
        c = {k: statistics.median(v) for k, v in cpu.items()}
        print("\nCPU time per image with 0 workers (process time, little affected by other "
              "load): " + ", ".join(f"{k.replace('_', ' ')} {v:.2f} ms" for k, v in c.items())
              + f"; mfdsl's speed relative to timm {c['timm'] / c['mfdsl']:.2f}x, to timm "
              f"prefetcher {c['timm_prefetch'] / c['mfdsl']:.2f}x")


if __name__ == "__main__":
    main()
