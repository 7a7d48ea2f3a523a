"""Option parsing shared by the command modules."""
from __future__ import annotations

from typing import List, Optional, Tuple

import click


def _parse_dims(text: str, counts: Tuple[int, ...], minimum: int, like: str) -> List[int]:
    # The one reader of sizes on the command line: --img-size and --input differ only in
    # how many numbers they take, so they refuse bad values in the same words.
    parts = text.strip().lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not {like}") from None
    if len(vals) not in counts:
        raise click.BadParameter(f"'{text}' is not {like}")
    if min(vals) < minimum:
        raise click.BadParameter(f"'{text}' is not {like}: every number must be >= {minimum}")
    return vals


def parse_img_size(text: Optional[str], minimum: int = 1) -> Optional[Tuple[int, int]]:
    """``384``, ``384x384`` or ``384,256`` -> (H, W); a click error otherwise."""
    if text is None:
        return None
    vals = _parse_dims(text, (1, 2), minimum, "a size like 224 or 256x192")
    if len(vals) == 1:
        vals = vals * 2
    return vals[0], vals[1]


def parse_input(text: Optional[str]) -> Optional[Tuple[int, int, int]]:
    """``3x800x1333`` (channels x height x width, the spec's ``input`` form) -> (C, H, W)."""
    if text is None:
        return None
    c, h, w = _parse_dims(text, (3,), 1, "an input like 3x800x1333 (channels x height x width)")
    return c, h, w
