"""Locate files shipped with the package (grammar, schema, embedded data)."""
from __future__ import annotations

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
