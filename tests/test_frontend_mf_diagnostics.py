"""Syntax hints are data: each label's example inputs must produce that label, in the
same wording, whatever comes before them; and no parser internals are read."""
from __future__ import annotations

from pathlib import Path

import pytest

from mfdsl.errors import SpecError
from mfdsl.frontend import mf_diagnostics
from mfdsl.frontend.mf import parse_mf
from mfdsl.frontend.mf_diagnostics import CHARACTER_HINTS, HINT_EXAMPLES

CASES = [(label, ex.replace("{M}", "").replace("{B}", "")) for label, exs in
         HINT_EXAMPLES.items() for ex in exs]


def hint_of(text: str) -> str:
    with pytest.raises(SpecError) as e:
        parse_mf(text, "t.mf")
    return e.value.hint or ""


@pytest.mark.parametrize("label, example", CASES, ids=[f"{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("prefix", ["", "# a comment\n", "\n\n"])
def test_each_example_gets_its_label(label, example, prefix):
    assert hint_of(prefix + example) == label


@pytest.mark.parametrize("text, label", [
    ("model m {\n  input 3x32x32\n  stage pooling x1 @8\n  classes=10\n}\n",
     "settings are written `key value`; '=' is only"),
    ("model m {\n  input 3x32x32\n  classes 10\n  train {\n    lr 1e-3\n    wd 1\n"
     "    epochs 3,\n  }\n}\n", "not commas"),
    ("model {\n  input 3x32x32\n}\n", "needs a name"),
    ("# header\n\nstage pooling x1 @8\n", "model <name>"),
])
def test_labels_reach_inputs_beyond_the_examples(text, label):
    assert label in hint_of(text)


@pytest.mark.parametrize("ch", sorted(CHARACTER_HINTS))
def test_character_hints(ch):
    assert hint_of(f"model m {{\n  classes{ch} 10\n}}\n") == CHARACTER_HINTS[ch]


def test_unclosed_bracket_hint_points_at_the_bracket():
    hint = hint_of("model m {\n  stage pooling(pool_size=3 x1 @8\n}\n")
    assert "'(' at line 2, column 16 is not closed" in hint


def test_no_parser_internals_are_read():
    src = Path(mf_diagnostics.__file__).read_text(encoding="utf-8")
    assert "parse_table" not in src and "parse_conf" not in src
    assert "except Exception" not in src
