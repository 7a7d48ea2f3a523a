"""The .yaml front end: loading, located errors, the schema, the printer, fuzzing."""
from __future__ import annotations

import glob
import json
import os
import random

import pytest
import yaml

from mfdsl.api import check_spec, load_spec
from mfdsl.emit.yaml import build_schema, scalar, schema_text, to_yaml
from mfdsl.errors import SpecError
from mfdsl.frontend.yaml_spec import parse_yaml
from mfdsl.ir import (
    Call, DownsampleSpec, LimitsSpec, ModelSpec, RecipeSpec, StageSpec, call,
    default_downsample,
)
from mfdsl.registry import registry, resolve_args

from conftest import error_of as spec_error_of
from specs_py import paper_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAML_SPECS = sorted(glob.glob(os.path.join(ROOT, "specs", "*.yaml")))
SCHEMA_PATH = os.path.join(ROOT, "grammar", "metaformer.schema.json")

MINIMAL = "model: tiny\nstages:\n  - {mixer: pooling, depth: 1, width: 16}\n"


def error_of(text: str, *, check: bool = False) -> SpecError:
    def read(text: str) -> None:
        spec = parse_yaml(text, "t.yaml")
        if check:
            check_spec(spec)
    return spec_error_of(read, text)


def at(e: SpecError) -> tuple:
    return (e.path, e.line, e.column)


# --- valid specs -----------------------------------------------------------------------

def test_zoo_has_the_required_specs() -> None:
    names = {os.path.basename(p) for p in YAML_SPECS}
    assert {"randformer.yaml", "caformer_s18.yaml", "poolformerv2_s12.yaml",
            "convformer_s18.yaml"} <= names


@pytest.mark.parametrize("path", YAML_SPECS, ids=os.path.basename)
def test_zoo_specs_load_and_check(path: str) -> None:
    spec = check_spec(path)
    assert spec.source == path
    assert len(spec.stages) == 4
    assert spec.recipe is not None


def _resolved(c: Call, kind: str) -> dict:
    """A component's full arguments, so literal spellings of the same thing compare equal."""
    args = resolve_args(registry.get(kind, c.name), c.args)
    out = {}
    for k, v in args.items():
        p = registry.get(kind, c.name).param(k)
        if isinstance(p.type, str):
            v = v if isinstance(v, Call) else call(v)
            v = (v.name, _resolved(v, p.type))
        out[k] = v
    return {"name": c.name, **out}


@pytest.mark.parametrize("path", YAML_SPECS, ids=os.path.basename)
def test_zoo_specs_match_the_paper_models(path: str) -> None:
    """Each YAML twin describes the paper's model built independently in Python."""
    spec = load_spec(path)
    name = "randformer_s12" if spec.name == "randformer_s12" else spec.name
    ref = paper_spec(name)
    assert spec.depths == ref.depths and spec.widths == ref.widths
    assert spec.stem == ref.stem and spec.img_size == ref.img_size
    assert spec.num_classes == ref.num_classes and spec.eval == ref.eval
    for st, rt in zip(spec.stages, ref.stages):
        assert [m.name for m in st.mixers] == [m.name for m in rt.mixers]
        assert _resolved(st.norm, "norm") == _resolved(rt.norm, "norm")
        assert (st.mlp_ratio, st.mlp_bias, st.mlp_act) == (rt.mlp_ratio, rt.mlp_bias, rt.mlp_act)
        assert (st.layer_scale, st.res_scale) == (rt.layer_scale, rt.res_scale)
        assert st.downsample == rt.downsample
    assert _resolved(spec.output_norm, "norm") == _resolved(ref.output_norm, "norm")
    assert _resolved(spec.head, "head") == _resolved(ref.head, "head")


