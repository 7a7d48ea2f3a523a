"""ImageNet-shaped data at scale: index time, memory and reading speed of mfdsl's three data
sources (ImageFolder tree, Hugging Face parquet shards, WebDataset tar shards) side by side
with torchvision's ImageFolder and timm's folder reader, on the same images.

    python benchmarks/bench_data_scale.py --root /data/bench --classes 1000 --per-class 1281 \
        --val-per-class 50 --shard-per-class 100

Generation (skipped for what already exists under --root):

- ``folder/train/<wnid>/<wnid>_<i>.JPEG`` (+ ``folder/val``): ``--classes`` x ``--per-class``
  tiny JPEGs (a pool of 16x16 images, each file made unique by bytes after the end-of-image
  marker, which decoders ignore: the file system and the index are what is measured);
- ``links/train``: the same tree as one symlink per file (how shared clusters lay data out);
- ``subset/train``: the first ``--shard-per-class`` images of each class (hard links), and the
  same images as ``parquet/`` (row groups of 100 rows, as Hugging Face writes them) and
  ``tar/`` (1250 samples per shard, timm's imagenet-1k-wds naming).

Measurements, each reader in a fresh process (spawned by this script):

- index: seconds to build the reader's sample list (``-cold``: mfdsl's cached folder
  manifest / tar index removed first; else reused), the peak RSS during the build and the RSS
  it keeps, above the RSS before it (``VmHWM``, reset first, and ``VmRSS``);
- worker USS growth: one DataLoader worker reads ``--samples`` samples in random order (decode
  only); its unique memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) after
  the first batch and at the end; the growth is the copy-on-access of the index;
- img/s per worker: one process reads and decodes ``--rate-samples`` random samples (no
  augmentation: the reader's cost, not the transforms');
- first step: seconds from a new DataLoader (2 workers, batch 64) to its first batch.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- generation
def _pool(n: int = 64) -> List[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        b = io.BytesIO()
        Image.fromarray(a).save(b, format="JPEG", quality=75)
        out.append(b.getvalue())
    return out


def _wnids(n: int) -> List[str]:
    from mfdsl.data.sources import imagenet_wnids

    w = imagenet_wnids() or []
    return w[:n] if n <= len(w) else [f"n{i:08d}" for i in range(n)]


def generate(root: str, classes: int, per_class: int, val_per_class: int,
             shard_per_class: int, links: bool) -> Dict[str, float]:
    times: Dict[str, float] = {}
    pool = _pool()
    wnids = _wnids(classes)
    folder = os.path.join(root, "folder")
    t0 = time.perf_counter()
    if not os.path.isdir(os.path.join(folder, "val")):
        for split, n in (("train", per_class), ("val", val_per_class)):
            for c, w in enumerate(wnids):
                d = os.path.join(folder, split, w)
                os.makedirs(d, exist_ok=True)
                for i in range(n):
                    with open(os.path.join(d, f"{w}_{i}.JPEG"), "wb") as f:
                        f.write(pool[(c * 7 + i) % len(pool)] + f"{split}{c}_{i}".encode())
            print(f"generated {split}: {classes} x {n}", flush=True)
        times["folder"] = time.perf_counter() - t0
    if links and not os.path.isdir(os.path.join(root, "links", "train")):
        t0 = time.perf_counter()
        for w in wnids:
            src = os.path.join(folder, "train", w)
            dst = os.path.join(root, "links", "train", w)
            os.makedirs(dst)
            for name in os.listdir(src):
                os.symlink(os.path.join(src, name), os.path.join(dst, name))
        times["links"] = time.perf_counter() - t0
        print("generated links", flush=True)
    sub = os.path.join(root, "subset")
    if not os.path.isdir(os.path.join(sub, "val")):
        t0 = time.perf_counter()
        for split, n in (("train", shard_per_class), ("val", val_per_class)):
            for w in wnids:
                src = os.path.join(folder, split, w)
                dst = os.path.join(sub, split, w)
                os.makedirs(dst, exist_ok=True)
                for i in range(n):
                    os.link(os.path.join(src, f"{w}_{i}.JPEG"), os.path.join(dst, f"{w}_{i}.JPEG"))
        times["subset"] = time.perf_counter() - t0
    if not os.path.isdir(os.path.join(root, "tar")):
        from mfdsl.data.writers import folder_to_forms

        t0 = time.perf_counter()
        # tar without classes.txt: 1000 classes read as ImageNet-1k's wnids, as the real set.
        folder_to_forms(sub, os.path.join(root, "parquet"), os.path.join(root, "tar"),
                        parquet_per_shard=5000, tar_per_shard=1250,
                        tar_classes_txt=classes != 1000)
        times["shards"] = time.perf_counter() - t0
        print("generated shards", flush=True)
    return times


# ----------------------------------------------------------------------------- measuring
def _uss(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    # Linux: writing 5 resets the peak RSS (VmHWM) to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _make(reader: str, root: str) -> Any:
    """A map-style dataset whose item is (uint8 tensor of the decoded image, label)."""
    import numpy as np
    import torch

    def to_t(img):
        return torch.from_numpy(np.asarray(img, np.uint8).copy())

    if reader in ("tv-folder", "tv-links", "tv-subset"):
        from torchvision.datasets import ImageFolder

        return ImageFolder(root, transform=to_t)
    if reader in ("timm-folder", "timm-subset"):
        from timm.data import ImageDataset

        return ImageDataset(root, transform=to_t)
    from mfdsl.data.dataset import SourceDataset
    from mfdsl.data.layout import detect_layout, open_source

    return SourceDataset(open_source(detect_layout(os.path.dirname(root.rstrip("/"))
                                                   if reader.endswith(("folder", "links",
                                                                       "subset")) else root),
                                     "train"), to_t)


def _collate(batch):
    import torch

    return torch.tensor([len(b[0]) for b in batch])


def measure(reader: str, root: str, samples: int, rate_samples: int) -> Dict[str, Any]:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    import PIL.Image  # noqa: F401 - the imports' memory is the baseline
    import torchvision.datasets  # noqa: F401
    import timm.data  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import mfdsl.data.dataset  # noqa: F401

    torch.set_num_threads(1)
    import gc

    gc.collect()
    _reset_peak()
    base = _status("VmRSS")
    t0 = time.perf_counter()
    ds = _make(reader, root)
    index_s = time.perf_counter() - t0
    n = len(ds)
    # Peak during the build and what stays, above the RSS before it.
    out: Dict[str, Any] = {"reader": reader, "samples": n, "index_s": index_s,
                           "index_peak_mb": (_status("VmHWM") - base) / 2**20,
                           "index_held_mb": (_status("VmRSS") - base) / 2**20}
    rng = np.random.default_rng(0)
    # img/s in this process: read + decode, random order.
    order = rng.integers(0, n, rate_samples)
    t0 = time.perf_counter()
    for i in order:
        ds[int(i)]
    out["img_s"] = rate_samples / (time.perf_counter() - t0)
    # First batch of a fresh 2-worker loader.
    t0 = time.perf_counter()
    it = iter(DataLoader(ds, batch_size=64, shuffle=True, num_workers=2, collate_fn=_collate,
                         generator=torch.Generator().manual_seed(1)))
    next(it)
    out["first_batch_s"] = time.perf_counter() - t0
    del it
    # Worker USS growth over `samples` samples, one worker.
    if samples:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(2))[:samples]
        loader = DataLoader(ds, batch_size=256, sampler=perm.tolist(), num_workers=1,
                            collate_fn=_collate, prefetch_factor=2)
        it = iter(loader)
        next(it)
        pid = it._workers[0].pid
        u0 = _uss(pid)
        t0 = time.perf_counter()
        for _ in range(len(loader) - 1):
            next(it)
        u1 = _uss(pid)  # all samples read (prefetched); the worker has not exited yet
        out["worker_uss_start_mb"] = u0 / 2**20
        out["worker_uss_growth_mb"] = (u1 - u0) / 2**20
        out["worker_samples"] = samples
        out["worker_img_s"] = samples / (time.perf_counter() - t0)
        del it
    return out


def row_group_probe(folder: str, rows: int = 100, size: int = 110_000, reads: int = 40
                    ) -> Dict[str, float]:
    """ms per random sample from one parquet row group of ``rows`` ImageNet-sized values
    (``size`` bytes, about a mean ImageNet JPEG): pyarrow's read_row_group (the whole group)
    vs mfdsl's reader (pages up to the sample's batch)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mfdsl.data.parquet import ParquetSource
    from mfdsl.data.writers import write_parquet_split

    rng = np.random.default_rng(0)
    items = [(rng.bytes(size), 0, f"{i}.JPEG") for i in range(rows)]
    os.makedirs(folder, exist_ok=True)
    files = write_parquet_split(items, folder, "train", ["a"], per_shard=rows, rows_per_group=rows)
    picks = rng.integers(0, rows, reads)
    t0 = time.perf_counter()
    for r in picks:
        pf = pq.ParquetFile(files[0])
        pf.read_row_group(0, columns=["image"]).column(0).combine_chunks().field("bytes")[int(r)]
    whole = (time.perf_counter() - t0) / reads * 1e3
    src = ParquetSource(folder, files)
    t0 = time.perf_counter()
    for r in picks:
        src._worker["cursor"] = None  # a random access: no batch to continue from
        src.read(int(r))
    ours = (time.perf_counter() - t0) / reads * 1e3
    del pa
    return {"rows": rows, "value_bytes": size, "read_row_group_ms": whole, "mfdsl_ms": ours}


