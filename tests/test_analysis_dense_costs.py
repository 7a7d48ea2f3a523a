"""Costs at a detection / segmentation size: `inspect` and `compile --input CxHxW`, the
attention-quadratic MACs against a hand count, and bad sizes refused without a traceback."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mfdsl.api import load_spec
from mfdsl.cli import main

SPEC = "specs/caformer_s18.mf"


def side(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1  # a strided conv floors


def hand_attn_macs(path: str, h: int, w: int) -> dict:
    """Per stage: depth x 2 products (QK^T, attn@V) of tokens x tokens x width each."""
    spec = load_spec(path)
    out = {}
    for i, st in enumerate(spec.stages):
        ds = spec.stem if i == 0 else st.downsample
        h, w = side(h, ds.kernel, ds.stride, ds.padding), side(w, ds.kernel, ds.stride,
                                                                ds.padding)
        mixer = st.mixers[0]
        if mixer.name == "attention":
            assert not mixer.args.get("heads")  # width // 32 heads of 32: inner width = width
            tokens = h * w
            out[i] = st.depth * 2 * tokens * tokens * st.width
    return out


def _json(args: list) -> dict:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output + res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("size", [
    (97, 131),  # no side a multiple of 32: every stage's side floors
    pytest.param((800, 1333), marks=pytest.mark.slow),  # COCO: stage 2 is 50x84 = 4200 tokens
])
def test_attention_quadratic_macs_match_hand_count(size):
    h, w = size
    expected = hand_attn_macs(SPEC, h, w)
    assert set(expected) == {2, 3}
    got = _json(["inspect", SPEC, "--input", f"3x{h}x{w}", "--json"])
    assert got["input"] == [3, h, w]
    by_stage = {s["name"]: s["attn_macs"] for s in got["stages"]}
    assert by_stage == {"stem": 0, "stage 0": 0, "stage 1": 0, "stage 2": expected[2],
                        "stage 3": expected[3], "head": 0}
    assert got["attn_macs"] == expected[2] + expected[3]
    compiled = _json(["compile", SPEC, "--input", f"3x{h}x{w}", "--json"])
    assert [s["attn_macs"] for s in compiled["stages"]] == [0, 0, 0, expected[2], expected[3], 0]
    assert compiled["macs"] == got["macs"]  # FlopCounterMode and the aten graph agree
    if size == (800, 1333):
        assert expected[2] == 9 * 2 * 4200 ** 2 * 320  # ~101.6 GMACs


def test_img_size_and_input_are_one_size():
    a = _json(["inspect", SPEC, "--input", "3x97x131", "--json"])
    b = _json(["inspect", SPEC, "--img-size", "97x131", "--json"])
    assert a == b


@pytest.mark.parametrize("cmd", ["inspect", "compile"])
@pytest.mark.parametrize("value, words", [
    ("3x0x5", "every number must be >= 1"),
    ("abc", "is not an input like 3x800x1333"),
    ("3x224", "is not an input like 3x800x1333"),
    ("4x224x224", "takes 3-channel images"),
])
def test_bad_input_is_refused(cmd, value, words):
    res = CliRunner().invoke(main, [cmd, SPEC, "--input", value])
    assert res.exit_code == 2
    assert "--input" in res.stderr and words in res.stderr, res.stderr
    assert "Traceback" not in res.output + res.stderr


def test_input_and_img_size_together_are_refused():
    res = CliRunner().invoke(main, ["inspect", SPEC, "--input", "3x64x64", "--img-size", "64"])
    assert res.exit_code == 2 and "not both" in res.stderr


def test_size_bound_mixer_is_refused_at_the_mixer():
    res = CliRunner().invoke(main, ["inspect", "specs/randformer_s12.mf", "--input",
                                    "3x800x1333"])
    assert res.exit_code == 2
    assert "specs/randformer_s12.mf:9:" in res.stderr  # the first `stage random` line
    assert "mixer 'random' is sized for the spec's input" in res.stderr
    assert "--input 3x800x1333" in res.stderr and "Traceback" not in res.stderr


def test_too_small_input_is_the_options_error():
    res = CliRunner().invoke(main, ["compile", SPEC, "--input", "3x8x8"])
    assert res.exit_code == 2
    assert "error: --input 3x8x8: kernel 7 is larger than" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow  # a fresh interpreter importing torch
def test_dense_costs_script_reruns(tmp_path):
    """benchmarks/dense_costs.py (docs/downstream.md's table) runs and says what it refused."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "costs.json"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "dense_costs.py"),
                        "identityformer_s12", "randformer_s12", "--input", "3x64x96",
                        "--json", str(out)], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "| identityformer_s12 | 64x96 | 11.89M |" in r.stdout
    assert "| randformer_s12 | 64x96 | refused: stage 2 mixer 'random'" in r.stdout
    rows = json.loads(out.read_text())["models"]
    assert rows["identityformer_s12"][0]["attn_macs"] == 0


@pytest.mark.slow  # three traces of 224x224 models
def test_attn_is_only_products_of_two_activations():
    from mfdsl.analysis.inspect import analyse
    from mfdsl.api import check_spec

    rand = analyse(check_spec("specs/randformer_s12.mf"))
    assert rand.macs > 0 and rand.attn_macs == 0  # x @ a frozen matrix: a weight product
    spec = check_spec(SPEC)
    post, pre = analyse(spec), analyse(spec, pre_dispatch=True)  # bmm pairs vs. sdpa whole
    assert post.attn_macs == pre.attn_macs == sum(hand_attn_macs(SPEC, 224, 224).values())
