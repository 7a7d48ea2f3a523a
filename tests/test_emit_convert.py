"""Converting between the two spec formats keeps the IR: A -> B -> A for every zoo spec.

Uses the printers (``mfdsl.emit.mf.to_mf``, ``mfdsl.emit.yaml.to_yaml``) and the parsers
(``mfdsl.frontend.mf.parse_mf``, ``mfdsl.frontend.yaml_spec.parse_yaml``). IR equality
ignores source locations.
"""
from __future__ import annotations

import glob
import importlib
import os
from typing import Any, Callable, Tuple

import pytest

from mfdsl.ir import ModelSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = sorted(glob.glob(os.path.join(ROOT, "specs", "*.mf"))
               + glob.glob(os.path.join(ROOT, "specs", "*.yaml")))
# YAML twins of .mf zoo entries whose file names differ.
TWIN_NAMES = {"randformer.yaml": "randformer_s12.mf"}


def _functions(kind: str) -> Tuple[Callable[[str, str], ModelSpec], Callable[[ModelSpec], str]]:
    """(parse, print) of one format; skips the test if that front end is not there yet."""
    if kind == "mf":
        names = ("mfdsl.frontend.mf", "parse_mf", "mfdsl.emit.mf", "to_mf")
    else:
        names = ("mfdsl.frontend.yaml_spec", "parse_yaml", "mfdsl.emit.yaml", "to_yaml")
    found = []
    for module, attr in (names[:2], names[2:]):
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError) as exc:
            pytest.skip(f"{module}.{attr} is not available: {exc}")
    return found[0], found[1]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _kind(path: str) -> str:
    return "mf" if path.endswith(".mf") else "yaml"


def _diff(a: Any, b: Any) -> str:
    """The first differing field, for a readable failure."""
    if isinstance(a, ModelSpec) and isinstance(b, ModelSpec):
        for name in a.__dataclass_fields__:
            f = a.__dataclass_fields__[name]
            if f.compare and getattr(a, name) != getattr(b, name):
                return f"{name}: {getattr(a, name)!r} != {getattr(b, name)!r}"
    return f"{a!r} != {b!r}"


def test_zoo_has_both_kinds() -> None:
    kinds = {_kind(p) for p in SPECS}
    assert "yaml" in kinds
    assert len([p for p in SPECS if _kind(p) == "yaml"]) >= 4


@pytest.mark.parametrize("path", SPECS, ids=os.path.basename)
def test_round_trip_through_the_other_format(path: str) -> None:
    """A -> B -> A gives the same IR, and printing A again gives the same text."""
    a_kind = _kind(path)
    b_kind = "yaml" if a_kind == "mf" else "mf"
    parse_a, print_a = _functions(a_kind)
    parse_b, print_b = _functions(b_kind)
    original = parse_a(_read(path), path)

    b_text = print_b(original)
    via_b = parse_b(b_text, f"converted.{b_kind}")
    assert via_b == original, f"{a_kind}->{b_kind}: {_diff(via_b, original)}\n{b_text}"

    a_text = print_a(via_b)
    back = parse_a(a_text, f"back.{a_kind}")
    assert back == original, f"{a_kind}->{b_kind}->{a_kind}: {_diff(back, original)}\n{a_text}"
    # The printers are canonical: printing the round-tripped IR changes nothing.
    assert print_a(back) == print_a(original)
    assert print_b(back) == b_text


@pytest.mark.parametrize("path", [p for p in SPECS if p.endswith(".yaml")],
                         ids=os.path.basename)
def test_yaml_twin_equals_its_mf_twin(path: str) -> None:
    name = os.path.basename(path)
    mf_path = os.path.join(ROOT, "specs", TWIN_NAMES.get(name, name[:-len(".yaml")] + ".mf"))
    if not os.path.exists(mf_path):
        pytest.skip(f"no .mf twin {os.path.basename(mf_path)} yet")
    parse_mf, _ = _functions("mf")
    parse_yaml, _ = _functions("yaml")
    from_yaml = parse_yaml(_read(path), path)
    from_mf = parse_mf(_read(mf_path), mf_path)
    assert from_yaml == from_mf, _diff(from_yaml, from_mf)


def test_every_required_twin_exists() -> None:
    for name in ("randformer.yaml", "caformer_s18.yaml", "poolformerv2_s12.yaml",
                 "convformer_s18.yaml"):
        assert os.path.exists(os.path.join(ROOT, "specs", name)), name
