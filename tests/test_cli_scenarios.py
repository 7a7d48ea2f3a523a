"""A demanding user's scenarios for the finished commands: validate, compile, convert, fmt,
inspect, export and draw. Every bad input must give a clear, located error and a non-zero
exit code, never a traceback; plausible-looking but wrong specs must be refused."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli as run, mf_file, write
TINY = """model tiny {
  input 3x32x32
  classes 10
  stage pooling x1 @8
  stage pooling x1 @16
}
"""
TINY_YAML = """model: tiny
input: {channels: 3, size: 32}
classes: 10
stages:
  - {mixer: pooling, depth: 1, width: 8}
"""


def mf(tmp_path: Path, lines: str, name: str = "t.mf") -> Path:
    """A valid tiny model header plus ``lines`` (each already indented or not)."""
    return mf_file(tmp_path, *lines.strip().splitlines(), name=name)


def assert_error_at(result, line: int, col: int, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert f":{line}:{col}: error:" in result.output, result.output
    for w in words:
        assert w in result.output, result.output


# --- specs that look plausible but are wrong ----------------------------------------------

def test_downsample_on_stage_0_is_refused(tmp_path):
    p = mf(tmp_path, "stage pooling x1 @8 downsample conv(kernel=3, stride=2, padding=1)")
    assert_error_at(run("validate", p), 4, 23, "first stage is downsampled by the stem")


def test_unknown_argument_of_a_nested_component_is_located(tmp_path):
    p = mf(tmp_path, "stage pooling x1 @8\nhead mlp(norm=layernorm(epz=1))")
    assert_error_at(run("validate", p), 5, 27, "unknown argument 'epz'", "did you mean 'eps'")


def test_unknown_argument_of_nested_activation_in_yaml(tmp_path):
    p = write(tmp_path, "t.yaml", TINY_YAML + "head: {mlp: {norm: {layernorm: {epz: 1}}}}\n")
    assert_error_at(run("validate", p), 6, 33, "unknown key 'epz'", "did you mean 'eps'")


def test_yaml_bad_value_inside_arguments_names_the_argument(tmp_path):
    # Was: "the arguments of 'gelu' must be a mapping {arg: value}, got a mapping".
    p = write(tmp_path, "t.yaml", TINY_YAML.replace(
        "width: 8}", "width: 8, mlp: {act: {gelu: {approximate: {tanh: 1, x: 2}}}}}"))
    r = run("validate", p)
    assert r.exit_code == 2
    assert "stages[0].mlp.act.gelu.approximate: expected a string, got a mapping" in r.output
    assert "got a mapping\n" in r.output and "must be a mapping" not in r.output


@pytest.mark.parametrize("line, col, words", [
    ("classes 10", (4, 3), ("classes is set twice",)),
    ("norm layernorm\nnorm layernorm", (5, 3), ("norm is set twice",)),
])
def test_duplicated_model_settings(tmp_path, line, col, words):
    p = mf(tmp_path, line + "\nstage pooling x1 @8")
    assert_error_at(run("validate", p), *col, *words)


def test_duplicated_conv_argument(tmp_path):
    p = mf(tmp_path, "stage pooling x1 @8\n"
                     "stage pooling x1 @16 downsample conv(stride=2, stride=3)")
    assert_error_at(run("validate", p), 5, 50, "'stride' is set twice")


@pytest.mark.parametrize("setting, words", [
    ("stage pooling x1 @-8", ("width must be >= 1",)),
    ("stage pooling x0 @8", ("depth must be >= 1",)),
    ("stage pooling x1 @8 mlp ratio 0", ("mlp_ratio",)),
    ("stage pooling(pool_size=0) x1 @8",
     ("argument 'pool_size' of mixer 'pooling' must be >= 1, got 0",)),
    ("stage sepconv(kernel=4) x1 @8", ("must be odd",)),
    ("stage pooling x1 @8 norm layernorm(eps=-1)", ("must be > 0, got -1", "allowed: > 0")),
])
def test_negative_and_zero_values(tmp_path, setting, words):
    r = run("validate", mf(tmp_path, setting))
    assert r.exit_code == 2 and ":4:" in r.output
    for w in words:
        assert w in r.output


@pytest.mark.parametrize("value", ["-1", "0"])
def test_non_positive_limit_is_its_own_error(tmp_path, value):
    # Was: "model has 0.0M parameters, over the limit of -0.0M".
    p = mf(tmp_path, f"stage pooling x1 @8\nlimits {{ params {value} }}")
    assert_error_at(run("validate", p), 5, 19, f"limit params must be a count >= 1, got {value}")


@pytest.mark.slow
def test_limit_message_shows_small_counts_readably(tmp_path):
    p = mf(tmp_path, "stage pooling x1 @8\nlimits { params 10 }")
    r = run("validate", p)
    assert r.exit_code == 2
    assert "parameters, over the limit of 10" in r.output and "0.0M" not in r.output


def test_mixer_pattern_longer_than_the_stage_is_refused(tmp_path):
    p = mf(tmp_path, "stage [pooling, sepconv, identity] x2 @8")
    assert_error_at(run("validate", p), 4, 9, "lists 3 token mixers but has only 2 blocks")


def test_mixer_pattern_as_long_as_the_stage_is_fine(tmp_path):
    assert run("validate", mf(tmp_path, "stage [pooling, sepconv] x2 @8")).exit_code == 0


def test_grayscale_input_without_eval_stats_is_located_and_explained(tmp_path):
    # Was: "<spec>: error: mean must be 1 numbers" with no file or line.
    r = run("validate", write(tmp_path, "g.mf", TINY.replace("3x32x32", "1x32x32")))
    assert_error_at(r, 2, 9, "default eval mean has 3 values", "1 channel")
    ok = write(tmp_path, "g2.mf", "model g {\n  input 1x32x32\n  classes 10\n"
               "  stage pooling x1 @8\n  eval { mean (0.5) std (0.5) }\n}\n")
    assert run("validate", ok).exit_code == 0


def test_yaml_model_name_that_mf_cannot_hold(tmp_path):
    p = write(tmp_path, "n.yaml", TINY_YAML.replace("model: tiny", "model: 'my model!'"))
    r = run("validate", p)
    assert_error_at(r, 1, 8, "is not a plain name")
    r = run("convert", p, "--to", "mf")  # was: printed `model my model! {`, unparseable
    assert_error_at(r, 1, 8, "cannot be written in .mf")


# --- odd files ----------------------------------------------------------------------------

def test_empty_files(tmp_path):
    assert_error_at(run("validate", write(tmp_path, "e.mf", "")), 1, 1, "expected 'model'")
    assert_error_at(run("validate", write(tmp_path, "e.yaml", "")), 1, 1, "empty")


def test_directory_and_missing_file(tmp_path):
    d = tmp_path / "dir.mf"
    d.mkdir()
    assert run("validate", d).exit_code == 2
    r = run("validate", tmp_path / "nope.mf")
    assert r.exit_code == 2 and "no such spec file" in r.output


def test_binary_garbage_is_not_utf8(tmp_path):
    p = tmp_path / "b.mf"
    p.write_bytes(b"model t {\n  \xff\xfe\n}\n")
    assert_error_at(run("validate", p), 2, 3, "not valid UTF-8")


def test_nul_byte(tmp_path):
    p = tmp_path / "n.mf"
    p.write_bytes(b"model t {\n\x00\n}\n")
    assert_error_at(run("validate", p), 2, 1, "unexpected character '\\x00'")


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    p = tmp_path / "bom.mf"
    p.write_bytes(b"\xef\xbb\xbf" + TINY.encode())
    assert run("validate", p).exit_code == 0
    r = run("fmt", p)
    assert r.exit_code == 0 and r.output.startswith("model tiny {")
    q = tmp_path / "bom.yaml"
    q.write_bytes(b"\xef\xbb\xbf" + TINY_YAML.encode())
    assert run("validate", q).exit_code == 0


def test_unicode_in_names_is_located(tmp_path):
    p = write(tmp_path, "u.mf", "model t\u00e9 {\n}\n")
    r = run("validate", p)
    assert_error_at(r, 1, 8, "unexpected '\u00e9'")
    assert "new line" not in r.output  # no newline may come between a name and '{'


def test_hint_inside_brackets_does_not_offer_a_new_line(tmp_path):
    p = mf(tmp_path, "stage pooling x1 @8\nhead mlp(ratio=2, \u00e9=1)")
    r = run("validate", p)
    assert r.exit_code == 2 and "expected a value or ')'" in r.output


def test_deep_nesting_and_huge_file(tmp_path):
    deep = "head mlp(norm=" + "layernorm(" * 3000 + ")" * 3000 + ")"
    r = run("validate", mf(tmp_path, "stage pooling x1 @8\n" + deep))
    assert r.exit_code == 2 and "nested too deeply" in r.output
    big = TINY.replace("}\n", "# filler\n" * 100_000 + "}\n")
    assert run("validate", write(tmp_path, "big.mf", big)).exit_code == 0


def test_unreadable_file(tmp_path, monkeypatch):
    p = write(tmp_path, "locked.mf", TINY)
    real_open = os.open

    def deny(path, *a, **k):  # tests may run as root, where chmod 000 does not deny
        if os.fspath(path) == str(p):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("os.open", deny)
    r = run("validate", p)
    assert r.exit_code == 2 and "cannot read spec file: Permission denied" in r.output


def test_yaml_spec_with_mf_extension_and_the_reverse(tmp_path):
    r = run("validate", write(tmp_path, "y.mf", TINY_YAML))
    assert_error_at(r, 1, 6, "unexpected character ':'", "without ':'")
    r = run("validate", write(tmp_path, "m.yaml", TINY))
    assert r.exit_code == 2 and "top level of a spec must be a mapping" in r.output


def test_mixed_mf_and_yaml_in_one_validate(tmp_path):
    a, b = write(tmp_path, "a.mf", TINY), write(tmp_path, "b.yaml", TINY_YAML)
    bad = write(tmp_path, "c.mf", "model c {\n}\n")
    r = run("validate", a, b, bad)
    assert r.exit_code == 2
    assert "a.mf: ok" in r.output and "b.yaml: ok" in r.output and "1 of 3" in r.output


# --- command-line values ------------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "abc", "-1", "0"])
def test_bad_max_params_values(tmp_path, value):
    r = run("compile", write(tmp_path, "t.mf", TINY), "--max-params", value)
    assert r.exit_code == 2 and "--max-params" in r.output


def test_dtype_without_target_is_a_usage_error(tmp_path):
    r = run("compile", write(tmp_path, "t.mf", TINY), "--dtype", "bf16")
    assert r.exit_code == 2 and "--target" in r.output


def test_img_size_override_error_names_the_option_not_the_file_line(tmp_path):
    p = write(tmp_path, "t.mf", TINY)
    r = run("draw", p, "-o", tmp_path / "x.svg", "--img-size", "8")
    assert r.exit_code == 2
    # valid at its own 32x32: the error the 8x8 size causes is the option's
    assert "--img-size 8x8: kernel 3 is larger than the 2x2 feature map" in r.output
    assert not re.search(r"t\.mf:\d", r.output) and "input 3x32x32" not in r.output


# --- outputs: convert / fmt / draw / export -----------------------------------------------

def test_convert_into_a_missing_folder(tmp_path):
    out = tmp_path / "missing" / "x.yaml"
    r = run("convert", write(tmp_path, "t.mf", TINY), "--to", "yaml", "-o", out)
    assert r.exit_code == 1
    assert f"cannot write {out}: No such file or directory" in r.output
    assert ".tmp" not in r.output


def test_convert_below_a_file(tmp_path):
    src = write(tmp_path, "t.mf", TINY)
    r = run("convert", src, "--to", "yaml", "-o", src / "x.yaml")
    assert r.exit_code == 1 and "cannot write" in r.output and "Not a directory" in r.output
    assert src.read_text() == TINY


def test_convert_refuses_an_extension_of_the_other_format(tmp_path):
    src = write(tmp_path, "t.mf", TINY)
    r = run("convert", src, "--to", "yaml", "-o", tmp_path / "out.mf")
    assert r.exit_code == 2 and "names a .mf file but --to is yaml" in r.output
    assert not (tmp_path / "out.mf").exists()


def test_convert_to_the_same_format_is_canonical(tmp_path):
    src = write(tmp_path, "t.mf", TINY.replace("  classes 10", "  classes   10"))
    r = run("convert", src, "--to", "mf")
    assert r.exit_code == 0 and r.output == TINY


def test_convert_round_trip_mf_yaml_mf(tmp_path):
    src = write(tmp_path, "t.mf", TINY)
    y = tmp_path / "t.yaml"
    assert run("convert", src, "--to", "yaml", "-o", y).exit_code == 0
    back = tmp_path / "back.mf"
    assert run("convert", y, "--to", "mf", "-o", back).exit_code == 0
    assert back.read_text() == TINY


def test_yaml_schema_comment_points_at_the_real_schema(tmp_path):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    y = sub / "t.yaml"
    assert run("convert", write(tmp_path, "t.mf", TINY), "--to", "yaml", "-o", y).exit_code == 0
    first = y.read_text().splitlines()[0]
    ref = first.split("$schema=", 1)[1]
    assert (sub / ref).resolve() == (ROOT / "grammar" / "metaformer.schema.json").resolve()
    # The zoo's own files keep their short reference.
    r = run("convert", ROOT / "specs" / "randformer.yaml", "--to", "yaml")
    assert r.output.splitlines()[0].endswith("$schema=../grammar/metaformer.schema.json")


def test_fmt_on_yaml_keeps_a_users_schema_reference(tmp_path):
    text = "# yaml-language-server: $schema=https://example.org/s.json\n" + TINY_YAML
    p = write(tmp_path, "t.yaml", text)
    r = run("fmt", p)
    assert r.exit_code == 0
    assert r.output.splitlines()[0] == "# yaml-language-server: $schema=https://example.org/s.json"


def test_fmt_on_yaml_refuses_to_drop_comments(tmp_path):
    p = write(tmp_path, "t.yaml", "# note\n" + TINY_YAML)
    r = run("fmt", "-w", p)
    assert r.exit_code == 2 and "drop 1 comment" in r.output
    assert p.read_text().startswith("# note")


def test_fmt_check_and_write_together_is_a_usage_error(tmp_path):
    r = run("fmt", "--check", "-w", write(tmp_path, "t.mf", TINY))
    assert r.exit_code == 2 and "cannot be used with -w" in r.output


def test_fmt_goes_on_past_an_invalid_file(tmp_path):
    good = write(tmp_path, "a.mf", TINY.replace("classes 10", "classes   10"))
    r = run("fmt", "-w", tmp_path / "missing.mf", good)
    assert r.exit_code == 2 and "no such spec file" in r.output
    assert good.read_text() == TINY  # the valid file after the bad one was still formatted


def test_fmt_check_unformatted_exits_1(tmp_path):
    r = run("fmt", "--check", write(tmp_path, "a.mf", TINY.replace("classes 10", "classes  10")))
    assert r.exit_code == 1


@pytest.mark.parametrize("name", ["missing/x.svg", "missing/x.png"])
def test_draw_into_a_missing_folder(tmp_path, name):
    r = run("draw", write(tmp_path, "t.mf", TINY), "-o", tmp_path / name)
    assert r.exit_code == 1 and "cannot write" in r.output


def test_draw_unknown_extension(tmp_path):
    r = run("draw", write(tmp_path, "t.mf", TINY), "-o", tmp_path / "x.pdf")
    assert r.exit_code == 2 and "use a .svg or .png" in r.output


def test_export_output_checks(tmp_path):
    spec = write(tmp_path, "t.mf", TINY)
    r = run("export", spec, "--format", "pt2", "-o", tmp_path / "x.onnx")
    assert r.exit_code == 2 and "must end in .pt2" in r.output
    r = run("export", spec, "--format", "pt2", "-o", tmp_path / "missing" / "x.pt2")
    assert r.exit_code == 1 and "does not exist" in r.output
    r = run("export", spec, "--format", "pt2", "-o", spec / "x.pt2")
    assert r.exit_code == 1 and "is not a directory" in r.output


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_export_tolerance_must_be_a_finite_non_negative_number(tmp_path, value):
    r = run("export", write(tmp_path, "t.mf", TINY), "--format", "pt2",
            "-o", tmp_path / "x.pt2", "--atol", value)
    assert r.exit_code == 2 and "--atol" in r.output


# --- checkpoints --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_state(tmp_path_factory):
    from mfdsl.api import build_model

    d = tmp_path_factory.mktemp("spec")
    p = d / "t.mf"
    p.write_text(TINY)
    return build_model(p).state_dict()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _checkpoint(tmp_path: Path, kind: str, sd) -> Path:
    p = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        torch.save(sd, p)
        p.write_bytes(p.read_bytes()[:2000])
    elif kind == "garbage":
        p.write_bytes(random.Random(0).randbytes(512))
    elif kind == "garbage_pickle_byte":  # random data whose first byte is pickle's magic
        p.write_bytes(b"\x80" + random.Random(1).randbytes(511))
    elif kind == "garbage_zip_magic":
        p.write_bytes(b"PK\x03\x04" + random.Random(2).randbytes(508))
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "pickled_code":
        torch.save({"a": _Evil()}, p)
    elif kind == "wrong_arch":
        torch.save({"stages.9.blocks.0.x.weight": torch.zeros(3)}, p)
    elif kind == "complex":
        torch.save({k: v.to(torch.complex64) for k, v in sd.items()}, p)
    elif kind == "integer":
        torch.save({k: v.int() for k, v in sd.items()}, p)
    elif kind == "nan":
        torch.save({k: torch.full_like(v, float("nan")) for k, v in sd.items()}, p)
    elif kind == "meta":
        torch.save({k: v.to("meta") for k, v in sd.items()}, p)
    elif kind == "list":
        torch.save([1, 2], p)
    return p


@pytest.mark.parametrize("kind, words", [
    ("truncated", ("may be truncated or corrupt",)),
    ("garbage", ("not a valid checkpoint",)),
    ("garbage_pickle_byte", ("not a valid checkpoint", "truncated or corrupt")),
    ("garbage_zip_magic", ("not a valid checkpoint", "truncated or corrupt")),
    ("empty", ("checkpoint file is empty",)),
    ("pickled_code", ("refused", "pickled Python code")),
    ("wrong_arch", ("does not fit the model", "missing from the checkpoint")),
    ("complex", ("unusable values", "is complex64, the model's weight is float32")),
    ("integer", ("unusable values", "is int32")),
    ("nan", ("contains NaN or infinite values",)),
    ("meta", ("holds no data",)),
    ("list", ("not a state dict",)),
])
@pytest.mark.parametrize("command", ["compile", "export"])
def test_bad_checkpoints(tmp_path, tiny_state, kind, words, command):
    spec = write(tmp_path, "t.mf", TINY)
    ckpt = _checkpoint(tmp_path, kind, tiny_state)
    args = ["compile", spec] if command == "compile" else \
        ["export", spec, "--format", "pt2", "-o", tmp_path / "x.pt2"]
    r = run(*args, "--checkpoint", ckpt)
    assert r.exit_code == 2, r.output
    for w in words:
        assert w in r.output, r.output
    assert not (tmp_path / "x.pt2").exists()


def test_good_checkpoint_with_half_precision_loads(tmp_path, tiny_state):
    p = tmp_path / "half.pt"
    torch.save({"model": {k: v.half() for k, v in tiny_state.items()}}, p)
    r = run("compile", write(tmp_path, "t.mf", TINY), "--checkpoint", p)
    assert r.exit_code == 0, r.output


def test_checkpoint_that_is_a_directory(tmp_path):
    r = run("compile", write(tmp_path, "t.mf", TINY), "--checkpoint", tmp_path)
    assert r.exit_code == 2 and "is a directory" in r.output


def test_load_checkpoint_non_strict_skips_unusable_tensors(tiny_state):
    from mfdsl.api import build_model
    from mfdsl.ckptformats.weights import load_checkpoint
    from mfdsl.frontend.mf import parse_mf

    model = build_model(parse_mf(TINY, "t.mf"))
    sd = dict(tiny_state)
    sd["head.fc.bias"] = torch.full_like(sd["head.fc.bias"], float("nan"))
    report = load_checkpoint(model, sd, strict=False)
    assert not report.ok and [k for k, _ in report.bad_values] == ["head.fc.bias"]
    assert torch.isfinite(model.head.fc.bias).all()


# --- a real process: exit codes as the shell sees them ------------------------------------

@pytest.mark.slow
def test_subprocess_exit_codes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    good, bad = write(tmp_path, "g.mf", TINY), write(tmp_path, "b.mf", "model b {\n  stage\n}\n")
    ok = subprocess.run([sys.executable, "-m", "mfdsl", "validate", str(good)], env=env,
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "ok (tiny" in ok.stdout
    err = subprocess.run([sys.executable, "-m", "mfdsl", "validate", str(bad)], env=env,
                         capture_output=True, text=True, cwd=ROOT)
    assert err.returncode == 2 and "b.mf:2:" in err.stderr and "Traceback" not in err.stderr


def test_none_where_a_component_is_required_gets_a_hint(tmp_path):
    r = run("validate", mf(tmp_path, "stage pooling x1 @8\noutput_norm none"))
    assert_error_at(r, 5, 15, "got none", "write identity")
    r = run("validate", mf(tmp_path, "stage pooling x1 @8\nhead none"))
    assert_error_at(r, 5, 8, "got none", "needs a head")