def test_randformer_recipe_is_the_papers() -> None:
    spec = load_spec(os.path.join(ROOT, "specs", "randformer.yaml"))
    r = spec.recipe
    assert (r.optimizer, r.lr, r.lr_batch, r.batch_size) == ("adamw", 4e-3, 4096, 4096)
    assert (r.warmup_epochs, r.drop_path, r.epochs) == (5, 0.1, 300)
    # everything else is the official recipe (cooldown, eps and fp32 stated in the spec)
    assert r == RecipeSpec(drop_path=0.1, cooldown_epochs=10, opt_eps=1e-8, amp=False)
    assert spec.stages[0].norm == call("modified_layernorm", bias=False, eps=1e-6)
    assert [s.res_scale for s in spec.stages] == [None, None, 1.0, 1.0]


def test_minimal_spec_gets_ir_defaults() -> None:
    spec = parse_yaml(MINIMAL + "  - {mixer: pooling, depth: 1, width: 32}\n", "t.yaml")
    assert spec.name == "tiny" and spec.recipe is None
    assert spec.stages[0].downsample is None
    assert spec.stages[1].downsample == default_downsample()
    assert spec.stem == ModelSpec().stem and spec.head == call("linear")
    assert spec.stages[0] == StageSpec(depth=1, width=16, mixers=[call("pooling")])


def test_settings_map_to_ir_fields_with_locations() -> None:
    text = (
        "model: m\n"                                                       # 1
        "input: {channels: 1, size: [64, 96]}\n"                           # 2
        "classes: 10\n"                                                    # 3
        "defaults:\n"                                                      # 4
        "  mlp: {ratio: 2, act: gelu, bias: true}\n"                       # 5
        "  downsample: {kernel: 2, padding: 0, pre_norm: null}\n"          # 6
        "stages:\n"                                                        # 7
        "  - {mixer: [pooling, {attention: {heads: 2}}], depth: 2, width: 8}\n"  # 8
        "  - {mixer: identity, depth: 1, width: 16, layer_scale: 1.0e-5,\n"      # 9
        "     downsample: {stride: 1, kernel: 1}}\n"                       # 10
        "  - {mixer: identity, depth: 1, width: 16, downsample: none}\n"   # 11
        "limits: {params: 2M, macs: 1000000000}\n"                         # 12
        "train: {betas: [0.9, 0.95], ema: 0.9999, randaugment: none}\n"    # 13
    )
    spec = parse_yaml(text, "m.yaml")
    assert (spec.in_chans, spec.img_size, spec.num_classes) == (1, (64, 96), 10)
    s0, s1, s2 = spec.stages
    assert s0.mixers == [call("pooling"), call("attention", heads=2)]
    assert (s0.mlp_ratio, s0.mlp_act, s0.mlp_bias) == (2, call("gelu"), True)
    assert isinstance(s0.mlp_ratio, int)  # ints stay ints
    assert s1.layer_scale == 1e-5
    # defaults.downsample then the stage's own keys, over default_downsample()
    assert s1.downsample == DownsampleSpec(kernel=1, stride=1, padding=0, pre_norm=None)
    assert s2.downsample is None
    assert spec.limits == LimitsSpec(max_params=2_000_000, max_macs=10**9)
    assert spec.recipe.betas == (0.9, 0.95) and spec.recipe.randaugment is None
    # locations: values, a field from `defaults`, a Call's name and arguments
    assert str(spec.locs["img_size"]) == "m.yaml:2:28"
    assert str(s0.locs["mlp_act"]) == "m.yaml:5:24"
    assert str(s0.mixers[1].locs["name"]) == "m.yaml:8:24"
    assert str(s0.mixers[1].locs["heads"]) == "m.yaml:8:43"
    assert str(s0.mixers[1].loc("")) == "m.yaml:8:23"
    assert str(s1.downsample.locs["stride"]) == "m.yaml:10:27"
    assert str(s1.downsample.locs["padding"]) == "m.yaml:6:36"
    assert str(spec.recipe.locs["ema"]) == "m.yaml:13:34"
    assert str(spec.limits.locs["max_params"]) == "m.yaml:12:18"


