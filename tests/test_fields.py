"""One metadata type (``fields.Field``) and one value checker for IR settings and component
arguments: the same constraint written as a ``Setting`` and as a ``Param`` fails with the
same message, whichever side the value was written on."""
from __future__ import annotations

import math

import pytest

from conftest import error_of, mf_file
from mfdsl.api import check_spec
from mfdsl.checks import check_call, check_setting
from mfdsl.checks.values import check_value
from mfdsl.fields import BOOL, FLOAT, FLOAT32_MAX, INT, STR, Field, num_text
from mfdsl.ir import Call, Node, RecipeSpec, Setting, setting_of
from mfdsl.registry import BuildContext, Param, RegistryError, registry
from mfdsl.schema import value_schema

MIXER = "fields_probe"
LABEL = f"argument 'v' of mixer '{MIXER}'"

# One constraint per row, as a setting and as a component argument (default 1 unless
# given), and per failure kind a bad value with the message and hint both sides must give.
CASES = [
    ("type", Setting(INT, min=1, max=64), Param("v", int, 3, min=1, max=64), "a",
     f"{LABEL} must be an integer, got 'a'", "allowed: >= 1 and <= 64"),
    ("bool as int", Setting(INT, min=1, max=64), Param("v", int, 3, min=1, max=64), True,
     f"{LABEL} must be an integer, got true", "allowed: >= 1 and <= 64"),
    ("none", Setting(INT, min=1, max=64), Param("v", int, 3, min=1, max=64), None,
     f"{LABEL} cannot be none", "allowed: >= 1 and <= 64"),
    ("none unbounded", Setting(BOOL), Param("v", bool, True), None,
     f"{LABEL} cannot be none", "expected true or false"),
    ("low", Setting(INT, min=1, max=64), Param("v", int, 3, min=1, max=64), 0,
     f"{LABEL} must be >= 1, got 0", "allowed: >= 1 and <= 64"),
    ("low exclusive", Setting(FLOAT, min=0.0, min_exclusive=True, max=64.0),
     Param("v", float, 4.0, min=0.0, max=64.0, min_exclusive=True), 0.0,
     f"{LABEL} must be > 0, got 0.0", "allowed: > 0 and <= 64"),
    ("high", Setting(INT, min=1, max=64), Param("v", int, 3, min=1, max=64), 65,
     f"{LABEL} is out of range: 65", "allowed: >= 1 and <= 64"),
    ("choice", Setting(STR, choices=("fast", "slow")),
     Param("v", str, "fast", choices=("fast", "slow")), "slwo",
     f"{LABEL} must be one of fast, slow, got 'slwo'", "did you mean 'slow'?"),
    ("choice far", Setting(STR, choices=("fast", "slow")),
     Param("v", str, "fast", choices=("fast", "slow")), "zzz",
     f"{LABEL} must be one of fast, slow, got 'zzz'", None),
    ("string type", Setting(STR, choices=("fast", "slow")),
     Param("v", str, "fast", choices=("fast", "slow")), 3,
     f"{LABEL} must be a string, got 3", "allowed: one of fast, slow"),
    ("inf", Setting(FLOAT, tensor=True), Param("v", float, 1.0), math.inf,
     f"{LABEL} must be finite, got inf", None),
    ("nan", Setting(FLOAT, tensor=True), Param("v", float, 1.0), math.nan,
     f"{LABEL} must be finite, got nan", None),
    ("float32", Setting(FLOAT, tensor=True), Param("v", float, 1.0), 1e39,
     f"{LABEL} is too large for float32: 1e+39", "float32 holds magnitudes up to 3.4e38"),
    ("float32 int", Setting(FLOAT, tensor=True), Param("v", float, 1.0), 10 ** 39,
     f"{LABEL} is too large for float32: {10 ** 39}", "float32 holds magnitudes up to 3.4e38"),
    ("number", Setting(FLOAT, tensor=True), Param("v", float, 1.0), "x",
     f"{LABEL} must be a number, got 'x'", None),
    ("bool", Setting(BOOL), Param("v", bool, True), 1,
     f"{LABEL} must be true or false, got 1", None),
]


@pytest.fixture
def probe():
    """Register a user mixer whose one argument is ``param``; unregister it afterwards."""
    def register(param: Param) -> None:
        registry.register("mixer", MIXER, param, replace=True)(lambda ctx, v: None)

    yield register
    registry.unregister("mixer", MIXER)


@pytest.mark.parametrize("kind,meta,param,bad,message,hint", CASES, ids=[c[0] for c in CASES])
def test_a_setting_and_an_argument_fail_alike(probe, kind, meta, param, bad, message, hint):
    probe(param)
    arg = error_of(check_call, "mixer", Call(name=MIXER, args={"v": bad}), BuildContext(8))
    own = error_of(check_setting, Node(), "v", meta, bad, LABEL)
    assert (arg.message, arg.hint) == (message, hint)
    assert (own.message, own.hint) == (message, hint)


@pytest.mark.parametrize("kind,meta,param,bad,message,hint", CASES, ids=[c[0] for c in CASES])
def test_the_settings_field_and_the_arguments_field_agree(kind, meta, param, bad, message,
                                                            hint):
    """Besides the front-end metadata, the Setting is the Param's field."""
    f = param.field
    assert meta.type == f.type and meta.range_text() == f.range_text()
    assert (meta.min, meta.max, meta.min_exclusive, meta.choices) == \
        (f.min, f.max, f.min_exclusive, f.choices)


