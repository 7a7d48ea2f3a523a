"""The spec commands as a user runs them: exit codes, located errors, JSON output."""
from __future__ import annotations

import json

import pytest

from conftest import SPECS, cli as run


@pytest.mark.slow
def test_validate_all_zoo_specs_ok():
    paths = sorted(str(p) for p in SPECS.glob("*.mf")) + sorted(str(p) for p in SPECS.glob("*.yaml"))
    r = run("validate", *paths)
    assert r.exit_code == 0, r.output
    assert r.output.count(": ok") == len(paths)


def test_validate_reports_each_bad_file_and_exits_2(tmp_path):
    good = tmp_path / "good.mf"
    good.write_text((SPECS / "poolformerv2_s12.mf").read_text())
    bad = tmp_path / "bad.mf"
    bad.write_text("model x {\n  input 3x224x224\n  stage sepconvv x3 @64\n}\n")
    r = run("validate", str(good), str(bad))
    assert r.exit_code == 2
    assert f"{bad}:3:9: error: unknown mixer 'sepconvv'" in r.output
    assert "hint: did you mean 'sepconv'?" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("text, where, message", [
    ("model x {\n  stage attention x3 @100\n}\n", ":2:9:", "not divisible into heads"),
    ("model x {\n  input 3x2x2\n  stage pooling x1 @64\n  stage pooling x1 @64\n"
     "  stage pooling x1 @64\n  stage pooling x1 @64\n}\n", ":2:", "would be empty"),
    ("model x {\n  stage pooling x0 @64\n}\n", ":2:", "depth"),
    ("model x {\n  stage pooling(pool_size=4) x1 @64\n}\n", ":2:", "must be odd"),
])
def test_semantic_errors_are_located(tmp_path, text, where, message):
    p = tmp_path / "s.mf"
    p.write_text(text)
    r = run("validate", str(p))
    assert r.exit_code == 2
    assert f"{p}{where}" in r.output and message in r.output, r.output


def test_size_limit_and_raising_it(tmp_path):
    p = tmp_path / "big.mf"
    p.write_text((SPECS / "caformer_b36.mf").read_text())  # 99M params
    assert run("validate", str(p)).exit_code == 0
    r = run("compile", str(p), "--max-params", "50M", "--json")
    assert r.exit_code == 2 and "over the limit of 50.0M" in r.output
    # a limit written in the spec is located there, and the command line can raise it
    text = p.read_text().replace("  classes 1000", "  classes 1000\n  limits { params 50M }", 1)
    p.write_text(text)
    r = run("validate", str(p))
    assert r.exit_code == 2 and "over the limit" in r.output and f"{p}:5:19:" in r.output, r.output
    assert run("validate", str(p), "--max-params", "200M").exit_code == 0


def test_missing_file_is_an_error_not_a_traceback():
    r = run("validate", "does/not/exist.mf")
    assert r.exit_code == 2 and "no such spec file" in r.output


def test_compile_json_matches_table_numbers():
    r = run("compile", str(SPECS / "caformer_s18.mf"), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["name"] == "caformer_s18"
    assert round(out["params"] / 1e6) == 26
    assert round(out["macs"] / 1e9, 1) == 4.1
    assert [s["name"] for s in out["stages"]] == ["stem", "stage0", "stage1", "stage2",
                                                    "stage3", "head"]
    assert sum(s["params"] for s in out["stages"]) == out["params"]
    assert sum(s["macs"] for s in out["stages"]) == out["macs"]
    assert out["stages"][3]["out_shape"] == [320, 14, 14]


def test_compile_table_for_people():
    r = run("compile", str(SPECS / "randformer.yaml"))
    assert r.exit_code == 0, r.output
    assert "randformer_s12" in r.output and "frozen" in r.output
    assert "random" in r.output and "320x14x14" in r.output


def test_convert_and_fmt(tmp_path):
    src = SPECS / "caformer_s18.mf"
    y = tmp_path / "c.yaml"
    r = run("convert", str(src), "--to", "yaml", "-o", str(y))
    assert r.exit_code == 0, r.output
    back = tmp_path / "c.mf"
    assert run("convert", str(y), "--to", "mf", "-o", str(back)).exit_code == 0
    from mfdsl.api import load_spec

    assert load_spec(back) == load_spec(src) == load_spec(y)
    # fmt output is canonical: formatting it again changes nothing
    once = run("fmt", str(back)).output
    back.write_text(once)
    assert run("fmt", "--check", str(back)).exit_code == 0
    messy = tmp_path / "messy.mf"
    messy.write_text(once.replace("\n", "\n\n").replace("  ", "      "))
    assert run("fmt", "--check", str(messy)).exit_code == 1
    assert run("fmt", "-w", str(messy)).exit_code == 0
    assert messy.read_text() == once


def test_every_command_has_help():
    for cmd in ("validate", "compile", "convert", "fmt"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output


def test_fmt_write_never_drops_comments_silently(tmp_path):
    p = tmp_path / "c.mf"
    text = ("# header kept\nmodel c {\n  stage pooling x1 @64   # an inline note\n"
            "  classes 10\n}\n")
    p.write_text(text)
    r = run("fmt", "-w", str(p))
    assert r.exit_code == 2 and "drop 1 comment" in r.output
    assert p.read_text() == text  # untouched
    assert run("fmt", "-w", "--drop-comments", str(p)).exit_code == 0
    out = p.read_text()
    assert out.startswith("# header kept\n") and "inline note" not in out
    assert run("fmt", "--check", str(p)).exit_code == 0