def test_floats_in_every_yaml_spelling() -> None:
    text = MINIMAL + "output_norm: {layernorm: {eps: 1e-6, bias: true}}\ntrain: {lr: 4E-3, " \
                     "warmup_lr: .5e-6, min_lr: 1.0e-05, mixup: 1, cutmix: 0.}\n"
    spec = parse_yaml(text, "t.yaml")
    assert spec.output_norm.args["eps"] == 1e-6 and isinstance(spec.output_norm.args["eps"], float)
    r = spec.recipe
    assert (r.lr, r.warmup_lr, r.min_lr, r.cutmix) == (4e-3, 0.5e-6, 1e-5, 0.0)
    assert isinstance(r.mixup, int) and isinstance(r.cutmix, float)


def test_yaml_11_oddities_are_strings() -> None:
    spec = parse_yaml(MINIMAL + "head: {linear: {}}\ntrain: {randaugment: on}\n", "t.yaml")
    assert spec.recipe.randaugment == "on"  # YAML 1.2: `on` is a string, not a boolean
    e = error_of(MINIMAL + "head: {linear: {bias: yes}}\n")
    assert at(e) == ("t.yaml", 4, 23)
    assert e.message == "head.linear.bias: expected true or false, got 'yes'"


# --- located errors --------------------------------------------------------------------

def test_syntax_error_located() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: sepconv, depth: 3 width: 64}\n")
    # `3 width` is one plain scalar, so the parser stops at the next ':'
    assert at(e) == ("t.yaml", 3, 36)
    assert e.message.startswith("YAML syntax error")
    assert "line 3, column 5" in e.hint


def test_bad_indentation_located() -> None:
    e = error_of("model: x\n stages: 3\n")
    assert at(e) == ("t.yaml", 2, 8)
    assert "indentation" in e.hint


def test_tab_indentation_located() -> None:
    e = error_of("model: x\nstages:\n\t- {mixer: pooling, depth: 2, width: 64}\n")
    assert at(e) == ("t.yaml", 3, 1)
    assert "tabs" in e.hint


def test_duplicate_key_located() -> None:
    e = error_of("model: x\nstages:\n  - mixer: pooling\n    depth: 2\n    depth: 3\n"
                 "    width: 64\n")
    assert at(e) == ("t.yaml", 5, 5)
    assert "duplicate key 'depth'" in e.message and "line 4" in e.message


def test_duplicate_key_in_flow_mapping() -> None:
    e = error_of("model: x\nmodel: y\nstages: []\n")
    assert at(e) == ("t.yaml", 2, 1)


def test_unknown_key_with_nearest_name() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: pooling, dpeth: 2, width: 64}\n")
    assert at(e) == ("t.yaml", 3, 22)
    assert e.message == "unknown key 'dpeth' in stages[0]"
    assert e.hint == "did you mean 'depth'?"


def test_unknown_top_level_key() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: pooling, depth: 2, width: 64}\ntrian: {}\n")
    assert at(e) == ("t.yaml", 4, 1)
    assert e.hint == "did you mean 'train'?"


def test_unknown_component_argument_with_hint() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: {attention: {head_dm: 3}}, depth: 2, "
                 "width: 64}\n")
    assert at(e) == ("t.yaml", 3, 26)
    assert e.hint == "did you mean 'head_dim'?"


def test_wrong_type_located() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: pooling, depth: 2, width: 64}\n"
                 "  - {mixer: pooling, depth: 2, width: 64}\n"
                 "  - {mixer: pooling, depth: three, width: 64}\n")
    assert at(e) == ("t.yaml", 5, 29)
    assert e.message == "stages[2].depth: expected an integer, got 'three'"


def test_enum_error_with_hint() -> None:
    e = error_of(MINIMAL + "train:\n  optimizer: adamm\n")
    assert at(e) == ("t.yaml", 5, 14)
    assert "one of adamw, lamb, sgd" in e.message and e.hint == "did you mean 'adamw'?"


