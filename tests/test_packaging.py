"""A non-editable install carries the grammar and schema and works from any folder."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    # From a copy without build outputs: setuptools reuses an in-tree build/lib, whose
    # leftovers would ship a package the package list has lost.
    source = tmp_path_factory.mktemp("src") / "mfdsl"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, cwd=tmp_path_factory.mktemp("cwd"),
    )
    return target


def _run(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(installed))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_wheel_ships_grammar_and_schema(installed: Path):
    assert (installed / "mfdsl" / "grammar" / "metaformer.lark").is_file()
    assert (installed / "mfdsl" / "grammar" / "metaformer.schema.json").is_file()


def test_wheel_ships_every_package_of_the_source_tree(installed: Path):
    # A package missing from pyproject's list imports fine from a checkout (the tests'
    # own folder is on sys.path) and fails only once installed.
    source = {p.parent.relative_to(ROOT).as_posix()
              for p in (ROOT / "mfdsl").rglob("__init__.py")}
    shipped = {p.parent.relative_to(installed).as_posix()
               for p in (installed / "mfdsl").rglob("__init__.py")}
    assert source - shipped == set()


def test_wheel_ships_the_zoo(installed: Path):
    # inheritance from a release name builds the release's zoo spec
    shipped = sorted(p.name for p in (installed / "mfdsl" / "zoo").glob("*.mf"))
    assert shipped == sorted(p.name for p in (ROOT / "specs").glob("*.mf"))


def test_installed_cli_works_from_another_folder(installed: Path, tmp_path: Path):
    spec = tmp_path / "m.mf"
    spec.write_text((ROOT / "specs" / "caformer_s18.mf").read_text())
    code = ("import sys, mfdsl; from mfdsl.cli import main; "
            "assert 'site' in mfdsl.__file__ or '" + str(installed) + "' in mfdsl.__file__; "
            "sys.argv = ['mfdsl', 'validate', 'm.mf']; main()")
    r = _run(installed, tmp_path, "-c", code)
    assert r.returncode == 0, r.stderr
    assert "m.mf: ok" in r.stdout
