"""Trained weights from outside a run: released weights by name (``releases``, ``hub``) and
inheritance of trained parts into another architecture (``inherit``)."""
from __future__ import annotations

import os
from typing import Optional

import torch.nn as nn

from ..ckptformats.weights import LoadReport, load_checkpoint
from ..ir import ModelSpec
from .hub import (WeightsError, apply_release_context, check_fits, fetch, hub_cache_dir,
                  hub_offline, load_release, resolve_release)
from .inherit import InheritError, InheritReport, inherit
from .releases import RELEASES, Release, lookup, releases_for, zoo_model_of

__all__ = [
    "RELEASES", "Release", "WeightsError", "InheritError", "InheritReport",
    "apply_release_context", "check_fits", "fetch", "hub_cache_dir", "hub_offline",
    "inherit", "load_release", "load_weights", "lookup", "releases_for", "resolve_release",
    "zoo_model_of",
]


def load_weights(model: nn.Module, source: str, spec: Optional[ModelSpec] = None
                 ) -> LoadReport:
    """Load ``source`` strictly into ``model``: an existing file (any format
    ``load_checkpoint`` reads), or a release name / tag of the spec's model."""
    if not os.path.exists(source):
        name = source
        if spec is not None and "." not in source:
            name = f"{zoo_model_of(spec.name)}.{source}"
        if name in RELEASES:
            release = RELEASES[name]
            if spec is not None:
                check_fits(release, spec, purpose="init")
            return load_release(model, release)
    return load_checkpoint(model, source)
