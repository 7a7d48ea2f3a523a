"""Parts of a MetaFormer named in a recipe (``freeze``, ``adapters``), matched by name.

A selection is items separated by spaces or commas. An item is a place, a kind, or
``place.kind``:

* places: ``stem``; ``stageI`` or ``stageI-J`` (the stages' downsampling and blocks);
  ``stageI-J.blockK`` or ``.blockK-L`` (those blocks of each stage); ``output_norm`` (the
  norm after pooling); ``head`` (the classifier);
* kinds: ``mixer`` (token mixers), ``mlp``, ``norm`` (every norm), ``scale`` (layer and
  residual scales), ``downsample`` (the stem's and the stages' strided convs and norms).

``freeze "stem stage0-1"`` freezes the stem and stages 0 and 1; ``adapters "stage2-3.mixer
mlp"`` puts adapters on the attention of stages 2-3 and on every MLP. Names are the
module tree's (``stages.2.blocks.0.mlp.fc1``), timm's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Set, Tuple

KINDS = ("mixer", "mlp", "norm", "scale", "downsample")
_RANGE = r"(\d+)(?:-(\d+))?"
_STAGE = re.compile(rf"^stage{_RANGE}(?:\.block{_RANGE})?$")
_NORM_PARTS = {"norm", "norm1", "norm2", "pre_norm", "post_norm"}


@dataclass(frozen=True)
class Item:
    text: str
    place: Optional[str]  # stem, stage, output_norm, head; None: anywhere
    stages: Optional[Tuple[int, int]] = None
    blocks: Optional[Tuple[int, int]] = None
    kind: Optional[str] = None


def _range(lo: str, hi: Optional[str], text: str) -> Tuple[int, int]:
    a, b = int(lo), int(hi) if hi is not None else int(lo)
    if b < a:
        raise ValueError(f"the range of '{text}' runs backwards ({a}-{b})")
    return a, b


def parse_selection(text: str) -> List[Item]:
    """The items of a selection; ValueError naming the item that is not one."""
    words = [w for w in re.split(r"[\s,]+", text.strip()) if w]
    if not words:
        raise ValueError("names nothing (e.g. 'stem stage0-1', 'stage2-3.mixer', 'mlp')")
    out = []
    for w in words:
        head, dot, tail = w.rpartition(".")
        kind_word = tail if dot and tail in KINDS else None
        where = head if kind_word else w
        if where in KINDS and not kind_word:
            out.append(Item(w, None, kind=where))
            continue
        if where in ("stem", "head", "output_norm"):
            out.append(Item(w, where, kind=kind_word))
            continue
        m = _STAGE.match(where)
        if m is None:
            raise ValueError(
                f"'{w}' is not a part: places are stem, stageI[-J][.blockK[-L]], "
                f"output_norm, head; kinds are {', '.join(KINDS)}; 'place.kind' both")
        stages = _range(m.group(1), m.group(2), w)
        blocks = _range(m.group(3), m.group(4), w) if m.group(3) is not None else None
        out.append(Item(w, "stage", stages, blocks, kind_word))
    return out


def _where(name: str) -> Tuple[Optional[str], Optional[int], Optional[int], Set[str]]:
    """(place, stage, block, kinds) of a parameter or module name."""
    parts = name.split(".")
    kinds: Set[str] = {"norm"} if _NORM_PARTS & set(parts) else set()
    if parts[0] == "stem":
        return "stem", None, None, kinds | {"downsample"}
    if parts[0] == "head":
        if len(parts) > 1 and parts[1] == "norm":
            return "output_norm", None, None, {"norm"}
        return "head", None, None, set()
    if parts[0] == "stages" and len(parts) > 2:
        i = int(parts[1])
        if parts[2] == "downsample":
            return "stage", i, None, kinds | {"downsample"}
        if parts[2] == "blocks" and len(parts) > 3:
            rest = set(parts[4:])
            kinds |= {"mixer"} if "token_mixer" in rest else set()
            kinds |= {"mlp"} if "mlp" in rest else set()
            kinds |= {"scale"} if rest & {"layer_scale1", "layer_scale2", "res_scale1",
                                          "res_scale2"} else set()
            return "stage", i, int(parts[3]), kinds
    return None, None, None, kinds


def matches(item: Item, name: str) -> bool:
    """Whether ``name`` (a parameter or module) lies in ``item``."""
    place, stage, block, kinds = _where(name)
    if item.kind is not None and item.kind not in kinds:
        return False
    if item.place is None:
        return True
    if item.place != place:
        return False
    if item.place != "stage":
        return True
    assert item.stages is not None and stage is not None
    if not item.stages[0] <= stage <= item.stages[1]:
        return False
    if item.blocks is None:
        return True
    return block is not None and item.blocks[0] <= block <= item.blocks[1]


def selected(items: List[Item], names: List[str]) -> Tuple[List[str], List[str]]:
    """(the names any item selects, the items' texts that select none of ``names``)."""
    hit = [n for n in names if any(matches(it, n) for it in items)]
    empty = [it.text for it in items if not any(matches(it, n) for n in names)]
    return hit, empty
