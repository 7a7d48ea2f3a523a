"""The .mf front end: parsing, located errors, the canonical printer, fuzzing."""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, List

import pytest

from mfdsl.api import check_spec
from mfdsl.emit.mf import format_float, format_mf, to_mf
from mfdsl.errors import SpecError
from mfdsl.frontend.mf import parse_mf
from mfdsl.ir import (Call, DownsampleSpec, EvalSpec, LimitsSpec, ModelSpec, RecipeSpec,
                      StageSpec, call, default_downsample, default_stem)
from conftest import error_of as spec_error_of

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.mf"))

CAFORMER_S18 = """\
# CAFormer-S18 (MetaFormer Baselines for Vision, Yu et al. 2022)
model caformer_s18 {
  input 3x224x224
  classes 1000
  stage sepconv   x3 @64
  stage sepconv   x3 @128
  stage attention x9 @320  res_scale 1.0
  stage attention x3 @512  res_scale 1.0
  head mlp(ratio=4, act=squared_relu, norm=layernorm(bias=true, eps=1e-5))
  train { optimizer lamb  lr 8e-3  warmup_epochs 20  drop_path 0.15 }
}
"""


def parse(text: str) -> ModelSpec:
    return parse_mf(text, "t.mf")


def error_of(text: str) -> SpecError:
    return spec_error_of(parse, text)


# --- parsing --------------------------------------------------------------------------

def test_paper_example_parses_to_the_expected_ir() -> None:
    s = parse(CAFORMER_S18)
    assert s.name == "caformer_s18"
    assert (s.in_chans, s.img_size, s.num_classes) == (3, (224, 224), 1000)
    assert s.depths == [3, 3, 9, 3] and s.widths == [64, 128, 320, 512]
    assert [st.mixers for st in s.stages] == [[call("sepconv")]] * 2 + [[call("attention")]] * 2
    assert [st.res_scale for st in s.stages] == [None, None, 1.0, 1.0]
    assert s.stages[0].downsample is None
    assert all(st.downsample == default_downsample() for st in s.stages[1:])
    assert s.stem == default_stem()
    assert s.head == Call(name="mlp", args={"ratio": 4, "act": "squared_relu",
                                  "norm": call("layernorm", bias=True, eps=1e-5)})
    assert s.recipe == RecipeSpec(optimizer="lamb", lr=8e-3, warmup_epochs=20, drop_path=0.15)
    assert s.eval == EvalSpec() and s.limits == LimitsSpec()


def test_locations_point_at_the_written_values() -> None:
    s = parse(CAFORMER_S18)
    assert (s.loc("").line, s.loc("").column) == (2, 1)
    assert (s.loc("num_classes").line, s.loc("num_classes").column) == (4, 11)
    st = s.stages[2]
    assert (st.loc("").line, st.loc("").column) == (7, 3)
    assert (st.loc("mixers").column, st.loc("depth").column, st.loc("width").column) == (9, 19, 22)
    assert st.loc("res_scale").column == 38
    assert (s.head.loc("").line, s.head.loc("").column) == (9, 8)
    assert s.head.locs["norm"].column == 39
    inner = s.head.args["norm"]
    assert (inner.loc("").column, inner.locs["eps"].column) == (44, 65)
    assert s.recipe.loc("lr").column == 30
    assert s.stages[3].mixers[0].loc("").line == 8


