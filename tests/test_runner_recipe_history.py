"""A resumed run keeps its recipe; a change asked for (--allow-recipe-change) is on record
and is the run's recipe from then on, so the plain requeue command resumes it as changed
(issue 30 item 4)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run, solid_folder, tiny_mf
from mfdsl.runner import recipe_history

QUIET = ["--workers", "0", "--no-tensorboard", "--log-every", "1"]


def _changes(out: Path) -> list:
    path = out / "recipe_changes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_a_plain_requeue_resumes_the_changed_recipe(tmp_path):
    data = solid_folder(tmp_path / "data", 4, {"a": 30, "b": 130, "c": 230})
    spec = tmp_path / "tiny.mf"
    spec.write_text(tiny_mf())
    out = tmp_path / "run"
    base = ["train", spec, "--data", data, "-o", out, *QUIET]
    code, text = run(*base)
    assert code == 0, text
    # One resume that changes the recipe, on record.
    code, text = run(*base, "--resume", "auto", "--lr", "0.01", "--allow-recipe-change")
    assert code == 0, text
    recs = _changes(out)
    assert len(recs) == 1 and recs[0]["changes"]["recipe.lr"][1] == 0.01
    # The documented requeue command, nothing else: accepted, and nothing new recorded.
    code, text = run(*base, "--resume", "auto")
    assert code == 0, text
    assert "another recipe" not in text
    assert _changes(out) == recs
    # It trained with the run's current recipe (lr 0.01), not the spec's.
    plan = json.loads((out / "plan.json").read_text())
    assert "0.01" in json.dumps(plan), plan
    # A new difference is still refused, naming only it (not the recorded lr).
    code, text = run(*base, "--resume", "auto", "--weight-decay", "0.01")
    assert code == 2 and "weight_decay: 0.05 -> 0.01" in text, text
    assert "lr:" not in text
    edited = tmp_path / "edited.mf"
    edited.write_text(tiny_mf().replace("warmup_epochs 0", "warmup_epochs 0\n    "
                                        "weight_decay 0.02"))
    code, text = run("train", edited, "--data", data, "-o", out, *QUIET, "--resume", "auto")
    assert code == 2 and "weight_decay: 0.05 -> 0.02" in text, text
    assert _changes(out) == recs


def test_resume_overrides_keep_recorded_changes_unless_given_again(tmp_path):
    (tmp_path / "recipe.json").write_text(json.dumps(
        {"recipe": {"lr": 0.004, "betas": [0.9, 0.999], "epochs": 1},
         "resolved": {"seed": 0}}))
    (tmp_path / "recipe_changes.jsonl").write_text(
        json.dumps({"step": 3, "changes": {"recipe.lr": [0.004, 0.01],
                                           "recipe.betas": [[0.9, 0.999], [0.9, 0.99]],
                                           "recipe.gone_field": [1, 2],
                                           "resolved.seed": [0, 3]}}) + "\n"
        + json.dumps({"step": 5, "changes": {"recipe.lr": [0.01, 0.02]}}) + "\n")
    stem = str(tmp_path / "checkpoints" / "last")
    assert recipe_history.resume_overrides(stem, str(tmp_path), {}) == {
        "lr": 0.02, "betas": (0.9, 0.99)}
    assert recipe_history.resume_overrides(stem, str(tmp_path), {"lr": 0.5}) == {
        "lr": 0.5, "betas": (0.9, 0.99)}
    assert recipe_history.resume_overrides(None, str(tmp_path), {"lr": 0.5}) == {"lr": 0.5}
    # A run option a change set (--seed), left out by a requeue: refused, saying so.
    new = {"recipe": {"lr": 0.02, "betas": [0.9, 0.99], "epochs": 1, "gone_field": 2},
           "resolved": {"seed": 0}}
    with pytest.raises(Exception) as err:
        recipe_history.check_resume(str(tmp_path), new, allow=False)
    assert "--seed: 3 -> 0" in str(err.value) and "give that option again" in str(err.value)
    new["resolved"]["seed"] = 3
    assert recipe_history.check_resume(str(tmp_path), new, allow=False) == {}
