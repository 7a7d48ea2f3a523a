"""The run-folder format has one home (mfdsl/runs.py): its names, its paths, and no other
module spelling a run-folder file name."""
from __future__ import annotations

import ast
from pathlib import Path

from mfdsl import runs
from mfdsl.runner import checkpointing, output, recipe_history, run_folder, run_lock

PKG = Path(__file__).resolve().parent.parent / "mfdsl"

# Every file and folder name of a run folder that runs.py states.
NAMES = {v for k, v in vars(runs).items()
         if k.isupper() and isinstance(v, str) and not k.endswith("_EXT")} | set(runs.SPEC_FILES)


def test_runs_imports_nothing_from_mfdsl() -> None:
    # So weights/, compare.py and the CLI can use it without importing upwards.
    tree = ast.parse((PKG / "runs.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("mfdsl"), node.module
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("mfdsl") for a in node.names)


def test_no_module_spells_a_run_folder_name() -> None:
    found = []
    for path in PKG.rglob("*.py"):
        if path.name == "runs.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        keys = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
        for node in ast.walk(tree):
            # A subscript key (kw["tensorboard"]) is an option's name, not a file's.
            if isinstance(node, ast.Constant) and node.value in NAMES and id(node) not in keys:
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {node.value!r}")
    assert not found, "run-folder names outside mfdsl/runs.py:\n" + "\n".join(found)


def test_the_runners_names_are_the_formats() -> None:
    assert run_folder.RUN_FILE == runs.RUN_FILE == "run.json"
    assert run_folder.MANIFEST == runs.MANIFEST_FILE
    assert run_folder.RUN_ENTRIES is runs.RUN_ENTRIES
    assert recipe_history.RECIPE_FILE == runs.RECIPE_FILE
    assert recipe_history.CHANGES_FILE == runs.RECIPE_CHANGES_FILE
    assert run_lock.LOCK_NAME == runs.LOCK_FILE == ".mfdsl-lock"
    assert output.LOG_NAME == runs.LOG_FILE == "output.log"
    assert (checkpointing.WEIGHTS_EXT, checkpointing.STATE_EXT) == (".safetensors", ".state.pt")
    # What --overwrite may clear covers what a run writes at the top of its folder.
    for name in (runs.SUMMARY_FILE, runs.PLAN_FILE, runs.METRICS_FILE, runs.CHECKPOINTS_DIR,
                 runs.RECIPE_CHANGES_FILE, runs.LOG_FILE, runs.SPEC_FILE):
        assert name in runs.RUN_ENTRIES


def test_paths(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ck = run / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "last.safetensors").write_bytes(b"")
    assert runs.checkpoints_dir(str(run)) == str(ck)
    assert runs.weights_file(str(run)) == str(ck / "last.safetensors")
    assert runs.weights_file(str(run), runs.BEST) == str(ck / "best.safetensors")
    # A run folder, its checkpoints folder, or a file in either names the run.
    for p in (run, ck, ck / "last.safetensors", run / "spec.mf"):
        assert runs.run_folder_of_path(str(p)) == str(run)
    assert runs.in_checkpoints_dir(str(ck / "last.safetensors"))
    assert not runs.in_checkpoints_dir(str(run / "spec.mf"))


def test_spec_file_prefers_mf(tmp_path: Path) -> None:
    assert runs.spec_file(str(tmp_path)) is None
    (tmp_path / "spec.yml").write_text("x")
    assert runs.spec_file(str(tmp_path)) == str(tmp_path / "spec.yml")
    (tmp_path / "spec.yaml").write_text("x")
    assert runs.spec_file(str(tmp_path)) == str(tmp_path / "spec.yaml")
    (tmp_path / "spec.mf").write_text("x")
    assert runs.spec_file(str(tmp_path)) == str(tmp_path / "spec.mf")


def test_checkpoint_names() -> None:
    ok = ["ckpt-00000012.safetensors", "last.state.pt", "best.ema.safetensors"]
    bad = ["notes.txt", "last.pt", "ckpt-x.safetensors", ".last.safetensors.tmp"]
    assert all(runs.CHECKPOINT_NAME_RE.match(n) for n in ok)
    assert not any(runs.CHECKPOINT_NAME_RE.match(n) for n in bad)
    assert run_folder.is_run_file("last.state.pt", in_checkpoints=True)
    assert run_folder.is_run_file(runs.MANIFEST_FILE, in_checkpoints=False)
    assert not run_folder.is_run_file("notes.txt", in_checkpoints=False)
