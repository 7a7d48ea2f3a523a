"""The run-folder format has one home (mfdsl/runs.py): its names, its paths, and no other
module spelling a run-folder file name."""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from mfdsl import fsio, runs
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


def _strings(tree: ast.AST):
    """String constants (f-string parts included) that are not docstrings."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docs:
            yield node


# Facts of a run folder's checkpoints, the refusal of a spec that builds another model than
# a run's, and fsio's temporary files, each spelled in one module: (home, what, a pattern
# of the spelling). "--ckpt-every" is an option, not a name.
SPELLED_ONCE = [
    ("runs.py", "the safetensors extension (runs.WEIGHTS_EXT)", re.compile(r"\.safetensors")),
    ("runs.py", "the checkpoint state extension (runs.STATE_EXT)", re.compile(r"state\.pt")),
    ("runs.py", "a periodic checkpoint's name (runs.periodic_stem, periodic_step)",
     re.compile(r"(?<!-)ckpt-")),
    ("runs.py", "the EMA weights' mark (runs.EMA)", re.compile(r"^\.ema\b")),
    ("runner/run_folder.py", "the different-model refusal (RunContext.check_model)",
     re.compile(r"builds a different model")),
    ("fsio.py", "fsio's temporary file names (fsio.TMP_MARK, LINK_MARK, temporary_target)",
     re.compile(r"\.lnk|\.tmp")),
]
# The data package's cache files and the test-data writers write through their own
# "<path>.<pid>.tmp" files, not fsio's (a known remainder: they sit beside fsio, not above).
OWN_TEMPORARIES = {"data/manifest.py", "data/tarshards.py", "data/writers.py"}


def test_checkpoint_and_temporary_names_are_spelled_once() -> None:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _strings(tree):
            for home, what, pattern in SPELLED_ONCE:
                if rel != home and pattern.search(node.value) and not (
                        home == "fsio.py" and rel in OWN_TEMPORARIES):
                    found.append(f"mfdsl/{rel}:{node.lineno}: {node.value!r}: {what}, "
                                 f"whose home is mfdsl/{home}")
    assert not found, "spelled outside their home:\n" + "\n".join(found)


def test_checkpoint_names_written_and_read_by_one_pair() -> None:
    stem = runs.periodic_stem(12)
    assert stem == "ckpt-00000012" and runs.periodic_step(stem) == 12
    for name in (stem + runs.WEIGHTS_EXT, stem + runs.EMA + runs.WEIGHTS_EXT,
                 stem + runs.STATE_EXT):
        assert runs.checkpoint_stem(name) == stem and runs.periodic_step(name) == 12
    for name in (runs.LAST + runs.STATE_EXT, runs.BEST + runs.EMA + runs.WEIGHTS_EXT):
        assert runs.checkpoint_stem(name) in (runs.LAST, runs.BEST)
        assert runs.periodic_step(name) is None
    assert runs.periodic_step("ckpt-x.safetensors") is None
    assert runs.LAST_WEIGHTS == os.path.join("checkpoints", "last.safetensors")


def test_temporary_names_written_and_read_by_fsio(tmp_path: Path) -> None:
    seen = []

    def write(tmp: str) -> None:
        seen.append(os.path.basename(tmp))
        Path(tmp).write_text("x")

    fsio.write_atomic_with(str(tmp_path / "run.json"), write, links=fsio.INTERNAL)
    assert fsio.temporary_target(seen[0]) == "run.json"
    assert fsio.temporary_target(f".last.safetensors.{os.getpid()}{fsio.LINK_MARK}") == \
        "last.safetensors"
    for other in ("run.json", "run.json.abcdefgh.tmp.json", ".bashrc", ".x.tmp"):
        assert fsio.temporary_target(other) is None, other


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
    assert all(runs.is_checkpoint_file(n) for n in ok)
    assert not any(runs.is_checkpoint_file(n) for n in bad)
    assert run_folder.is_run_file("last.state.pt", in_checkpoints=True)
    assert run_folder.is_run_file(runs.MANIFEST_FILE, in_checkpoints=False)
    assert not run_folder.is_run_file("notes.txt", in_checkpoints=False)
