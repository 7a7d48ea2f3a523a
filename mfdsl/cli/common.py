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


def check_at_img_size(spec, img_size: Optional[Tuple[int, int]]):
    """Check ``spec``, at ``img_size`` if one was given on the command line.

    An error located at the file's `input` line is re-attributed to --img-size (with no
    source line): the file says something else, so pointing there would mislead.
    """
    from ..api import check_spec as check
    from ..errors import SpecError
    from ..ir import with_overrides

    if img_size is None:
        return check(spec)
    written = spec.loc("img_size")
    try:
        return check(with_overrides(spec, img_size=img_size))
    except SpecError as err:
        if err.loc is not None and err.loc == written:
            raise SpecError(f"--img-size {img_size[0]}x{img_size[1]}: {err.message}",
                            path=err.path, hint=err.hint) from None
        raise