def test_model_level_settings_apply_to_every_stage_and_stages_override() -> None:
    s = parse("""
model m {
  input 1x32x48
  classes 7
  norm modified_layernorm(eps=1e-6)
  mlp ratio 2 act gelu(approximate=tanh) bias true
  layer_scale 1e-5
  downsample conv(kernel=2, stride=2, padding=0) pre_norm none post_norm layernorm
  stage pooling x1 @8   mlp ratio 3
  stage [pooling, dwconv(kernel=3), attention(head_dim=8)] x4 @16  norm batchnorm
  stage identity x1 @16  downsample none  layer_scale none
  stage identity x1 @32  downsample pre_norm batchnorm  mlp_act relu
}
""")
    assert (s.in_chans, s.img_size, s.num_classes) == (1, (32, 48), 7)
    a, b, c, d = s.stages
    assert a.mlp_ratio == 3 and b.mlp_ratio == 2
    assert all(st.mlp_act == Call(name="gelu", args={"approximate": "tanh"}) for st in (a, b, c))
    assert d.mlp_act == call("relu")
    assert all(st.mlp_bias is True for st in s.stages)
    assert b.norm == call("batchnorm") and a.norm == call("modified_layernorm", eps=1e-6)
    assert [st.layer_scale for st in s.stages] == [1e-5, 1e-5, None, 1e-5]
    assert b.mixers == [call("pooling"), call("dwconv", kernel=3), call("attention", head_dim=8)]
    assert a.downsample is None and c.downsample is None
    model_ds = DownsampleSpec(kernel=2, stride=2, padding=0, bias=True, pre_norm=None,
                              post_norm=call("layernorm"))
    assert b.downsample == model_ds
    assert d.downsample == DownsampleSpec(kernel=2, stride=2, padding=0, bias=True,
                                          pre_norm=call("batchnorm"), post_norm=call("layernorm"))
    # the model-level line is where a stage's inherited setting was written
    assert b.loc("mlp_act").line == 6 and d.loc("mlp_act").line == 12


def test_every_block_and_value_form() -> None:
    s = parse("""model m {   # trailing comment
  stem conv(kernel=4, stride=4, padding=0, bias=false) post_norm layernorm(
      bias=false,   # comments and newlines inside ( ) are layout
      eps=1e-6)
  stage sepconv(act=starrelu(scale=0.5, learnable=false), act2=identity()) x2 @32 {
    res_scale 1
    mlp bias true
  }
  output_norm identity
  head linear(bias=false)
  eval { crop_pct 0.875  interpolation bilinear
         mean (0.5, 0.5, 0.5)  std (0.25, 0.25, 0.25) }
  limits { params 1.5M  macs 2G }
  train {
    epochs 10  batch_size 32  optimizer sgd  momentum 0.95  betas (0.8, 0.99)
    randaugment "rand-m7-mstd0.5"  ema 0.9999  clip_grad none  finetune_from "other model"
    amp false  sched constant  lr 1  opt_eps 1e-9  train_interpolation bicubic
  }
}""")
    assert s.stem == DownsampleSpec(kernel=4, stride=4, padding=0, bias=False, pre_norm=None,
                                    post_norm=call("layernorm", bias=False, eps=1e-6))
    st = s.stages[0]
    assert st.mixers[0].args == {"act": Call(name="starrelu", args={"scale": 0.5, "learnable": False}),
                                 "act2": Call(name="identity", args={})}
    assert st.res_scale == 1 and isinstance(st.res_scale, int) and st.mlp_bias is True
    assert s.output_norm == call("identity") and s.head == call("linear", bias=False)
    assert s.eval == EvalSpec(crop_pct=0.875, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                             std=(0.25, 0.25, 0.25))
    assert (s.limits.max_params, s.limits.max_macs) == (1_500_000, 2_000_000_000)
    r = s.recipe
    assert (r.epochs, r.batch_size, r.optimizer, r.momentum, r.betas) == (10, 32, "sgd", 0.95,
                                                                           (0.8, 0.99))
    assert (r.randaugment, r.ema, r.clip_grad, r.finetune_from) == ("rand-m7-mstd0.5", 0.9999,
                                                                    None, "other model")
    assert (r.amp, r.sched, r.lr, r.opt_eps, r.train_interpolation) == (False, "constant", 1,
                                                                        1e-9, "bicubic")
    assert s.eval.loc("mean").line == 12 and r.loc("amp").line == 17


def test_train_block_without_settings_is_the_default_recipe() -> None:
    s = parse("model m {\n  stage pooling x1 @8\n  train {}\n}\n")
    assert s.recipe == RecipeSpec()
    assert parse("model m {\n  stage pooling x1 @8\n}\n").recipe is None


