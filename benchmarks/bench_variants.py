"""Speed variants against their reference layers, eager and torch.compile'd, side by side.

    python benchmarks/bench_variants.py --threads 2            # CPU, fp32
    python benchmarks/bench_variants.py --device cuda --dtype bf16

For each variant in ``mfdsl.layers.variants.VARIANTS`` one layer is built at a shape of
caformer_s18 / convformer_s18 / poolformerv2_s12 at 224 px, batch 8 (``--batch``), and timed in
interleaved rounds (reference, variant, reference, ...) for a training step of the layer
(forward + backward) and for inference; the median per case is printed with the ratio
variant / reference. ``VARIANTS_FOR`` in mfdsl/layers/variants.py is chosen from this.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from mfdsl.layers.activations import StarReLU  # noqa: E402
from mfdsl.layers.block import Block, Mlp  # noqa: E402
from mfdsl.layers.mixers import DepthwiseConv, Pooling, SepConv  # noqa: E402
from mfdsl.layers.norms import LayerNorm, ModifiedLayerNorm  # noqa: E402
from mfdsl.layers.variants import VARIANTS, select_variants  # noqa: E402
from mfdsl.bench.throughput import interleaved_ms  # noqa: E402


def cases():
    """(variant, layer maker, input shape (B, H, W, C), what it stands for)."""
    star = lambda d: StarReLU()  # noqa: E731
    return [
        ("pointwise_conv1x1", lambda: Mlp(64, 256, nn.GELU()), (8, 56, 56, 64),
         "MLP 64->256->64 at 56x56 (stage 0)"),
        ("mlp_starrelu_into_fc2", lambda: Mlp(64, 256, StarReLU()), (8, 56, 56, 64),
         "StarReLU MLP at 56x56 (stage 0)"),
        ("sepconv_starrelu_into_convs", lambda: SepConv(64, 2, 7, star), (8, 56, 56, 64),
         "ConvFormer sepconv at 56x56 (stage 0)"),
        ("modified_layernorm_groupnorm", lambda: ModifiedLayerNorm(64), (8, 56, 56, 64),
         "PoolFormerV2 norm at 56x56"),
        ("modified_layernorm_groupnorm_op", lambda: ModifiedLayerNorm(64), (8, 56, 56, 64),
         "PoolFormerV2 norm at 56x56"),
        ("starrelu_addcmul", lambda: StarReLU(), (8, 56, 56, 256), "StarReLU, 256 ch"),
        ("depthwise_backward_by_shifts", lambda: DepthwiseConv(128, 7, bias=False),
         (8, 56, 56, 128), "ConvFormer 7x7 depthwise conv at 56x56 (stage 0)"),
        ("block_addcmul", lambda: Block(320, LayerNorm(320), Pooling(), LayerNorm(320),
                                        Mlp(320, 1280, nn.GELU()), res_scale=1.0),
         (8, 14, 14, 320), "block with res_scale at 14x14 (stage 2)"),
        # In a whole block: what the pool fuses into (the next norm) is what is measured.
        ("pooling_as_depthwise_conv", lambda: Block(64, ModifiedLayerNorm(64), Pooling(),
                                                    ModifiedLayerNorm(64),
                                                    Mlp(64, 256, StarReLU()), res_scale=1.0),
         (8, 56, 56, 64), "PoolFormerV2 block at 56x56 (stage 0)"),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8, help="batch of every layer's input "
                    "(GPU: 64-128, the per-device batch of the recipes)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    amp = (torch.autocast(dev.type, dtype=torch.bfloat16) if args.dtype == "bf16"
           else torch.autocast(dev.type, enabled=False))
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, "
          f"{args.dtype}, batch {args.batch}; median of {args.rounds} interleaved rounds x "
          f"{args.iters}")
    print("| variant | layer | mode | task | reference ms | variant ms | variant/reference |")
    print("|---|---|---|---|---|---|---|")
    for name, make, shape, what in cases():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        ref = make().to(dev)
        fast = copy.deepcopy(ref)
        select_variants(fast, [name])
        assert type(fast) is VARIANTS[name].fast or any(
            type(m) is VARIANTS[name].fast for m in fast.modules()), name
        x = torch.randn(args.batch, *shape[1:], device=dev)
        modes = ["eager"] + ([] if args.no_compile else ["compiled"])
        for mode in modes:
            fns = {}
            for label, m in (("reference", ref), ("variant", fast)):
                fns[label] = torch.compile(m) if mode == "compiled" else m
            for task in ("train", "infer"):
                def step(fn):
                    if task == "train":
                        xx = x.detach().requires_grad_()
                        with amp:
                            y = fn(xx)
                        y.float().sum().backward()
                    else:
                        with torch.inference_mode(), amp:
                            fn(x)
                t0 = time.perf_counter()
                for fn in fns.values():
                    for _ in range(2):
                        step(fn)
                warm = time.perf_counter() - t0
                t = interleaved_ms({k: (lambda fn=fn: step(fn)) for k, fn in fns.items()},
                                   args.rounds, args.iters, args.device)
                r, v = statistics.median(t["reference"]), statistics.median(t["variant"])
                rows.append(dict(variant=name, layer=what, mode=mode, task=task,
                                 reference_ms=r, variant_ms=v, warmup_s=warm))
                print(f"| {name} | {what} | {mode} | {task} | {r:.2f} | {v:.2f} | "
                      f"{v / r:.2f} |", flush=True)
    if args.json:
        from mfdsl.fsio import write_atomic

        write_atomic(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
