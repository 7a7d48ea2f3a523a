"""ImageNet-21K heads loaded into ImageNet-1K models: the official class map.

``data/in21k_to_1k_class_map.json`` is the sail-sg/metaformer release's
``misc/in21k_to_1k_class_map.json`` (Apache-2.0, unchanged): two equal-length lists,
``in1k_idx`` and ``in21k_idx``, pairing 999 of the 1000 ImageNet-1K classes with their
ImageNet-21K (21841-class) index. The release's
``misc/process_21k_ckpt_before_1k_finetuning.py`` rewrites every tensor whose first
dimension is 21841: a zero tensor with 1000 rows, row ``in1k_idx[i]`` taken from row
``in21k_idx[i]``, and the one unmapped class (850) set to the mean of all 21841 rows,
in the tensor's dtype. :func:`remap_in21k_head` does the same, only on the keys whose
model tensor has 1000 rows.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Dict, List, Mapping, Tuple

import torch

IN21K_CLASSES = 21841
IN1K_CLASSES = 1000
CLASS_MAP_FILE = os.path.join(os.path.dirname(__file__), "data", "in21k_to_1k_class_map.json")


@lru_cache(maxsize=1)
def class_map() -> Tuple[Tuple[int, ...], Tuple[int, ...], int]:
    """(in1k indices, their in21k indices, the ImageNet-1K class with no 21K row)."""
    with open(CLASS_MAP_FILE, encoding="utf-8") as f:
        data = json.load(f)
    in1k, in21k = tuple(data["in1k_idx"]), tuple(data["in21k_idx"])
    missing = sorted(set(range(IN1K_CLASSES)) - set(in1k))
    assert len(in1k) == len(in21k) and len(missing) == 1, "corrupt class map"
    return in1k, in21k, missing[0]


def remap_in21k_head(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
                     ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``sd`` with each 21841-row tensor whose ``target`` counterpart has 1000 rows (and
    otherwise the same shape) rewritten as the official script does; the keys rewritten."""
    out, done = dict(sd), []
    for k, v in sd.items():
        want = target.get(k)
        if (want is None or v.dim() == 0 or v.shape[0] != IN21K_CLASSES
                or want.shape[0] != IN1K_CLASSES or tuple(v.shape[1:]) != tuple(want.shape[1:])):
            continue
        in1k, in21k, missing = class_map()
        new = torch.zeros((IN1K_CLASSES,) + tuple(v.shape[1:]), dtype=v.dtype, device=v.device)
        new[list(in1k)] = v[list(in21k)]
        new[missing] = v.mean(0)
        out[k] = new
        done.append(k)
    return out, done