# --- errors ---------------------------------------------------------------------------

def _with(old: str, new: str) -> str:
    assert old in CAFORMER_S18
    return CAFORMER_S18.replace(old, new, 1)


ERRORS = [
    # (text, line, column, words in the message, words in the hint or None)
    (_with("classes 1000", "clases 1000"), 4, 3, "unknown setting 'clases'", "'classes'"),
    (_with("classes 1000", "lr 1e-3"), 4, 3, "unknown setting 'lr'", "train {"),
    (_with("classes 1000", "classes 1000\n  classes 10"), 5, 3, "set twice", "line 4, column 3"),
    (_with("x9", "x9.5"), 7, 19, "x<integer>", None),
    (_with("x9 ", ""), 7, 19, "number of blocks", None),
    (_with("@320", "320"), 7, 22, "@<integer>", "@320"),
    (_with("classes 1000", "classes: 1000"), 4, 10, "unexpected character ':'", "without ':'"),
    (_with("classes 1000", "classes=1000"), 4, 10, "unexpected '='", "key value"),
    (_with("eps=1e-5))", "eps=1e-5)"), 10, 3, "expected ',' or ')'", "line 9, column 11"),
    (_with("classes 1000", "classes 10a0"), 4, 11, "malformed number '10a0'", None),
    (_with("lr 8e-3", 'lr "8e-3'), 10, 30, "string is not closed", None),
    (_with("x9 @320  res_scale", "x9 @320  res_scal"), 7, 28, "unknown stage setting",
     "'res_scale'"),
    (_with("lr 8e-3", "lrr 8e-3"), 10, 27, "unknown train setting 'lrr'", "'lr'"),
    (_with("warmup_epochs 20", "warmup_epochs 2.5"), 10, 50, "must be an integer", None),
    (_with("mlp(ratio=4", "mlp(4"), 9, 12, "name=value", None),
    (_with("lr 8e-3", "lr 8e-3,"), 10, 34, "unexpected ','", "not commas"),
    (_with("3x224x224", "224"), 3, 9, "channels x height x width", None),
    (_with("res_scale 1.0\n  stage attention x3", "res_scale yes\n  stage attention x3"),
     7, 38, "res_scale must be a number or none", None),
    (_with("stage sepconv   x3 @64", "stage sepconv x3 @64 downsample none"), 5, 24,
     "downsampled by the stem", "stem"),
    (_with("stage sepconv   x3 @64", "stage x3 @64"), 5, 9, "token mixer", None),
    (_with("stage sepconv   x3 @64", "stage sepconv x3 @64 ratio 4"), 5, 24,
     "unknown stage setting 'ratio'", "mlp ratio"),
    (_with("act=squared_relu", "act=squared_relu, act=gelu"), 9, 39, "given twice", None),
    (_with("classes 1000", "limits { params 1.5X }"), 4, 19, "malformed number '1.5X'", None),
    (CAFORMER_S18.rstrip()[:-1], 10, 70, "end of file", "line 2, column 20"),
    (CAFORMER_S18 + "\nfoo\n", 13, 1, "unexpected name 'foo'", None),
    ("", 1, 1, "expected 'model'", "model <name>"),
    ("stage pooling x1 @8\n", 1, 1, "expected 'model'", None),
    ("model m {\n  stage pooling x1 @8\n  input 3x32x32 classes 10\n}", 3, 17,
     "after the input setting", "new line"),
    ("model m {\n  eval crop_pct 0.9\n}", 2, 8, "expected '{' after eval", None),
    ("model m {\n  train { lr 1e999 }\n}", 2, 14, "too large", None),
    ("model m {\n  stem none\n}", 2, 8, "cannot be none", None),
    ("model m {\n  stage pooling x1 @8 downsample conv(kernal=3)\n}", 2, 39,
     "unknown conv argument 'kernal'", "'kernel'"),
    ("model m {\n  limits { params 1.2345K }\n}", 2, 19, "whole number", None),
    ("model m {\n  stage [] x1 @8\n}", 2, 9, "mixer list is empty", None),
    ("model m {\n  train { randaugment rand-m9 }\n}", 2, 27, "names cannot contain '-'",
     '"rand-m9"'),
    ("model m {\n  eval { mean(0.5, 0.5, 0.5) }\n}", 2, 10, "put a space", None),
]