def test_missing_required_key() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: pooling, width: 64}\n")
    assert at(e) == ("t.yaml", 3, 5)
    assert e.message == "stages[0]: missing required key 'depth'"


@pytest.mark.parametrize("value,col,words", [
    ("{pooling: {}, sepconv: {}}", 13, "a one-key mapping"),
    ("5", 13, "got 5"),
    ("'two words'", 13, "got 'two words'"),
    ("{pooling: 3}", 23, "arguments of 'pooling' must be a mapping"),
    ("[]", 13, "at least one component"),
    ("{'two words': {}}", 14, "'two words' is not a component name"),
])
def test_bad_component_ref_shape(value: str, col: int, words: str) -> None:
    e = error_of(f"model: x\nstages:\n  - {{mixer: {value}, depth: 2, width: 64}}\n")
    assert at(e) == ("t.yaml", 3, col)
    assert words in e.message


def test_bad_nested_component_ref() -> None:
    e = error_of("model: x\nhead: {mlp: {norm: 7}}\nstages:\n  - {mixer: pooling, depth: 2, "
                 "width: 64}\n")
    assert at(e) == ("t.yaml", 2, 20)
    assert "expected a norm" in e.message


@pytest.mark.parametrize("text,pos", [
    ("model: !!python/object/apply:os.system ['echo pwned']\nstages: []\n", (1, 8)),
    ("model: x\nstages:\n  - {mixer: !!python/name:os.system '', depth: 2, width: 64}\n",
     (3, 13)),
    ("model: x\nstages: !!python/object:mfdsl.ir.StageSpec {depth: 1}\n", (2, 9)),
])
def test_python_tags_rejected(text: str, pos: tuple, capfd) -> None:
    e = error_of(text)
    assert (e.line, e.column) == pos
    assert "python tags are not allowed" in e.message
    assert "pwned" not in capfd.readouterr().out


def test_other_tags_and_merge_keys_rejected() -> None:
    assert at(error_of("model: !foo x\n")) == ("t.yaml", 1, 8)
    e = error_of("d: &a {depth: 2}\nmodel: x\nstages:\n  - {<<: *a, width: 3}\n")
    assert at(e) == ("t.yaml", 4, 6) and "merge keys" in e.message


@pytest.mark.parametrize("text,pos,words", [
    ("", (1, 1), "empty"),
    ("# only a comment\n", (1, 1), "empty"),
    ("- model: x\n", (1, 1), "must be a mapping"),
    ("hello\n", (1, 1), "must be a mapping"),
    ("model: x\n---\nmodel: y\n", (2, 1), "one YAML document"),
    ("model: x\x07\n", (1, 9), "control character"),
])
def test_document_level_errors(text: str, pos: tuple, words: str) -> None:
    e = error_of(text)
    assert (e.line, e.column) == pos and words in e.message


def test_stage0_downsample_rejected() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: pooling, depth: 2, width: 64, "
                 "downsample: {kernel: 3}}\n")
    assert at(e) == ("t.yaml", 3, 43) and "stem" in e.message


def test_semantic_errors_point_into_the_yaml() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: sepconf, depth: 2, width: 64}\n", check=True)
    assert at(e) == ("t.yaml", 3, 13) and e.hint == "did you mean 'sepconv'?"
    e = error_of("model: x\nhead: {mlp: {act: gelux}}\n" + MINIMAL.split("\n", 1)[1],
                 check=True)
    assert at(e) == ("t.yaml", 2, 19) and "unknown activation" in e.message
    e = error_of("model: x\nstages:\n  - {mixer: pooling, depth: 2, width: 64}\n"
                 "  - {mixer: pooling, depth: 2, width: 128, downsample: none}\n", check=True)
    assert at(e) == ("t.yaml", 4, 56)


