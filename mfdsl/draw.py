"""Draw a spec's architecture the way the paper's Figure 2 does.

Input image -> stem -> one box per stage (mixer pattern, depth, width, resolution) with
the downsampling written on the arrows -> head. The picture is first laid out as plain
shapes (:class:`Diagram`), then written as SVG (no dependencies) or PNG (matplotlib, Agg).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union
from xml.sax.saxutils import escape, quoteattr

from .analysis.labels import call_label, mixer_runs
from .ir import DownsampleSpec, ModelSpec

# Colours per mixer family, so a hybrid's pattern reads at a glance.
MIXER_COLOURS = {
    "identity": "#e0e0e0", "random": "#d9c7ef", "pooling": "#cde8c5",
    "sepconv": "#c6dcf5", "dwconv": "#b7e3e0", "attention": "#f8d3b0",
    "global_filter": "#f3e3a6",
}
OTHER_COLOUR = "#eeeeee"
STAGE_FILL = "#fafafa"
STROKE = "#444444"
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


@dataclass
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: str = "#ffffff"
    stroke: str = STROKE
    radius: float = 6.0
    dashed: bool = False


@dataclass
class Text:
    x: float
    y: float  # baseline
    text: str
    size: float = 13.0
    bold: bool = False
    anchor: str = "middle"  # start | middle | end
    colour: str = "#111111"


@dataclass
class Arrow:
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class Diagram:
    width: float
    height: float
    rects: List[Rect] = field(default_factory=list)
    texts: List[Text] = field(default_factory=list)
    arrows: List[Arrow] = field(default_factory=list)


def _text_width(text: str, size: float) -> float:
    # DejaVu Sans averages ~0.6 em per character; a slight overestimate keeps text inside.
    return len(text) * size * 0.56


def _ds_lines(ds: DownsampleSpec) -> List[str]:
    return [f"conv {ds.kernel}x{ds.kernel}", f"stride {ds.stride}"]


def _res_text(img: Tuple[int, int], res: Tuple[int, int]) -> str:
    parts = []
    for full, r, sym in ((img[0], res[0], "H"), (img[1], res[1], "W")):
        parts.append(f"{sym}/{full // r}" if r and full % r == 0 and full // r > 1 else
                     (sym if r == full else str(r)))
    return f"{parts[0]} x {parts[1]}"


def _mixer_colour(name: str) -> str:
    return MIXER_COLOURS.get(name.split("(")[0].split(" ")[0], OTHER_COLOUR)


@dataclass
class _Column:
    """One box of the row: title, optional coloured block rows, then plain lines."""

    title: str
    lines: List[str]
    blocks: List[str] = field(default_factory=list)  # mixer runs, coloured
    depth: Optional[str] = None
    fill: str = "#ffffff"
    arrow_in: List[str] = field(default_factory=list)  # text on the incoming arrow


def layout(spec: ModelSpec) -> Diagram:
    """Place every box, text and arrow for ``spec`` (which should have passed checks)."""
    res = spec.stage_resolutions()
    cols: List[_Column] = [_Column(
        "Input", [f"{spec.in_chans} x {spec.img_size[0]} x {spec.img_size[1]}"], fill="#ffffff")]
    stem_lines = [f"conv {spec.stem.kernel}x{spec.stem.kernel}, stride {spec.stem.stride}"]
    if spec.stem.post_norm is not None:
        stem_lines.append(f"+ {call_label(spec.stem.post_norm, False)}")
    stem_lines.append(f"{spec.stages[0].width} ch, {_res_text(spec.img_size, res[0])}")
    cols.append(_Column("Stem", stem_lines, fill="#f0f0f0"))
    for i, st in enumerate(spec.stages):
        runs = mixer_runs(st)
        arrow = _ds_lines(st.downsample) if i > 0 and st.downsample is not None else []
        h, w = res[i]
        cols.append(_Column(
            f"Stage {i}", [f"width {st.width}", _res_text(spec.img_size, res[i]),
                           f"({h} x {w})"],
            blocks=runs, depth=f"x{st.depth}", fill=STAGE_FILL, arrow_in=arrow))
    head_lines = ["global avg pool", call_label(spec.output_norm, False),
                  f"{call_label(spec.head, False)} head", f"{spec.num_classes} classes"]
    cols.append(_Column("Head", head_lines, fill="#f0f0f0"))
    return _place(spec, cols)


def _place(spec: ModelSpec, cols: Sequence[_Column]) -> Diagram:
    pad, gap, title_size, line_size, block_size = 20.0, 78.0, 15.0, 12.0, 13.0
    line_h, block_h = 17.0, 22.0
    max_blocks = max(len(c.blocks) for c in cols)
    max_lines = max(len(c.lines) for c in cols)
    box_h = 34 + (max_blocks * block_h + 26 if max_blocks else 0) + max_lines * line_h + 12
    top = 54.0
    d = Diagram(0, 0)
    d.texts.append(Text(pad, 30, f"{spec.name}", 17, True, "start"))
    d.texts.append(Text(pad, 46, "token mixer per block, depth, width and feature-map "
                                 "size of each stage", 11, False, "start", "#555555"))
    x = pad
    prev_right: Optional[float] = None
    mid_y = top + box_h / 2
    for c in cols:
        texts = [c.title] + c.lines + c.blocks
        w = max(130.0, max(_text_width(t, line_size) for t in texts) + 28,
                _text_width(c.title, title_size) + 28)
        if c.blocks:
            w = max(w, max(_text_width(b, block_size) for b in c.blocks) + 44)
        if prev_right is not None:
            d.arrows.append(Arrow(prev_right + 4, mid_y, x - 4, mid_y))
            for k, t in enumerate(c.arrow_in):
                ty = mid_y - 8 - 13 * (len(c.arrow_in) - 1 - k)
                d.texts.append(Text((prev_right + x) / 2, ty, t, 10, False, "middle", "#333333"))
        d.rects.append(Rect(x, top, w, box_h, c.fill, dashed=c.title == "Input"))
        d.texts.append(Text(x + w / 2, top + 22, c.title, title_size, True))
        y = top + 34
        if c.blocks:
            inner_h = len(c.blocks) * block_h + 8
            d.rects.append(Rect(x + 10, y, w - 20, inner_h, "#ffffff", radius=4))
            for k, b in enumerate(c.blocks):
                by = y + 4 + k * block_h
                d.rects.append(Rect(x + 14, by, w - 28, block_h - 3, _mixer_colour(b),
                                    stroke="#888888", radius=3))
                d.texts.append(Text(x + w / 2, by + 14, b, block_size))
            # The depth sits on the block group's corner, like the paper's "x L".
            d.texts.append(Text(x + w - 10, y + inner_h + 14, f"{c.depth} blocks", 11, True,
                                "end", "#333333"))
            y += inner_h + 26
        # Lines start at the same height in every box so the rows read across.
            y = top + 34 + max_blocks * block_h + 34
        else:
            y += 6
        if c.title == "Input":
            text_end = y + len(c.lines) * line_h
            _image_icon(d, x + w / 2, (text_end + top + box_h) / 2, (w - 60) / 2)
        for k, line in enumerate(c.lines):
            d.texts.append(Text(x + w / 2, y + 12 + k * line_h, line, line_size))
        prev_right = x + w
        x += w + gap
    d.width = x - gap + pad
    d.height = top + box_h + pad
    return d


def _image_icon(d: Diagram, cx: float, cy: float, half: float) -> None:
    """Three offset squares standing for the image's channels."""
    half = min(half, 34.0)
    for k, colour in enumerate(("#f4b6b6", "#b9e3b5", "#b8cdf2")):
        off = (1 - k) * 7.0
        d.rects.append(Rect(cx - half + off, cy - half - off, 2 * half, 2 * half, colour,
                            stroke="#777777", radius=2))