@pytest.mark.parametrize("text,line,column,message,hint", ERRORS,
                         ids=[f"{e[1]}:{e[2]}-{e[3][:24]}" for e in ERRORS])
def test_syntax_and_structure_errors_are_located(text: str, line: int, column: int,
                                                 message: str, hint: Any) -> None:
    err = error_of(text)
    assert (err.path, err.line, err.column) == ("t.mf", line, column), str(err)
    assert message in err.message, str(err)
    if hint is not None:
        assert err.hint and hint in err.hint, str(err)
    # user terms, never Lark's internal terminal names
    assert not re.search(r"__ANON|_NL|RBRACE|LPAR|CALL_OPEN|\$END", str(err)), str(err)


def test_rendered_error_shows_the_line_and_a_caret() -> None:
    text = _with("classes 1000", "clases 1000")
    err = error_of(text)
    shown = err.render(text)
    assert "t.mf:4:3: error: unknown setting 'clases'" in shown
    assert "  clases 1000\n    ^" in shown and "hint: did you mean 'classes'?" in shown


def test_component_names_are_left_to_the_checker(tmp_path: Path) -> None:
    path = tmp_path / "m.mf"
    path.write_text(_with("stage attention x9", "stage atention x9"))
    parse_mf(path.read_text(), str(path))  # syntax is fine
    with pytest.raises(SpecError) as info:
        check_spec(path)
    assert (info.value.line, info.value.column) == (7, 9)
    assert "did you mean 'attention'" in (info.value.hint or "")


# --- the canonical printer ------------------------------------------------------------

def test_canonical_form_of_the_paper_example_is_itself() -> None:
    assert to_mf(parse(CAFORMER_S18)) == CAFORMER_S18.split("\n", 1)[1]
    assert format_mf(CAFORMER_S18, "t.mf") == CAFORMER_S18


@pytest.mark.parametrize("x,text", [(1e-6, "1e-6"), (0.15, "0.15"), (8e-3, "8e-3"),
                                    (0.05, "0.05"), (1.0, "1.0"), (300.0, "300.0"),
                                    (1e16, "1e16"), (-2.5e-4, "-2.5e-4"),
                                    (0.1 + 0.2, "0.30000000000000004")])
def test_floats_print_short_and_reparse_exactly(x: float, text: str) -> None:
    assert format_float(x) == text
    assert float(text) == x


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_zoo_spec_round_trips_and_fmt_is_idempotent(path: Path) -> None:
    spec = parse_mf(path.read_text(), str(path))
    text = to_mf(spec)
    again = parse_mf(text, "fmt.mf")
    assert again == spec
    assert to_mf(again) == text
    assert format_mf(format_mf(path.read_text(), "a.mf"), "b.mf") == \
        format_mf(path.read_text(), "a.mf")


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 2 else 6)
    if choice == 0:
        return rng.choice([True, False, None])
    if choice == 1:
        return rng.randint(-1000, 10 ** 9)
    if choice == 2:
        return rng.choice([1e-6, 0.15, 3.0, -0.5, 1e-300, 123456.789, 2.5e17,
                           rng.random(), rng.uniform(-1e6, 1e6)])
    if choice == 3:
        return rng.choice(["starrelu", "x3", "true", "a b", 'q"uote', "back\\slash",
                           "tab\there", "new\nline", "", "model", "3x3", "é"])
    if choice == 4:
        return Call(name=rng.choice(["gelu", "layernorm", "x"]))
    if choice == 5:
        return rng.choice(["gelu", "identity"])
    if choice == 6:
        return _random_call(rng, depth + 1)
    if choice == 7:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(4)))
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def _random_call(rng: random.Random, depth: int = 0) -> Call:
    names = ["eps", "bias", "act", "norm", "kernel", "head_dim", "ratio"]
    args = {n: _random_value(rng, depth) for n in rng.sample(names, rng.randrange(4))}
    return Call(name=rng.choice(["sepconv", "attention", "layernorm", "mlp", "pooling"]), args=args)


