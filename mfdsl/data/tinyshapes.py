"""TinyShapes: the small offline image dataset ``mfdsl train`` uses when no ``--data`` is given.

Ten classes of procedurally drawn shapes and textures (random colours, sizes, positions,
rotations and noisy backgrounds), written as real PNG and JPEG files in the ImageFolder
layout (``train/<class>/*.png``, ``val/<class>/*.jpg``) so they go through exactly the same
decode -> transform pipeline as ImageNet. Generation is deterministic: the same arguments
always give byte-identical files.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFilter

from ..errors import UserError
from ..resources import default_cache_dir

# Bump when the drawing code changes, so a stale cache is not reused.
VERSION = 1
CLASSES: Tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross",
    "ring", "hstripes", "vstripes", "checker", "dots",
)
DEFAULT_TRAIN_PER_CLASS = 150
DEFAULT_VAL_PER_CLASS = 50
DEFAULT_SIZE = 64

Color = Tuple[int, int, int]


def _color(rng: random.Random) -> Color:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def _contrasting(rng: random.Random, bg: Color) -> Color:
    # Foreground far enough from the background that the shape is visible.
    while True:
        c = _color(rng)
        if sum(abs(a - b) for a, b in zip(c, bg)) > 200:
            return c


def _background(rng: random.Random, size: int) -> Tuple[Image.Image, Color]:
    bg = _color(rng)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    # Sparse speckle noise: the classes must be told apart by shape, not by flat colour.
    for _ in range(size * size // 24):
        x, y = rng.randrange(size), rng.randrange(size)
        shade = tuple(max(0, min(255, v + rng.randint(-40, 40))) for v in bg)
        draw.point((x, y), fill=shade)
    return img, bg


def _rotated(points: Sequence[Tuple[float, float]], cx: float, cy: float,
             angle: float) -> List[Tuple[float, float]]:
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


def _shape_geometry(rng: random.Random, size: int) -> Tuple[float, float, float, float]:
    r = rng.uniform(0.22, 0.40) * size
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    return cx, cy, r, rng.uniform(0, 2 * math.pi)


def _draw_circle(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    cx, cy, r, _ = _shape_geometry(rng, size)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)


def _draw_square(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    cx, cy, r, a = _shape_geometry(rng, size)
    h = r * 0.8
    d.polygon(_rotated([(-h, -h), (h, -h), (h, h), (-h, h)], cx, cy, a), fill=fg)


def _draw_triangle(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    cx, cy, r, a = _shape_geometry(rng, size)
    pts = [(r * math.cos(t), r * math.sin(t)) for t in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    d.polygon(_rotated(pts, cx, cy, a), fill=fg)


def _draw_star(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    cx, cy, r, a = _shape_geometry(rng, size)
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.42
        t = k * math.pi / 5
        pts.append((rad * math.cos(t), rad * math.sin(t)))
    d.polygon(_rotated(pts, cx, cy, a), fill=fg)


def _draw_cross(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    cx, cy, r, a = _shape_geometry(rng, size)
    w = r * 0.3
    bar = [(-r, -w), (r, -w), (r, w), (-r, w)]
    d.polygon(_rotated(bar, cx, cy, a), fill=fg)
    d.polygon(_rotated(bar, cx, cy, a + math.pi / 2), fill=fg)


def _draw_ring(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    cx, cy, r, _ = _shape_geometry(rng, size)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fg, width=max(2, int(r * 0.3)))


def _stripes(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color,
             vertical: bool) -> None:
    period = rng.randint(max(4, size // 10), max(6, size // 4))
    width = max(1, int(period * rng.uniform(0.35, 0.6)))
    for p in range(rng.randrange(period) - period, size, period):
        box = (p, 0, p + width - 1, size) if vertical else (0, p, size, p + width - 1)
        d.rectangle(box, fill=fg)


def _draw_hstripes(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    _stripes(d, rng, size, fg, vertical=False)


def _draw_vstripes(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    _stripes(d, rng, size, fg, vertical=True)


def _draw_checker(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    cell = rng.randint(max(3, size // 12), max(5, size // 5))
    ox, oy = rng.randrange(cell), rng.randrange(cell)
    for i, y in enumerate(range(-oy, size, cell)):
        for j, x in enumerate(range(-ox, size, cell)):
            if (i + j) % 2 == 0:
                d.rectangle((x, y, x + cell - 1, y + cell - 1), fill=fg)


def _draw_dots(d: ImageDraw.ImageDraw, rng: random.Random, size: int, fg: Color) -> None:
    for _ in range(rng.randint(6, 14)):
        r = rng.uniform(0.04, 0.08) * size
        x, y = rng.uniform(r, size - r), rng.uniform(r, size - r)
        d.ellipse((x - r, y - r, x + r, y + r), fill=fg)


_DRAW: Dict[str, Callable[[ImageDraw.ImageDraw, random.Random, int, Color], None]] = {
    "circle": _draw_circle, "square": _draw_square, "triangle": _draw_triangle,
    "star": _draw_star, "cross": _draw_cross, "ring": _draw_ring,
    "hstripes": _draw_hstripes, "vstripes": _draw_vstripes, "checker": _draw_checker,
    "dots": _draw_dots,
}


def draw_image(class_name: str, rng: random.Random, size: int = DEFAULT_SIZE) -> Image.Image:
    """One RGB image of ``class_name`` drawn with ``rng``."""
    img, bg = _background(rng, size)
    _DRAW[class_name](ImageDraw.Draw(img), rng, size, _contrasting(rng, bg))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.0)))
    return img


def generate(root: os.PathLike, train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
             val_per_class: int = DEFAULT_VAL_PER_CLASS, size: int = DEFAULT_SIZE,
             classes: Sequence[str] = CLASSES, seed: int = 0) -> Path:
    """Write the dataset to ``root`` (train/ and val/ ImageFolder trees); returns ``root``.

    Train images are PNG, val images JPEG (quality 95), so both decoders are exercised.
    """
    root = Path(root)
    for split, count, ext in (("train", train_per_class, "png"), ("val", val_per_class, "jpg")):
        for ci, name in enumerate(classes):
            if name not in _DRAW:
                raise ValueError(f"unknown TinyShapes class '{name}'")
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                # Seed per image: any subset of the data is reproducible on its own.
                rng = random.Random(f"{seed}/{split}/{name}/{i}")
                img = draw_image(name, rng, size)
                path = folder / f"{name}_{i:04d}.{ext}"
                if ext == "png":
                    img.save(path, format="PNG")
                else:
                    img.save(path, format="JPEG", quality=95)
    return root


class CacheError(UserError, OSError):
    """The dataset cache cannot be made; ``str()`` is the whole message (exit code 2)."""

    def __str__(self) -> str:
        return str(self.args[0])


def tinyshapes_folder(cache_dir: Optional[os.PathLike] = None) -> Path:
    """Where the embedded dataset is (or will be) kept, and whether it is complete there."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / f"tinyshapes-v{VERSION}"