def test_good_values_pass_both_sides_and_floats_are_widened(probe):
    probe(Param("v", float, 4.0, min=0.0, max=64.0, min_exclusive=True))
    args = check_call("mixer", Call(name=MIXER, args={"v": 2}), BuildContext(8))
    assert args["v"] == 2.0 and isinstance(args["v"], float)
    meta = Setting(FLOAT, min=0.0, min_exclusive=True, max=64.0)
    check_setting(Node(), "v", meta, 64, "x")
    assert check_value(meta, 2, "x", None) == 2.0


def test_optional_values_may_be_none_on_both_sides(probe):
    probe(Param("v", int, None, min=1))
    assert check_call("mixer", Call(name=MIXER, args={"v": None}), BuildContext(8))["v"] is None
    check_setting(Node(), "v", Setting(INT, min=1, optional=True), None, "x")


def test_a_float_setting_outside_tensors_is_not_bounded_by_float32():
    check_setting(Node(), "v", Setting(FLOAT), 1e39, "x")  # e.g. a recipe number
    e = error_of(check_setting, Node(), "v", Setting(FLOAT), 10 ** 400, "x")
    assert e.message == "x is too large for a float: about 1e400"


@pytest.mark.parametrize("py,value_type", [(int, INT), (float, FLOAT), (bool, BOOL),
                                           (str, STR), ("activation", "activation"),
                                           ("norm", "norm"), ("mixer", "mixer"),
                                           ("head", "head")])
def test_param_field_maps_every_type(py, value_type):
    f = Param("v", py, 1 if not isinstance(py, str) else "x").field
    assert f.type == value_type
    assert f.tensor == (py is float)  # component floats end up in float32 kernels
    assert not f.optional and Param("v", py, None).field.optional
    assert f.is_component == isinstance(py, str)


def test_param_field_keeps_its_constraints():
    f = Param("v", float, 1.0, min=0.0, max=2.0, min_exclusive=True,
              choices=[0.5, 1.0]).field
    assert (f.min, f.max, f.min_exclusive, f.max_exclusive) == (0.0, 2.0, True, False)
    assert f.choices == (0.5, 1.0)  # a tuple, whatever the plugin passed
    assert f.range_text() == "one of 0.5, 1"


@pytest.mark.parametrize("bad_type", [list, "int", "mlp", None])
def test_a_param_type_no_check_can_read_is_refused_at_registration(bad_type):
    with pytest.raises(RegistryError, match="expected int, float, bool, str or a component"):
        registry.register("mixer", "fields_bad", Param("v", bad_type, 1))(lambda ctx, v: None)
    assert registry.get("mixer", "fields_bad") is None


def test_range_text_writes_numbers_one_way():
    assert Field(FLOAT, min=0.0, min_exclusive=True, max=64.0).range_text() == "> 0 and <= 64"
    assert Field(FLOAT, min=1e-6, max=0.99, max_exclusive=True).range_text() == \
        ">= 1e-06 and < 0.99"
    assert Field(INT).range_text() == ""
    assert Field(BOOL, choices=(True, False)).range_text() == "one of true, false"
    assert [num_text(v) for v in (0.0, 3, 2.5, 1e20)] == ["0", "3", "2.5", "1e+20"]


def test_field_refuses_an_unknown_type():
    with pytest.raises(ValueError, match="unknown value type"):
        Field("integer")


def test_one_schema_writer_for_settings_and_arguments():
    """An optional argument accepts null only; an optional setting also the word none."""
    assert value_schema(Param("v", int, None, min=1).field, none_word=False) == \
        {"type": ["integer", "null"], "minimum": 1}
    assert value_schema(Setting(INT, min=1, optional=True)) == \
        {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}, {"const": "none"}]}
    assert value_schema(Param("v", str, "a", choices=("a", "b")).field) == \
        {"type": "string", "enum": ["a", "b"]}
    assert value_schema(Param("v", "norm", None).field, none_word=False) == \
        {"anyOf": [{"$ref": "#/$defs/norm"}, {"type": "null"}]}


# --- through the front end: the same wording for a recipe choice and an argument choice ---

def test_choice_errors_read_alike_from_a_spec_file(tmp_path):
    p = mf_file(tmp_path, "stage pooling x1 @8", "train { optimizer adamm }")
    e = error_of(check_spec, p)
    assert e.message == "train optimizer must be one of adamw, lamb, sgd, got 'adamm'"
    assert e.hint == "did you mean 'adamw'?" and (e.line, e.column) == (5, 21)
    p = mf_file(tmp_path, "stage pooling x1 @8  mlp act gelu(approximate=tanhh)")
    e = error_of(check_spec, p)
    assert e.message == ("argument 'approximate' of activation 'gelu' must be one of none, "
                         "tanh, got 'tanhh'")
    assert e.hint == "did you mean 'tanh'?" and e.line == 4


def test_the_ir_declares_its_settings_as_fields():
    meta = setting_of(RecipeSpec, "lr")
    assert isinstance(meta, Field) and meta.range_text() == "> 0 and <= 10"
    assert FLOAT32_MAX == float.fromhex("0x1.fffffep+127")
