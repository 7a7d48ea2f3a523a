"""Issue 30 #14, fine-tune edges: an offline dry run says the release is not cached; a
relative finetune_from path is the spec file's folder's; --from-scratch with --init-from or
--inherit is refused; an unquoted path in a .mf file gets a "quote it" hint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import put_in_cache, run

from mfdsl import runs
from mfdsl.weights.releases import RELEASES
from mfdsl.weights.sources import cache_note, spec_relative

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "specs" / "demo_tiny.mf"
RELEASE = "caformer_s18.sail_in1k"


def _finetune_spec(folder: Path, value: str) -> Path:
    """demo_tiny with ``finetune_from VALUE`` in its recipe."""
    text = DEMO.read_text().replace("    epochs          30\n",
                                    f"    epochs          30\n    finetune_from {value}\n")
    p = folder / "ft.mf"
    p.write_text(text)
    return p


def test_an_offline_dry_run_says_the_release_is_not_cached(tmp_path, hub):
    spec = _finetune_spec(tmp_path, f'"{RELEASE}"')
    code, out = run("train", spec, "--dry-run", "--json")
    assert code == 0, out
    plan = json.loads(out.strip().splitlines()[-1])
    assert plan["init_from"]["source"] == RELEASE
    note = plan["init_from"]["note"]
    assert "not in the Hugging Face cache" in note and "HF_HUB_OFFLINE is set" in note
    assert any("HF_HUB_OFFLINE" in n for n in plan["notes"])
    # Once cached, no note.
    release = RELEASES[RELEASE]
    put_in_cache(hub, release.repo_id, release.filename, b"weights")
    assert cache_note(RELEASE) == {}
    # A zoo model's name means its default release, and the note names that release.
    assert cache_note("caformer_s36")["note"].startswith("caformer_s36.sail_in1k is not")
    assert cache_note(str(DEMO)) == {}  # a file is no release


def test_a_relative_finetune_from_is_the_spec_folders(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    (specs / "prev" / runs.CHECKPOINTS_DIR).mkdir(parents=True)
    best = specs / "prev" / runs.CHECKPOINTS_DIR / f"{runs.BEST}{runs.WEIGHTS_EXT}"
    best.write_bytes(b"w")
    spec = _finetune_spec(specs, '"prev"')
    monkeypatch.chdir(tmp_path)  # the working directory has no prev/
    code, out = run("train", spec, "--dry-run", "--json")
    assert code == 0, out
    assert f"note: finetune_from prev: resolved against the spec's folder {specs}" in out
    plan = json.loads(out.strip().splitlines()[-1])
    assert plan["init_from"]["source"] == str(best)
    assert spec_relative("prev", str(spec)) == (str(specs / "prev"), str(specs))
    assert spec_relative("nothing", str(spec)) == ("nothing", None)
    assert spec_relative(RELEASE, str(spec)) == (RELEASE, None)


def test_a_relative_finetune_from_found_nowhere_names_the_folder(tmp_path, monkeypatch):
    spec = _finetune_spec(tmp_path, '"runs/missing"')
    monkeypatch.chdir(tmp_path)
    code, out = run("train", spec, "--dry-run")
    assert code == 2, out
    assert f"finetune_from runs/missing: no such file or folder in {tmp_path} (the working " \
           "directory)" in out, out


@pytest.mark.parametrize("args, given", [
    (["--init-from", "x.safetensors"], "--init-from"),
    (["--inherit", "caformer_s18"], "--inherit"),
])
def test_from_scratch_with_weights_is_a_contradiction(tmp_path, args, given):
    code, out = run("train", DEMO, "-o", tmp_path / "r", "--from-scratch", *args)
    assert code == 2, out
    assert f"--from-scratch and {given} contradict each other" in out
    assert len([ln for ln in out.splitlines() if ln.strip()]) == 1, out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["runs/x", "../runs/x", "/data/w.safetensors",
                                   "runs/x.safetensors"])
def test_an_unquoted_path_gets_a_quote_it_hint(tmp_path, value):
    spec = _finetune_spec(tmp_path, value)
    code, out = run("validate", spec)
    assert code == 2, out
    assert f"'{value}': a path must be quoted" in out
    assert f'hint: a path is text: quote it, like this: "{value}"' in out