def tinyshapes_complete(folder: Path) -> bool:
    return (folder / "COMPLETE").is_file()


def ensure_tinyshapes(cache_dir: Optional[os.PathLike] = None) -> Path:
    """The embedded dataset's folder, generated on first use.

    Safe when several processes (DDP ranks) call it at once: each generates into a private
    temporary folder and the first to rename it into place wins.
    """
    target = tinyshapes_folder(cache_dir)
    cache, marker = target.parent, target / "COMPLETE"
    if tinyshapes_complete(target):
        return target
    if cache.exists() and not cache.is_dir():
        raise CacheError(f"cannot make the embedded dataset in {cache}: it is a file, not a "
                         "folder; set MFDSL_CACHE to a writable folder (or give --data)")
    try:
        return _generate_into(cache, target, marker)
    except OSError as exc:
        raise CacheError(f"cannot make the embedded dataset in {cache}: "
                         f"{exc.strerror or exc}; set MFDSL_CACHE to a writable folder (or "
                         "give --data)") from None


def _generate_into(cache: Path, target: Path, marker: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tinyshapes-", dir=cache))
    # mkdtemp makes it 0700: a shared cache must be readable by the others using it.
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    try:
        generate(tmp)
        (tmp / "COMPLETE").write_text(f"tinyshapes v{VERSION}\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not marker.is_file():  # a half-made target from a crashed run: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