def _random_spec(rng: random.Random) -> ModelSpec:
    def opt_call() -> Any:
        return rng.choice([None, _random_call(rng), call("layernorm", bias=False, eps=1e-6)])

    def ds() -> DownsampleSpec:
        return DownsampleSpec(kernel=rng.choice([3, 2, 7]), stride=rng.choice([2, 1, 4]),
                              padding=rng.choice([1, 0]), bias=rng.choice([True, False]),
                              pre_norm=opt_call(), post_norm=opt_call())

    shared_norm = rng.choice([call("layernorm", bias=False, eps=1e-6), _random_call(rng)])
    stages: List[StageSpec] = []
    for i in range(rng.randrange(5)):
        st = StageSpec(depth=rng.randint(1, 30), width=rng.randint(1, 999),
                       mixers=[_random_call(rng) for _ in range(rng.randint(1, 3))])
        st.mlp_ratio = rng.choice([4.0, 4, 2.5, 3])
        st.mlp_act = rng.choice([call("starrelu"), _random_call(rng)])
        st.mlp_bias = rng.choice([False, True])
        st.norm = rng.choice([shared_norm, shared_norm, _random_call(rng)])
        st.layer_scale = rng.choice([None, 1e-5, 1])
        st.res_scale = rng.choice([None, 1.0, 0.5])
        st.downsample = None if i == 0 else rng.choice([default_downsample(), None, ds()])
        stages.append(st)
    recipe = None
    if rng.random() < 0.7:
        recipe = RecipeSpec(
            epochs=rng.randint(1, 400), optimizer=rng.choice(["adamw", "lamb", "odd name"]),
            lr=rng.choice([4e-3, 1e-4, 5e-5, 0.1]), betas=(0.9, rng.choice([0.999, 0.95])),
            randaugment=rng.choice([None, "rand-m9-mstd0.5-inc1", "rand-m7"]),
            ema=rng.choice([None, 0.9998]), clip_grad=rng.choice([None, 5.0, 1]),
            finetune_from=rng.choice([None, "caformer_s18", "x1", "none"]),
            amp=rng.choice([True, False]), sched=rng.choice(["cosine", "constant"]))
    return ModelSpec(
        name=rng.choice(["m", "model", "x2", "caformer_s18_384"]),
        in_chans=rng.choice([3, 1]), img_size=(rng.choice([224, 64]), rng.choice([224, 96])),
        num_classes=rng.choice([1000, 10, 21841]),
        stem=rng.choice([default_stem(), ds()]), stages=stages,
        output_norm=rng.choice([call("layernorm", bias=True, eps=1e-6), _random_call(rng)]),
        head=rng.choice([call("linear"), _random_call(rng)]),
        eval=EvalSpec(crop_pct=rng.choice([1.0, 0.875]),
                      interpolation=rng.choice(["bicubic", "bilinear"]),
                      mean=rng.choice([(0.485, 0.456, 0.406), (0.5, 0.5, 0.5)]),
                      std=(0.229, 0.224, 0.225)),
        limits=LimitsSpec(max_params=rng.choice([10 ** 9, 2 * 10 ** 9, 1_500_000, 123_456_789]),
                          max_macs=rng.choice([10 ** 12, 50 * 10 ** 9, 7])),
        recipe=recipe,
    )


def test_round_trip_holds_for_random_ir() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        spec = _random_spec(rng)
        text = to_mf(spec)
        again = parse_mf(text, "r.mf")
        assert again == spec, text
        assert to_mf(again) == text


# --- fuzzing --------------------------------------------------------------------------

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9][0-9.eE+-]*[KMGT]?|\S")
_ODD = list("{}()[],=@#\"'x:;.-+0123456789\n\t \\") + ["\u00e9", "\u200b", "\x00"]
_WORDS = ["stage", "model", "train", "none", "true", "x3", "@64", "1e-6", "2G", "3x32x32",
          "layernorm(eps=1e-6)", "[sepconv, pooling]", "(0.5, 0.5)", "mlp", "ratio", "{", "}",
          "downsample", "conv(kernel=3)", "-1", "0", "999999", "\"s\"", "attention", "random"]


