"""Design spaces in YAML: lossless .mf <-> .yaml, the same candidates from either front
end, located errors, the generated space schema, the worked example (specs/spaces)."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, SPECS, error_of, run, write

from mfdsl.api import load_spec
from mfdsl.space.emit import to_mf_space
from mfdsl.space.read import load_space
from mfdsl.space.sample import sample

SPACES = {
    "ties_budgets": """model s {
  $w = {32, 48}
  require params <= 30M, macs 1K..4G, train_memory <= 12G at batch 128
  input 3x32x32
  classes 10
  stage {pooling | sepconv | pooling(pool_size=5)} x{1..3} @$w
  stage pooling x{1, 2} @$w  mlp act {gelu | relu}
  train { lr {1e-3, 2e-3} }
}
""",
    "shared_and_lists": """model t {
  input 3x32x32
  classes 10
  mlp act {gelu | starrelu}
  stage {[sepconv, attention] | [attention, attention]} x2 @{32, 64}
  stage attention x{1..2} @64
  head linear
}
""",
}

YAML_HEAD = "model: s\ninput: {size: 32}\nclasses: 10\n"


def _canonical(tmp_path: Path, name: str, text: str) -> str:
    code, out = run("fmt", write(tmp_path, name, text))
    assert code == 0, out
    return out


@pytest.mark.parametrize("key", sorted(SPACES))
def test_mf_to_yaml_to_mf_gives_the_canonical_text_and_the_same_candidates(tmp_path: Path,
                                                                           key: str):
    canonical = _canonical(tmp_path, "a.mf", SPACES[key])
    code, yaml_text = run("convert", tmp_path / "a.mf", "--to", "yaml")
    assert code == 0, yaml_text
    assert "metaformer-space.schema.json" in yaml_text.splitlines()[0]
    y = write(tmp_path, "a.yaml", yaml_text)
    code, back = run("convert", y, "--to", "mf")
    assert code == 0 and back == canonical
    code, again = run("fmt", y)
    assert code == 0 and again == yaml_text  # the YAML is canonical too
    a, b = load_space(tmp_path / "a.mf"), load_space(y)
    assert (a.base, a.choices, a.budgets) == (b.base, b.choices, b.budgets)
    fa = [c.fingerprint for c in sample(a, 4, seed=3)]
    assert fa == [c.fingerprint for c in sample(b, 4, seed=3)]


def test_yaml_space_forms_read_as_the_mf_ones(tmp_path: Path):
    y = write(tmp_path, "s.yaml", YAML_HEAD + """choices:
  w: {choice: [32, 48]}
require:
  params: {max: 30M}
  macs: {min: 1K, max: 4G}
  train_memory: {max: 12G, batch: 128}
stages:
  - {mixer: {choice: [pooling, sepconv, {pooling: {pool_size: 5}}]}, depth: {range: [1, 3]}, width: $w}
  - {mixer: pooling, depth: {choice: [1, 2]}, width: $w, mlp: {act: {choice: [gelu, relu]}}}
train:
  lr: {choice: [1.0e-3, 2.0e-3]}