def _spawn(reader: str, root: str, args: argparse.Namespace, cache: str) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", reader, "--measure-root", root,
           "--samples", str(args.samples), "--rate-samples", str(args.rate_samples)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MFDSL_CACHE=cache)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if p.returncode != 0:
        return {"reader": reader, "error": p.stderr.strip().splitlines()[-1:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="where the data sets are (generated if missing)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=1281)
    ap.add_argument("--val-per-class", type=int, default=50)
    ap.add_argument("--shard-per-class", type=int, default=100)
    ap.add_argument("--no-links", action="store_true", help="skip the symlinked tree")
    ap.add_argument("--samples", type=int, default=80000, help="worker USS: samples read")
    ap.add_argument("--rate-samples", type=int, default=3000)
    ap.add_argument("--readers", default="tv-folder,timm-folder,mfdsl-folder-cold,mfdsl-folder,"
                    "tv-links,mfdsl-links-cold,tv-subset,mfdsl-subset-cold,mfdsl-parquet,"
                    "mfdsl-tar-cold,mfdsl-tar",
                    help="-cold: the reader's cached index (mfdsl's folder manifest, tar "
                         "index) removed first")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--row-group-probe", action="store_true",
                    help="only: ms per random sample from a 100-row group of 110 KB values")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--measure-root", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.measure_root, args.samples,
                                 args.rate_samples)))
        return 0
    root = os.path.abspath(args.root)
    if args.row_group_probe:
        print(json.dumps(row_group_probe(os.path.join(root, "row-group-probe"))))
        return 0
    gen = generate(root, args.classes, args.per_class, args.val_per_class,
                   args.shard_per_class, not args.no_links)
    where = {"tv-folder": "folder/train", "timm-folder": "folder/train",
             "mfdsl-folder": "folder/train", "tv-links": "links/train",
             "mfdsl-links": "links/train", "tv-subset": "subset/train",
             "timm-subset": "subset/train", "mfdsl-subset": "subset/train",
             "mfdsl-parquet": "parquet", "mfdsl-tar-cold": "tar", "mfdsl-tar": "tar"}
    results = []
    cache = os.path.join(root, "mfdsl-cache")
    for reader in args.readers.split(","):
        base = reader.replace("-cold", "")
        if reader.endswith("-cold"):
            import shutil

            shutil.rmtree(cache, ignore_errors=True)
            for name in os.listdir(os.path.join(root, "tar")):
                if name.startswith(".mfdsl-index-"):
                    os.unlink(os.path.join(root, "tar", name))
        r = _spawn(base, os.path.join(root, where[base]), args, cache)
        r["reader"] = reader
        results.append(r)
        print(json.dumps(r), flush=True)
    info = {"command": "python benchmarks/" + os.path.basename(__file__) + " "
                       + shlex.join(sys.argv[1:] if argv is None else argv),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"load {os.getloadavg()[0]:.1f}",
            "generation_s": gen, "results": results}
    print(_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    return 0


def _table(results: List[Dict[str, Any]]) -> str:
    head = ("| reader | samples | index s | index peak / held MB | img/s (1 proc) | "
            "first batch s | worker USS start MB | USS growth MB / samples |")
    rows = [head, "|" + "---|" * 8]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['reader']} | error: {r['error']} |" + " |" * 6)
            continue
        rows.append(f"| {r['reader']} | {r['samples']} | {r['index_s']:.2f} | "
                    f"{r['index_peak_mb']:.0f} / {r['index_held_mb']:.0f} | {r['img_s']:.0f} | {r['first_batch_s']:.2f} | "
                    f"{r.get('worker_uss_start_mb', 0):.0f} | "
                    f"{r.get('worker_uss_growth_mb', float('nan')):+.1f} / "
                    f"{r.get('worker_samples', 0)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
