"""One canonical component form: the fingerprint hashes it, weight inheritance compares and
prints it (mfdsl.fingerprint.canonical_call / call_text)."""
from __future__ import annotations

import importlib

from mfdsl.fingerprint import call_text, canonical_call
from mfdsl.ir import call

importlib.import_module("mfdsl.layers")  # registers the built-in components


def test_defaults_and_integral_floats_are_one_component() -> None:
    written = call("mlp", ratio=4.0, norm=call("layernorm", bias=True, eps=1e-5))
    bare = call("mlp")
    assert canonical_call(written, "head") == canonical_call(bare, "head")
    assert call_text(written, "head") == call_text(bare, "head")
    assert call_text(bare, "head") == (
        "mlp(act='squared_relu', bias=True, norm=layernorm(bias=True, eps=1e-05), ratio=4)")


def test_a_changed_argument_is_another_component() -> None:
    assert call_text(call("sepconv", kernel=3), "mixer") != call_text(call("sepconv"), "mixer")
    assert call_text(call("mlp", ratio=2), "head") != call_text(call("mlp"), "head")
    assert call_text(None) is None
