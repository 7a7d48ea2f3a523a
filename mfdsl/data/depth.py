"""Images deeper than 8 bits per channel, brought to the 8-bit RGB the pipeline uses.

Pillow's ``convert("RGB")`` clips instead of scaling: a 16-bit greyscale PNG (mode ``I;16``
or ``I``) becomes almost all white, a float TIFF (mode ``F``, values in [0, 1]) all black.
Here 16-bit values are scaled by 255/65535 and floats in [0, 1] by 255. A 32-bit integer
or float image outside those ranges has no scale to assume: it is refused (the loader
skips it as unreadable, with this reason) rather than trained on as a wrong picture.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb8(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, scaling high-bit-depth values instead of clipping them."""
    mode = img.mode
    if mode in _16BIT or mode in ("I", "F"):
        a = np.asarray(img)
        if mode == "F":
            a = a.astype(np.float64)
            if not np.isfinite(a).all() or a.size and (a.min() < 0.0 or a.max() > 1.0):
                lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if a.size else (0, 0)
                raise OSError(f"a float image with values in [{lo:g}, {hi:g}]: only [0, 1] "
                              "has a known scale (save it as 8- or 16-bit)")
            a8 = np.rint(a * 255.0)
        else:
            a = a.astype(np.int64)
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise OSError(f"a 32-bit integer image with values in [{a.min()}, {a.max()}]: "
                              "no known scale (save it as 8- or 16-bit)")
            a8 = np.rint(a * (255.0 / 65535.0))
        return Image.fromarray(a8.astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")
