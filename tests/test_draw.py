"""The architecture drawing: well-formed SVG with every stage's label, a valid PNG."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner
from PIL import Image

from mfdsl.cli import main
from mfdsl.draw import draw, layout, to_svg
from mfdsl.ir import StageSpec, call
from specs_py import paper_spec

SVG_NS = "{http://www.w3.org/2000/svg}"


def _texts(svg: str):
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    return [t.text for t in root.iter(f"{SVG_NS}text")]


def test_svg_is_well_formed_and_labels_every_stage(tmp_path):
    spec = paper_spec("caformer_s18")
    out = tmp_path / "caformer.svg"
    draw(spec, out)
    texts = _texts(out.read_text())
    for label in ("Input", "Stem", "Stage 0", "Stage 1", "Stage 2", "Stage 3", "Head"):
        assert label in texts
    for width in (64, 128, 320, 512):
        assert f"width {width}" in texts
    assert texts.count("sepconv") == 2 and texts.count("attention") == 2
    assert "x9 blocks" in texts and "H/32 x W/32" in texts and "(7 x 7)" in texts
    # Three downsampling arrows between stages, plus input->stem, stem->stage 0, ->head.
    assert texts.count("conv 3x3") == 3
    assert len(ET.fromstring(out.read_text()).findall(f"{SVG_NS}line")) == 6


def test_pattern_stage_and_escaping():
    spec = paper_spec("caformer_s18")
    spec.stages[2] = StageSpec(
        depth=9, width=320, res_scale=1.0, downsample=spec.stages[2].downsample,
        mixers=[call("sepconv"), call("sepconv"), call("attention", head_dim=64)])
    spec.name = "hybrid <&> test"
    svg = to_svg(layout(spec))
    texts = _texts(svg)  # parses although the name holds XML metacharacters
    assert "sepconv x2" in texts and "attention(head_dim=64)" in texts
    assert "hybrid <&> test" in texts


def test_boxes_fit_their_text():
    d = layout(paper_spec("poolformerv2_s12"))
    assert d.width > 0 and d.height > 0
    for r in d.rects:
        assert 0 <= r.x and r.x + r.w <= d.width and r.y + r.h <= d.height


def test_png_is_a_valid_image(tmp_path):
    out = tmp_path / "randformer.png"
    draw(paper_spec("randformer_s12"), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        w, h = im.size
        assert w > 1000 and h > 200
        # Not blank: the drawing puts dark strokes on a white background.
        assert min(im.convert("L").getextrema()) < 100


def test_bad_extension_and_cli(tmp_path):
    with pytest.raises(ValueError, match="svg or .png"):
        draw(paper_spec("caformer_s18"), tmp_path / "x.pdf")
    runner = CliRunner()
    out = tmp_path / "c.svg"
    res = runner.invoke(main, ["draw", "specs/caformer_s18.yaml", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "Stage 3" in _texts(out.read_text())
    res = runner.invoke(main, ["draw", "specs/caformer_s18.yaml", "-o", str(tmp_path / "c.gif")])
    assert res.exit_code == 2 and ".svg or .png" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nstages:\n  - {mixer: pooling, depth: 0, width: 64}\n")
    res = runner.invoke(main, ["draw", str(bad), "-o", str(out)])
    assert res.exit_code == 2 and "error" in res.stderr