""")
    space = load_space(y)
    mf = load_space(write(tmp_path, "s.mf", SPACES["ties_budgets"]))
    assert space.choices == mf.choices and space.budgets == mf.budgets
    assert [c.name for c in space.choices][:2] == ["w", "stage1.mixers"]
    assert space.choices[2].range == (1, 3)


@pytest.mark.parametrize("body, line, column, message", [
    ("stages:\n  - {mixer: pooling, depth: 1, width: $w}\n", 5, 39, "$w is not defined"),
    ("choices:\n  w: {choice: [32, 48]}\nstages:\n  - {mixer: pooling, depth: 1, width: 32}\n",
     5, 3, "$w is defined but never used"),
    ("stages:\n  - {mixer: {choice: [pooling, {choice: [sepconv]}]}, depth: 1, width: 32}\n",
     5, 32, "a choice cannot hold another choice"),
    ("stages:\n  - {mixer: pooling, depth: {choice: []}, width: 32}\n", 5, 38,
     "the choice set is empty"),
    ("stages:\n  - {mixer: pooling, depth: {range: [4, 2]}, width: 32}\n", 5, 37,
     "the range [4, 2] is empty"),
    ("stages:\n  - {mixer: pooling, depth: 1, width: {choice: [32, -4]}}\n", 5, 53,
     "stages[0].width: must be >= 1, got -4"),
    ("stages: {choice: [[{mixer: pooling, depth: 1, width: 32}]]}\n", 4, 9,
     "stages: expected a list"),
    ("stages:\n  - {mixer: {choice: [pooling, sepconvv]}, depth: 1, width: 32}\n", 5, 32,
     "unknown mixer 'sepconvv'"),
    ("require:\n  parms: {max: 30M}\nstages:\n  - {mixer: pooling, depth: 1, width: 32}\n",
     5, 3, "unknown key 'parms' in require"),
    ("require:\n  train_memory: {max: 12G}\nstages:\n  - {mixer: pooling, depth: 1, width: 32}\n",
     5, 17, "missing required key 'batch'"),
    ("require:\n  macs: {min: 4G, max: 1G}\nstages:\n  - {mixer: pooling, depth: 1, width: 32}\n",
     5, 3, "the macs window is empty"),
])
def test_yaml_space_errors_are_located(tmp_path: Path, body: str, line: int, column: int,
                                       message: str):
    err = error_of(load_space, write(tmp_path, "e.yaml", YAML_HEAD + body))
    assert message in err.message and (err.loc.line, err.loc.column) == (line, column)


def test_a_plain_yaml_load_refuses_a_space_where_the_choice_is(tmp_path: Path):
    p = write(tmp_path, "e.yaml", YAML_HEAD +
              "stages:\n  - {mixer: pooling, depth: {range: [1, 2]}, width: 32}\n")
    err = error_of(load_spec, p)
    assert "design space" in err.message and (err.loc.line, err.loc.column) == (5, 29)


def test_committed_space_schema_is_generated_and_takes_exactly_the_forms():
    from jsonschema import Draft202012Validator

    from mfdsl.schema import SPACE_SCHEMA_FILE, build_space_schema, schema_text

    text = (ROOT / "grammar" / SPACE_SCHEMA_FILE).read_text(encoding="utf-8")
    assert text == schema_text(space=True), "run: python -m mfdsl.schema --write-schema"
    v = Draft202012Validator(build_space_schema())
    stage = {"mixer": {"choice": ["pooling", {"sepconv": {"kernel": 3}}]},
             "depth": {"range": [1, 3]}, "width": "$w"}
    ok = {"model": "m", "choices": {"w": {"choice": [32, 64]}}, "stages": [stage],
          "require": {"macs": {"min": "1M", "max": "2G"},
                      "train_memory": {"max": "12G", "batch": 8}},
          "train": {"lr": {"choice": [1e-3, 2e-3]}}}
    assert not list(v.iter_errors(ok))
    for bad in ({**ok, "model": {"choice": ["a", "b"]}},                    # not a value
                {**ok, "train": {"optimizer": {"range": [1, 2]}}},          # range: integers
                {**ok, "stages": [{**stage, "width": {"choice": [32, -4]}}]},
                {**ok, "require": {"params": {"max": "30M", "batch": 8}}},
                {**ok, "stages": {"choice": [[stage]]}}):
        assert list(v.iter_errors(bad)), bad


def test_the_worked_example_reads_in_both_front_ends_and_samples():
    a = load_space(SPECS / "spaces" / "mixers_tiny.mf")
    b = load_space(SPECS / "spaces" / "mixers_tiny.yaml")
    assert (a.base, a.choices, a.budgets) == (b.base, b.choices, b.budgets)
    assert [c.name for c in a.choices] == ["stage1.mixers", "stage2.mixers", "stage3.mixers"]
    assert to_mf_space(a) == to_mf_space(b)
    drawn = sample(b, 3, seed=0)
    assert [c.fingerprint for c in drawn] == [c.fingerprint for c in sample(a, 3, seed=0)]
    assert all(9_000_000 <= c.est.macs <= 13_000_000 for c in drawn)