def test_unknown_component_names_pass_the_schema() -> None:
    """Plugins register components from Python; the schema must not reject their names."""
    spec = parse_yaml("model: x\nstages:\n  - {mixer: {my_plugin_mixer: {k: 3}}, depth: 1, "
                      "width: 8}\n", "t.yaml")
    assert spec.stages[0].mixers == [call("my_plugin_mixer", k=3)]


def test_missing_file_and_extension() -> None:
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(os.path.join(ROOT, "specs", "nope.yaml"))


# --- schema ----------------------------------------------------------------------------

def test_committed_schema_is_up_to_date() -> None:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        assert f.read() == schema_text(), "run: python -m mfdsl.emit.yaml --write-schema"


def test_schema_is_valid_draft_2020_12_with_editor_docs() -> None:
    from jsonschema import Draft202012Validator

    schema = build_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema") and schema["$id"]

    def walk(node, where):
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                if "$ref" not in prop:
                    for key in ("title", "description", "examples"):
                        assert key in prop, f"{where}.{name} lacks {key}"
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    walk(schema, "#")
    attention = schema["$defs"]["mixer"]["anyOf"][1]["properties"]["attention"]
    assert attention["properties"]["head_dim"]["default"] == 32


def test_schema_validates_zoo_as_plain_yaml() -> None:
    """Editors read the files with a stock YAML parser: the zoo must validate there too."""
    from jsonschema import Draft202012Validator

    v = Draft202012Validator(build_schema())
    for path in YAML_SPECS:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        assert not list(v.iter_errors(data)), path


# --- printer ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", YAML_SPECS, ids=os.path.basename)
def test_print_round_trip(path: str) -> None:
    spec = load_spec(path)
    text = to_yaml(spec)
    assert text.splitlines()[0] == \
        "# yaml-language-server: $schema=../grammar/metaformer.schema.json"
    assert parse_yaml(text, "out.yaml") == spec
    assert to_yaml(parse_yaml(text, "out.yaml")) == text  # canonical: a fixed point


def test_printer_writes_only_non_defaults() -> None:
    text = to_yaml(parse_yaml(MINIMAL, "t.yaml"))
    assert text.splitlines()[1:] == [
        "model: tiny", "stages:", "  - {mixer: pooling, depth: 1, width: 16}"]


def test_printer_round_trips_unusual_specs() -> None:
    st = [
        StageSpec(depth=1, width=8, mixers=[call("pooling", pool_size=5), call("sepconv",
                  act=call("gelu", approximate="tanh"), act2="identity")],
                  mlp_ratio=2.5, mlp_act=call("starrelu", learnable=False), layer_scale=1e-6),
        StageSpec(depth=2, width=8, downsample=None, res_scale=0.5),
        StageSpec(depth=1, width=24, downsample=DownsampleSpec(kernel=2, stride=2, padding=0,
                  bias=False, pre_norm=None, post_norm=call("batchnorm"))),
    ]
    spec = ModelSpec(name="odd name: with colon", in_chans=1, img_size=(32, 48),
                     num_classes=7, stages=st, head=call("mlp", ratio=1, norm="identity"),
                     recipe=RecipeSpec(ema=0.999, randaugment=None, lr=1e-3,
                                       finetune_from="yes", betas=(0.9, 0.95)),
                     limits=LimitsSpec(max_params=123))
    spec.stem = DownsampleSpec(kernel=3, stride=1, padding=1, pre_norm=call("identity"))
    text = to_yaml(spec)
    back = parse_yaml(text, "t.yaml")
    assert back == spec
    assert back.stages[0].mixers[1].args["act2"] == "identity"  # str stays str
    assert back.stages[0].mixers[1].args["act"] == call("gelu", approximate="tanh")
    assert back.recipe.finetune_from == "yes"


def test_printer_factors_shared_settings_into_defaults() -> None:
    spec = paper_spec("poolformerv2_s12")
    text = to_yaml(spec)
    assert "defaults:\n  norm: {modified_layernorm: {eps: 1.0e-06}}\n" in text
    assert parse_yaml(text, "t.yaml") == spec


