"""Design spaces in the .mf language: round trips, located errors, one-point spaces."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import error_of, mf_file, run, write

from mfdsl.api import load_spec
from mfdsl.emit.mf import to_mf
from mfdsl.space.emit import to_mf_space
from mfdsl.space.read import load_space
from mfdsl.space.resolve import resolve

SPACE = """model s {
  $w = {32, 48}
  stage {pooling | sepconv | pooling(pool_size=5)} x{1..3} @$w
  stage pooling x{1, 2} @$w  mlp act {gelu | relu}
  require params <= 30M, macs 1K..4G, train_memory <= 12G at batch 128
  train { lr {1e-3, 2e-3} }
}
"""


def test_space_reads_choices_ties_and_budgets(tmp_path: Path):
    space = load_space(write(tmp_path, "s.mf", SPACE))
    assert [c.name for c in space.choices] == ["w", "stage1.mixers", "stage1.depth",
                                               "stage2.depth", "stage2.mlp_act", "train.lr"]
    w = space.choices[0]
    assert w.tied and w.places == (("stages", 0, "width"), ("stages", 1, "width"))
    assert space.size == 2 * 3 * 3 * 2 * 2 * 2
    spec = resolve(space, [1, 1, 2, 0, 1, 1])
    assert spec.widths == [48, 48] and spec.depths == [3, 1]
    assert spec.stages[0].mixers[0].name == "sepconv" and spec.recipe.lr == 2e-3
    assert [b.metric for b in space.budgets] == ["params", "macs", "train_memory"]
    assert space.budgets[2].batch == 128 and space.budgets[1].low == 1000


def test_space_prints_canonically_and_round_trips(tmp_path: Path):
    space = load_space(write(tmp_path, "s.mf", SPACE))
    text = to_mf_space(space)
    again = load_space(write(tmp_path, "t.mf", text))
    assert again.base == space.base and again.choices == space.choices
    assert again.budgets == space.budgets
    assert to_mf_space(again) == text
    assert "x{1..3}" in text and "@$w" in text and "$w = {32, 48}" in text
    code, out = run("fmt", tmp_path / "t.mf")
    assert code == 0 and out == text


def test_a_plain_spec_is_a_one_point_space():
    space = load_space("specs/caformer_s18.mf")
    assert space.size == 1 and not space.choices and not space.budgets
    assert to_mf_space(space) == to_mf(load_spec("specs/caformer_s18.mf"))


def test_a_plain_load_refuses_a_space_where_the_choice_is(tmp_path: Path):
    p = mf_file(tmp_path, "stage pooling x{1..2} @32")
    err = error_of(load_spec, p)
    assert "design space" in err.message and (err.loc.line, err.loc.column) == (4, 17)


@pytest.mark.parametrize("line, message, column", [
    ("stage pooling x{} @32", "the choice set is empty", 17),
    ("stage pooling x1 @{32, -4}", "width must be >= 1", 26),
    ("stage {pooling | nosuchmixer} x1 @32", "nosuchmixer", 20),
    ("stage pooling x{0..2} @32", "depth must be >= 1", 19),
    ("stage pooling x{1, 1} @32", "same as an earlier one", 22),
    ("stage pooling x$d @32", "$d is not defined", 17),
])
def test_bad_alternatives_are_located(tmp_path: Path, line: str, message: str, column: int):
    err = error_of(load_space, mf_file(tmp_path, line))
    assert message in err.message and err.loc.line == 4, err.render()
    assert err.loc.column == column, err.render()


def test_bad_budgets_are_located(tmp_path: Path):
    err = error_of(load_space, mf_file(tmp_path, "stage pooling x1 @32",
                                       "require parms <= 3M"))
    assert "unknown budget 'parms'" in err.message and "params" in err.hint
    err = error_of(load_space, mf_file(tmp_path, "stage pooling x1 @32",
                                       "require train_memory <= 3G"))
    assert "at batch" in err.hint and err.loc.line == 5
