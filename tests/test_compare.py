"""mfdsl compare: entries, Pareto fronts per dataset, outputs written safely."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from mfdsl.compare import Entry, gather, mark_pareto
from mfdsl.paper_table import PAPER_TABLE

from conftest import SPECS, cli as run


def fake_run(folder: Path, spec: str, top1: float, embedded: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "spec.mf").write_text((SPECS / spec).read_text())
    (folder / "summary.json").write_text(json.dumps({"final_val": {"top1": top1}}))
    (folder / "recipe.json").write_text(json.dumps({"resolved": {
        "embedded_data": embedded, "data": "/x/tinyshapes" if embedded else "/data/imagenet"}}))
    return folder


def E(label, top1, macs, params=1, img_s=None, dataset="d") -> Entry:
    return Entry(label, "run", label, params, 0, macs, top1=top1, dataset=dataset, img_s=img_s)


def test_pareto_front_per_axis_and_dataset() -> None:
    es = [E("a", 70, 10, params=5, img_s=100), E("b", 80, 20, params=1, img_s=50),
          E("c", 75, 30, params=9, img_s=200), E("d", 80, 25, params=2, img_s=10),
          E("other", 99, 1000, params=1000, img_s=1, dataset="elsewhere")]
    mark_pareto(es)
    front = {a: {e.label for e in es if e.pareto.get(a)} for a in ("macs", "params", "img_s")}
    assert front["macs"] == {"a", "b", "other"}  # d: as accurate as b, dearer
    assert front["params"] == {"b", "other"}
    assert front["img_s"] == {"b", "c", "other"}  # a: slower and less accurate than c


def test_gather_spec_run_and_zoo_name(tmp_path: Path) -> None:
    spec = gather(str(SPECS / "demo_tiny.mf"))
    assert (spec.kind, spec.top1, spec.params, spec.macs) == ("spec", None, 255798, 11579328)
    r = gather(str(fake_run(tmp_path / "r", "demo_tiny.mf", 81.5)))
    assert (r.kind, r.top1, r.dataset, r.top1_from) == (
        "run", 81.5, "TinyShapes", "summary.json final_val.top1")
    zoo = gather("caformer_s18")
    assert zoo.macs == 4_107_000_000 or abs(zoo.macs / 4.107e9 - 1) < 1e-3
    with pytest.raises(Exception, match="no such spec file, run folder or zoo model"):
        gather("nope_s99")


def test_cli_writes_table_csv_json_png_and_never_overwrites(tmp_path: Path) -> None:
    a = fake_run(tmp_path / "runs" / "scratch", "hybrid_tiny_attn.mf", 70.0)
    b = fake_run(tmp_path / "runs" / "inherit", "hybrid_tiny_attn.mf", 80.0)
    out = tmp_path / "cmp"
    r = run("compare", str(a), str(b), str(SPECS / "demo_tiny.mf"), "--paper",
            "--seconds", "0", "--rounds", "1", "--batch", "2", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "median of 1 side-by-side rounds" in r.output
    assert "2 datasets (ImageNet-1K, TinyShapes)" in r.output
    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    # every paper model with a published top-1 (the 384 fine-tunes list MACs only)
    assert len(rows) == 3 + sum(r.top1 is not None for r in PAPER_TABLE.values())
    by = {row["label"]: row for row in rows}
    assert by["inherit"]["pareto_macs"] == "True" and by["scratch"]["pareto_macs"] == "False"
    assert float(by["demo_tiny"]["img_s"]) > 0 and by["caformer_s18"]["img_s"] == ""
    assert by["caformer_s18"]["dataset"] == "ImageNet-1K"
    assert by["caformer_s18"]["top1"] == PAPER_TABLE["caformer_s18"].top1 == "83.6"
    data = json.loads((out / "compare.json").read_text())
    assert data["context"]["batch"] == 2 and "machine" in data["context"]
    png = (out / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    # a second run does not overwrite, and says so before measuring anything
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    r = run("compare", str(a), "--no-throughput", "-o", str(out))
    assert r.exit_code == 2 and "would overwrite" in r.output
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    os.chmod(out / "compare.csv", 0o640)
    r = run("compare", str(a), "--no-throughput", "-o", str(out), "--force")
    assert r.exit_code == 0, r.output
    assert (out / "compare.csv").stat().st_mode & 0o777 == 0o640
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_bad_items(tmp_path: Path) -> None:
    r = run("compare", str(tmp_path / "missing"), "-o", str(tmp_path / "o"))
    assert r.exit_code == 2 and "no such spec file, run folder or zoo model" in r.output
    (tmp_path / "notrun").mkdir()
    r = run("compare", str(tmp_path / "notrun"), "-o", str(tmp_path / "o"))
    assert r.exit_code == 2 and "without spec.mf" in r.output
    r = run("compare")
    assert r.exit_code == 2