_OPS = ["del_char", "ins_char", "rep_char", "del_token", "rep_token", "rep_token",
        "swap_kind", "dup_token", "truncate"]
_NUMBER = re.compile(r"[0-9]")


def _mutate(text: str, rng: random.Random) -> str:
    """1-3 random edits: characters, whole tokens, numbers <-> words, truncation."""
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(_OPS)
        if not text:
            text = rng.choice(_WORDS)
            continue
        i = rng.randrange(len(text))
        if op == "del_char":
            text = text[:i] + text[i + 1:]
        elif op == "ins_char":
            text = text[:i] + rng.choice(_ODD) + text[i:]
        elif op == "rep_char":
            text = text[:i] + rng.choice(_ODD) + text[i + 1:]
        else:
            tokens = list(_TOKEN.finditer(text))
            if not tokens:
                continue
            m = rng.choice(tokens)
            a, b = m.span()
            if op == "del_token":
                text = text[:a] + text[b:]
            elif op == "rep_token":
                text = text[:a] + rng.choice(_WORDS) + text[b:]
            elif op == "swap_kind":  # a number becomes a word, a word a number
                new = (rng.choice(["none", "true", "starrelu", "x"]) if _NUMBER.match(m.group())
                       else rng.choice(["0", "1", "-1", "2.5", "1e-6", "7"]))
                text = text[:a] + new + text[b:]
            elif op == "dup_token":
                text = text[:b] + " " + m.group() + text[b:]
            else:
                text = text[:a]
    return text


# Small specs keep the fuzz fast: every mutant that parses is also checked and sized.
_FUZZ_BASES = [
    Path(SPECS[0]).parent / "demo_tiny.mf",
]
_FUZZ_EXTRA = """model fuzz {
  input 3x32x32
  classes 5
  stem conv(kernel=4, stride=4, padding=0) post_norm layernorm(bias=false, eps=1e-6)
  norm modified_layernorm(eps=1e-6)
  mlp ratio 2 act gelu bias true
  layer_scale 1e-5
  downsample conv(kernel=2, stride=2, padding=0) pre_norm batchnorm
  stage [pooling, dwconv(kernel=3)] x2 @8
  stage random x1 @8  res_scale 1.0  downsample none
  stage attention(head_dim=8) x1 @16  mlp ratio 4
  output_norm layernorm(bias=true)
  head mlp(ratio=2, act=squared_relu, norm=layernorm(bias=true, eps=1e-5))
  eval { crop_pct 0.9  interpolation bilinear  mean (0.5, 0.5, 0.5)  std (0.5, 0.5, 0.5) }
  limits { params 10M  macs 1G }
  train { epochs 2  batch_size 8  betas (0.9, 0.99)  randaugment "rand-m9"  ema none }
}
"""


@pytest.mark.slow
def test_fuzzed_specs_raise_only_located_spec_errors(tmp_path: Path) -> None:
    bases = [p.read_text() for p in _FUZZ_BASES] + [_FUZZ_EXTRA]
    rng = random.Random(20240607)
    path = tmp_path / "fuzz.mf"
    outcomes = {"ok": 0, "error": 0}
    for case in range(240):
        text = _mutate(rng.choice(bases), rng)
        path.write_text(text, encoding="utf-8")
        try:
            check_spec(path)
            outcomes["ok"] += 1
        except SpecError as err:
            outcomes["error"] += 1
            assert err.line is not None and err.column is not None, (case, text, str(err))
            assert err.line >= 1 and err.column >= 1
            assert err.render(text)  # renders without failing
        except Exception as exc:  # pragma: no cover - the failure this test looks for
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc}\n--- spec ---\n{text}")
    assert outcomes["ok"] > 10 and outcomes["error"] > 50, outcomes
