"""The grammar of the recipe's augmentation string (timm's ``auto_augment`` config).

timm (1.0.31, ``timm/data/auto_augment.py``) reads the string when the first training
batch is built, and is lenient in ways that hide mistakes: a section without a digit is
skipped (``rand-mxx`` is plain RandAugment), a transform-set name it does not know falls
back to the default set, an unknown key fails only then (``rand-w0``), and a later section
overrides an earlier one. This module reads the same grammar strictly, at validate time,
so every such string is refused with the section at fault. Facts from timm; code our own.

* ``rand-...``: RandAugment. Sections: ``m<int>`` magnitude (0..mmax, default 10),
  ``n<int>`` ops per image (default 2), ``p<float>`` probability of each op (0..1),
  ``mstd<float>`` magnitude noise (>= 0; > 100: uniform), ``mmax<int>`` magnitude upper
  bound, ``inc<0|1>`` severity-increasing ops, ``t<name>`` transform set (weights, 3aw, 3a).
* ``augmix-...``: AugMix. ``m<int>`` severity, ``w<int>`` chain width, ``d<int>`` chain
  depth (0: random 1..3), ``a<float>`` mixing alpha (> 0), ``b<0|1>`` blended, ``mstd``.
* otherwise AutoAugment: a policy (original, originalr, v0, v0r, 3a) and ``mstd<float>``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

_LEVEL_DENOM = 10  # timm's magnitude scale: magnitudes are clipped to [0, mmax or 10]
# Transform sets of `rand-t<name>` and how many ops each holds (weighted ones are drawn
# without replacement, so n may not exceed them).
RAND_TRANSFORM_SETS = {"weights": 15, "3aw": 14, "3a": 3}
AUTO_AUGMENT_POLICIES = ("original", "originalr", "v0", "v0r", "3a")
_INT = re.compile(r"[0-9]+")
_FLOAT = re.compile(r"[0-9]+(\.[0-9]*)?([eE]\+?[0-9]+)?")

# key -> (value type, min, max) per scheme; None: no bound.
_KEYS: Dict[str, Dict[str, Tuple[type, Optional[float], Optional[float]]]] = {
    "rand": {"m": (int, 0, None), "n": (int, 1, 100), "p": (float, 0, 1),
             "mstd": (float, 0, None), "mmax": (int, 1, None), "inc": (int, 0, 1)},
    "augmix": {"m": (int, 0, None), "w": (int, 1, 100), "d": (int, 0, 100),
               "a": (float, 0, None), "b": (int, 0, 1), "mstd": (float, 0, None)},
    "auto": {"mstd": (float, 0, None)},
}


class AugmentError(ValueError):
    """An invalid augmentation string; ``hint`` says what would be valid."""

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass
class AugmentConfig:
    scheme: str  # rand | augmix | auto
    policy: Optional[str] = None  # AutoAugment policy
    transforms: Optional[str] = None  # RandAugment transform set
    values: Dict[str, Union[int, float]] = field(default_factory=dict)


def parse_augment(text: str) -> AugmentConfig:
    """Read ``text`` as timm would, refusing what timm would skip, misread or fail on."""
    if not isinstance(text, str) or not text:
        raise AugmentError("the augmentation string is empty",
                           hint="write none for no augmentation, or e.g. 'rand-m9-mstd0.5-inc1'")
    head, *sections = text.split("-")
    if text.startswith("rand"):  # timm's own dispatch: by prefix
        scheme = "rand"
        if head != "rand":
            raise AugmentError(f"'{head}' is not a RandAugment config: the first section must "
                               "be 'rand'", hint="e.g. 'rand-m9-mstd0.5-inc1'")
        cfg = AugmentConfig("rand")
    elif text.startswith("augmix"):
        scheme = "augmix"
        if head != "augmix":
            raise AugmentError(f"'{head}' is not an AugMix config: the first section must be "
                               "'augmix'", hint="e.g. 'augmix-m5-w3'")
        cfg = AugmentConfig("augmix")
    else:
        scheme = "auto"
        if head not in AUTO_AUGMENT_POLICIES:
            raise AugmentError(f"unknown augmentation '{head}'",
                               hint="RandAugment 'rand-m9-mstd0.5-inc1', AugMix 'augmix-m5-w3'"
                                    ", or an AutoAugment policy: "
                                    + ", ".join(AUTO_AUGMENT_POLICIES))
        cfg = AugmentConfig("auto", policy=head)
    keys = _KEYS[scheme]
    seen = set()
    for sec in sections:
        if scheme == "rand" and sec.startswith("t"):
            name = sec[1:]
            if name not in RAND_TRANSFORM_SETS:
                raise AugmentError(f"unknown RandAugment transform set '{name}' in '{sec}'",
                                   hint="t followed by one of "
                                        + ", ".join(RAND_TRANSFORM_SETS))
            key, value = "t", name
        else:
            m = re.match(r"([A-Za-z]*)(.*)$", sec)
            key, raw = m.group(1), m.group(2)
            if key not in keys:
                allowed = ", ".join(list(keys) + (["t<set>"] if scheme == "rand" else []))
                what = f"'{sec}'" if sec else "an empty section (two '-' in a row?)"
                raise AugmentError(f"{what} is not a setting of {_NAMES[scheme]}",
                                   hint=f"settings: {allowed}, each followed by its value, "
                                        "like m9")
            typ, lo, hi = keys[key]
            pattern = _INT if typ is int else _FLOAT
            if not pattern.fullmatch(raw):
                raise AugmentError(f"'{sec}': {key} takes {'an integer' if typ is int else 'a number'}"
                                   f", got '{raw}'" if raw else f"'{sec}': {key} needs a value",
                                   hint=f"e.g. {key}{_EXAMPLE[key]}")
            value = typ(raw)
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise AugmentError(f"'{sec}': {key} is out of range", hint=f"allowed: {rng}")
            if key == "a" and value == 0:
                raise AugmentError(f"'{sec}': the AugMix alpha must be > 0")
        if key in seen:
            raise AugmentError(f"'{key}' is given twice", hint="timm would keep only the last; "
                                                              "remove one")
        seen.add(key)
        if key == "t":
            cfg.transforms = value  # type: ignore[assignment]
        else:
            cfg.values[key] = value
    if scheme == "rand":
        mmax = cfg.values.get("mmax", _LEVEL_DENOM)
        if cfg.values.get("m", _LEVEL_DENOM) > mmax:
            raise AugmentError(f"magnitude m{cfg.values.get('m', _LEVEL_DENOM)} is above the "
                               f"magnitude bound {mmax}: timm would clip it to {mmax}",
                               hint=f"use m0..m{mmax}, or raise mmax")
        n = cfg.values.get("n", 2)
        if cfg.transforms in ("weights", "3aw") and n > RAND_TRANSFORM_SETS[cfg.transforms]:
            raise AugmentError(f"n{n} ops per image from the weighted set '{cfg.transforms}' of "
                               f"{RAND_TRANSFORM_SETS[cfg.transforms]} (drawn without "
                               "replacement)", hint=f"use n <= {RAND_TRANSFORM_SETS[cfg.transforms]}")
    return cfg


_NAMES = {"rand": "RandAugment", "augmix": "AugMix", "auto": "AutoAugment"}
_EXAMPLE = {"m": "9", "n": "2", "p": "0.5", "mstd": "0.5", "mmax": "10", "inc": "1", "w": "3",
            "d": "2", "a": "1.0", "b": "0"}

