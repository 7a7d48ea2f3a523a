"""mfdsl: a declarative architecture language and compiler for MetaFormer vision models."""
from __future__ import annotations

from .errors import Loc, SpecError
from .api import build_model, check_spec, load_spec
from .ckptformats import load_checkpoint

__all__ = ["SpecError", "Loc", "load_spec", "check_spec", "build_model", "load_checkpoint"]
__version__ = "0.1.0"