# --- SVG ------------------------------------------------------------------------------

def to_svg(d: Diagram) -> str:
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{d.width:.0f}" '
        f'height="{d.height:.0f}" viewBox="0 0 {d.width:.0f} {d.height:.0f}" '
        f'font-family={quoteattr(FONT)}>',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        f'fill="{STROKE}"/></marker></defs>',
        f'<rect x="0" y="0" width="{d.width:.0f}" height="{d.height:.0f}" fill="#ffffff"/>',
    ]
    for r in d.rects:
        dash = ' stroke-dasharray="5 3"' if r.dashed else ""
        out.append(f'<rect x="{r.x:.1f}" y="{r.y:.1f}" width="{r.w:.1f}" height="{r.h:.1f}" '
                   f'rx="{r.radius:.0f}" fill="{r.fill}" stroke="{r.stroke}" '
                   f'stroke-width="1.2"{dash}/>')
    for a in d.arrows:
        out.append(f'<line x1="{a.x1:.1f}" y1="{a.y1:.1f}" x2="{a.x2:.1f}" y2="{a.y2:.1f}" '
                   f'stroke="{STROKE}" stroke-width="1.6" marker-end="url(#arrow)"/>')
    for t in d.texts:
        weight = ' font-weight="bold"' if t.bold else ""
        out.append(f'<text x="{t.x:.1f}" y="{t.y:.1f}" font-size="{t.size:.0f}" '
                   f'text-anchor="{t.anchor}" fill="{t.colour}"{weight}>{escape(t.text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- PNG ------------------------------------------------------------------------------

def to_png(d: Diagram, path: str, dpi: int = 150) -> None:
    """Render with matplotlib's Agg backend; one diagram unit = one point."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(d.width / 72, d.height / 72), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, d.width)
    ax.set_ylim(d.height, 0)  # SVG's y axis points down
    ax.axis("off")
    for r in d.rects:
        ax.add_patch(FancyBboxPatch(
            (r.x, r.y), r.w, r.h, boxstyle=f"round,pad=0,rounding_size={r.radius}",
            facecolor=r.fill, edgecolor=r.stroke, linewidth=1.0,
            linestyle="--" if r.dashed else "-"))
    for a in d.arrows:
        ax.add_patch(FancyArrowPatch((a.x1, a.y1), (a.x2, a.y2), arrowstyle="-|>",
                                     mutation_scale=12, color=STROKE, linewidth=1.3))
    for t in d.texts:
        ax.text(t.x, t.y, t.text, fontsize=t.size * 0.9, ha={"start": "left", "middle": "center",
                "end": "right"}[t.anchor], va="baseline", color=t.colour,
                fontweight="bold" if t.bold else "normal", family="DejaVu Sans")
    fig.savefig(path, dpi=dpi, facecolor="white", format="png")


def draw(spec: ModelSpec, path: Union[str, "os.PathLike[str]"]) -> str:
    """Write the drawing of ``spec`` to ``path`` (.svg or .png); returns the format."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".svg", ".png"):
        raise ValueError(f"cannot draw to '{ext or path}': use a .svg or .png file name")
    from . import fsio

    d = layout(spec)
    if ext == ".svg":
        fsio.write_atomic(path, to_svg(d))
    else:
        fsio.write_atomic_with(path, lambda tmp: to_png(d, tmp))
    return ext[1:]
