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
