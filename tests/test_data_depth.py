"""Issue 19: 16-bit and float images are scaled to 8 bits, not clipped to white/black."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pathlib import Path

from mfdsl.data.dataset import _decode as _decode_bytes


def _decode(path: str):
    return _decode_bytes(Path(path).read_bytes())


def _ramp(dtype, top):
    return (np.linspace(0, 1, 32 * 32).reshape(32, 32) * top).astype(dtype)


def test_a_16bit_png_keeps_its_grey_levels(tmp_path):
    p = tmp_path / "g16.png"
    Image.fromarray(_ramp(np.uint16, 65535)).save(p)
    got = np.asarray(_decode(str(p)))
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8
    assert got[0, 0, 0] == 0 and got[-1, -1, 0] == 255
    assert abs(float(got.mean()) - 127.5) < 1.0  # clipping made it ~254


def test_a_float_tiff_in_0_1_keeps_its_grey_levels(tmp_path):
    p = tmp_path / "f.tif"
    Image.fromarray(_ramp(np.float32, 1.0)).save(p)
    got = np.asarray(_decode(str(p)))
    assert abs(float(got.mean()) - 127.5) < 1.0  # clipping made it ~0


def test_a_float_image_without_a_known_scale_is_refused(tmp_path):
    p = tmp_path / "f.tif"
    Image.fromarray(_ramp(np.float32, 4000.0)).save(p)
    with pytest.raises(OSError, match=r"float image with values in \[0, 4000\]"):
        _decode(str(p))


def test_8bit_images_are_unchanged(tmp_path):
    p = tmp_path / "l.png"
    Image.fromarray(_ramp(np.uint8, 255)).save(p)
    got = np.asarray(_decode(str(p)))
    assert (got[..., 0] == _ramp(np.uint8, 255)).all()