@pytest.mark.parametrize("v", [1e-6, 1e-5, 4e-3, 0.1, 1.0, 2.5e10, 1e100, -3e-7, 0.0,
                               123456789.0, 5e-324, 1.7976931348623157e308])
def test_floats_survive_printing(v: float) -> None:
    text = scalar(v)
    assert yaml.safe_load(f"x: {text}")["x"] == v  # stock PyYAML (YAML 1.1) agrees
    spec = ModelSpec(name="f", stages=[StageSpec(depth=1, width=8, layer_scale=v,
                                                 mlp_act=call("starrelu", scale=v))])
    back = parse_yaml(to_yaml(spec), "t.yaml").stages[0]
    assert back.layer_scale == v and type(back.layer_scale) is float
    back = back.mlp_act.args["scale"]
    assert back == v and type(back) is float


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "1e999"])
def test_non_finite_numbers_rejected(text: str) -> None:
    e = error_of(MINIMAL + f"train: {{head_dropout: {text}}}\n")
    assert at(e) == ("t.yaml", 4, 23) and "not a finite number" in e.message


def test_integral_floats_are_not_integers() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: pooling, depth: 2.0, width: 64}\n")
    assert at(e) == ("t.yaml", 3, 29)
    assert e.message == "stages[0].depth: expected an integer, got 2.0"


def test_absurd_sizes_rejected_before_building() -> None:
    e = error_of("model: x\nstages:\n  - {mixer: pooling, depth: 1000000000000, width: 64}\n")
    assert at(e) == ("t.yaml", 3, 29) and "<= 1000" in e.message
    e = error_of("model: x\ninput: {size: 1000000}\n" + MINIMAL.split("\n", 1)[1])
    assert at(e) == ("t.yaml", 2, 15)


def test_strings_that_look_like_other_scalars_are_quoted() -> None:
    for s in ["true", "null", "1e-6", "3", "yes", "on", "a: b", "", " x", "#c", "-", "1.0"]:
        spec = ModelSpec(name=s, stages=[StageSpec(depth=1, width=8)])
        assert parse_yaml(to_yaml(spec), "t.yaml").name == s, s


def test_random_specs_round_trip() -> None:
    rng = random.Random(7)
    mixers = [call("identity"), call("pooling"), call("sepconv", kernel=5),
              call("attention", head_dim=16), call("random")]
    norms = [call("layernorm"), call("modified_layernorm", bias=True),
             call("batchnorm", eps=1e-3), call("identity")]
    for _ in range(60):
        stages = []
        for i in range(rng.randint(1, 4)):
            stages.append(StageSpec(
                depth=rng.randint(1, 3), width=8 * rng.randint(1, 4),
                mixers=rng.sample(mixers, rng.randint(1, 2)),
                norm=rng.choice(norms), mlp_ratio=rng.choice([4.0, 2, 3.5]),
                layer_scale=rng.choice([None, 1e-5]), res_scale=rng.choice([None, 1.0]),
                downsample=None if i == 0 else rng.choice([None, default_downsample(),
                                                           DownsampleSpec(kernel=2, padding=0)]),
            ))
        spec = ModelSpec(name="r", stages=stages,
                         recipe=rng.choice([None, RecipeSpec(), RecipeSpec(drop_path=0.3)]))
        assert parse_yaml(to_yaml(spec), "t.yaml") == spec


# --- fuzzing ---------------------------------------------------------------------------

_SNIPPETS = [":", "-", "{", "}", "[", "]", ",", "'", '"', "\t", "\n", " ", "#", "&a", "*a",
             "!!python/name:os.system", "!!str", "null", "~", "1e-6", "-1", "0", "1.5",
             "none", "true", "x" * 3, "99999999999999999999", "\x00", "é", "<<"]


