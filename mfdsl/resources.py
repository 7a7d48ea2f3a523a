"""Locate files shipped with the package (grammar, schema, embedded data) and the cache."""
from __future__ import annotations

import os
from pathlib import Path


def grammar_dir() -> Path:
    """The grammar/ folder: inside the wheel as ``mfdsl/grammar``, else the source tree's."""
    inside = Path(__file__).resolve().parent / "grammar"
    if inside.is_dir():
        return inside
    return Path(__file__).resolve().parent.parent / "grammar"


def grammar_file(name: str) -> Path:
    return grammar_dir() / name


def zoo_dir() -> Path:
    """The paper's specs: inside the wheel as ``mfdsl/zoo``, else the source tree's specs/."""
    inside = Path(__file__).resolve().parent / "zoo"
    if inside.is_dir():
        return inside
    return Path(__file__).resolve().parent.parent / "specs"


def zoo_spec_file(name: str) -> "Path | None":
    """``specs/<name>.mf`` of a zoo model, or None."""
    path = zoo_dir() / f"{name}.mf"
    return path if path.is_file() else None


def default_cache_dir() -> Path:
    """``$MFDSL_CACHE`` or ``$XDG_CACHE_HOME/mfdsl`` or ``~/.cache/mfdsl``: where mfdsl keeps
    what it can make again (the built-in dataset, data indexes, built kernels)."""
    # '~' is expanded as a shell would (a quoted MFDSL_CACHE='~/x' reaches us unexpanded).
    if os.environ.get("MFDSL_CACHE"):
        return Path(os.path.expanduser(os.environ["MFDSL_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expanduser(base)) / "mfdsl"
