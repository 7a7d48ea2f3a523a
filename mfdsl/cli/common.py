"""Option parsing shared by the command modules."""
from __future__ import annotations

from typing import Optional, Tuple

import click


def parse_img_size(text: Optional[str], minimum: int = 1) -> Optional[Tuple[int, int]]:
    """``384``, ``384x384`` or ``384,256`` -> (H, W); a click error otherwise."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a size like 224 or 256x192") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < minimum:
        raise click.BadParameter(
            f"'{text}' is not a size like 224 or 256x192 (each >= {minimum})")
    return vals[0], vals[1]