def _mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(text) + 1)
        if op == 0 and text:  # delete a span
            text = text[:i] + text[i + rng.randint(1, 8):]
        elif op == 1:  # insert a token
            text = text[:i] + rng.choice(_SNIPPETS) + text[i:]
        elif op == 2:  # duplicate or drop a line
            lines = text.splitlines(True)
            j = rng.randrange(len(lines))
            if rng.random() < 0.5:
                lines.insert(j, lines[j])
            else:
                del lines[j]
            text = "".join(lines) or "\n"
        elif op == 3:  # replace a number
            text = text[:i] + str(rng.choice([0, -3, 7, 2.5, 10**12])) + text[i + 1:]
        else:  # swap two lines
            lines = text.splitlines(True)
            a, b = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[a], lines[b] = lines[b], lines[a]
            text = "".join(lines)
    return text


def test_fuzz_mutated_yaml_raises_only_spec_errors(tmp_path) -> None:
    rng = random.Random(20240611)
    sources = [open(p, encoding="utf-8").read() for p in YAML_SPECS]
    path = tmp_path / "fuzz.yaml"
    outcomes = {"ok": 0, "error": 0}
    for n in range(300):
        text = _mutate(rng.choice(sources), rng)
        path.write_text(text, encoding="utf-8")
        try:
            check_spec(str(path), size_limits=n % 10 == 0)
            outcomes["ok"] += 1
        except SpecError as e:
            assert e.line is None or e.line >= 1
            str(e)
            e.render(text)
            outcomes["error"] += 1
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{type(exc).__name__}: {exc}\n--- input ---\n{text}")
    assert outcomes["ok"] > 10 and outcomes["error"] > 50, outcomes


_VALUES = [0, -1, 1, 3, 10**6, 10**12, 0.5, 1e-9, -0.0, 1.5e300, True, False, None, "none",
           "x", "sepconv", [], [1, 2], {}, {"a": 1}, {"attention": {"heads": 3}}, "1e-6"]


def _paths(d, p=()):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, p + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, p + (i,))
    if p:
        yield p


def test_fuzz_mutated_values_raise_only_spec_errors() -> None:
    """Well-formed YAML with odd values anywhere: the schema and checks catch all of it."""
    import copy

    from mfdsl.emit.yaml import flow

    rng = random.Random(5)
    sources = [yaml.safe_load(open(p, encoding="utf-8")) for p in YAML_SPECS]
    outcomes = {"ok": 0, "error": 0}
    for n in range(300):
        d = copy.deepcopy(rng.choice(sources))
        for _ in range(rng.randint(1, 2)):
            path = rng.choice(list(_paths(d)))
            node = d
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = copy.deepcopy(rng.choice(_VALUES))
        text = "".join(f"{k}: {flow(v)}\n" for k, v in d.items())
        try:
            check_spec(parse_yaml(text, "fuzz.yaml"), size_limits=n % 3 == 0)
            outcomes["ok"] += 1
        except SpecError:
            outcomes["error"] += 1
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{type(exc).__name__}: {exc}\n--- input ---\n{text}")
    assert outcomes["ok"] > 5 and outcomes["error"] > 100, outcomes


def test_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    e = error_of("\n".join(lines) + "\nmodel: x\n")
    assert "more than" in e.message


@pytest.mark.parametrize("depth", [100, 5000])
def test_deep_nesting_is_a_spec_error(depth: int) -> None:
    e = error_of("model: " + "[" * depth + "]" * depth + "\n")
    assert "nested" in e.message and e.line == 1


def test_bom_and_crlf_are_accepted() -> None:
    text = "\ufeff" + MINIMAL.replace("\n", "\r\n")
    assert parse_yaml(text, "t.yaml") == parse_yaml(MINIMAL, "t.yaml")


def test_write_schema_command(tmp_path) -> None:
    from mfdsl.emit.yaml import main

    out = tmp_path / "schema.json"
    assert main(["--write-schema", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == schema_text()
    assert main(["--check"]) == 0


def test_schema_json_loads() -> None:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        assert json.load(f)["title"]
