"""The ``.mf`` vocabulary: which keyword sets which IR field, read and printed alike.

Derived from the IR's field metadata (:func:`mfdsl.ir.setting`): a new stage setting, eval,
limit or recipe field needs no entry here. Both the reader (:mod:`.mf_reader`) and the
canonical printer (:mod:`mfdsl.emit.mf`) walk these tables.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..ir import (STAGE_SETTINGS, DownsampleSpec, EvalSpec, LimitsSpec, RecipeSpec, Setting,
                  StageSpec, setting_of, settings_of)

# Bare words that are values, not names.
RESERVED_NAMES = {"true": True, "false": False, "none": None}

# `key { k v ... }` blocks: keyword -> (ModelSpec field, IR class), in print order.
BLOCKS: Dict[str, Tuple[str, type]] = {
    "eval": ("eval", EvalSpec),
    "limits": ("limits", LimitsSpec),
    "train": ("recipe", RecipeSpec),
}


def stage_words() -> Tuple[str, ...]:
    """The words that start a stage setting (a group word once), in print order."""
    out: List[str] = []
    for name in STAGE_SETTINGS:
        meta = setting_of(StageSpec, name)
        word = meta.group or meta.key or name
        if word not in out:
            out.append(word)
    return tuple(out)


def stage_groups() -> Dict[str, Dict[str, str]]:
    """group word -> {sub-key: StageSpec field}: `mlp ratio 4 act gelu`."""
    out: Dict[str, Dict[str, str]] = {}
    for name in STAGE_SETTINGS:
        meta = setting_of(StageSpec, name)
        if meta.group:
            out.setdefault(meta.group, {})[meta.key or name] = name
    return out


def stage_field(word: str) -> str:
    """The StageSpec field of an ungrouped stage-setting word."""
    for name in STAGE_SETTINGS:
        meta = setting_of(StageSpec, name)
        if not meta.group and (meta.key or name) == word:
            return name
    raise KeyError(word)


def block_keys(cls: type) -> Dict[str, Tuple[str, Setting]]:
    """key written in a block -> (field, Setting)."""
    return {meta.key or name: (name, meta) for name, meta, _ in settings_of(cls)}


def conv_args() -> Dict[str, Setting]:
    """The `conv(...)` arguments of a downsampling: its non-component settings."""
    return {name: meta for name, meta, _ in settings_of(DownsampleSpec) if not meta.is_component}


def downsample_norms() -> Tuple[str, ...]:
    """The `pre_norm X post_norm Y` words after a downsampling's conv."""
    return tuple(name for name, meta, _ in settings_of(DownsampleSpec) if meta.is_component)


STAGE_WORDS = stage_words()
STAGE_GROUPS = stage_groups()
DOWNSAMPLE_NORMS = downsample_norms()
CONV_ARGS = conv_args()
# Every word a model-level line may start with, in canonical print order.
MODEL_KEYWORDS: Tuple[str, ...] = ("input", "classes", "stem", *STAGE_WORDS, "downsample",
                                   "stage", "output_norm", "head", "dense", *BLOCKS)
# Settings a stage line may carry; the same words at model level set every stage.
STAGE_SETTING_WORDS: Tuple[str, ...] = (*STAGE_WORDS, "downsample")
