"""Trained weights from outside a run: released weights by name (``releases``, ``hub``) and
inheritance of trained parts into another architecture (``inherit``)."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

from .. import runs
from ..ckptformats.weights import CheckpointError, LoadReport, load_checkpoint
from ..ir import ModelSpec
from .hub import (WeightsError, apply_release_context, check_fits, fetch, hub_cache_dir,
                  hub_offline, load_release, resolve_release)
from .inherit import InheritError, InheritReport, inherit
from .releases import RELEASES, Release, lookup, releases_for, zoo_model_of
from .sources import RUN, WeightsSource, resolve_weights

__all__ = [
    "RELEASES", "Release", "WeightsError", "InheritError", "InheritReport",
    "apply_release_context", "check_fits", "fetch", "hub_cache_dir", "hub_offline",
    "inherit", "load_release", "load_weights", "lookup", "releases_for", "resolve_release",
    "zoo_model_of", "WeightsSource", "resolve_weights",
]


def load_weights(model: nn.Module, source: str, spec: Optional[ModelSpec] = None
                 ) -> LoadReport:
    """Load ``source`` strictly into ``model``: a file (any format ``load_checkpoint``
    reads), a run folder's last weights, or a release name / tag of the spec's model
    (:func:`mfdsl.weights.sources.resolve_weights`)."""
    found = resolve_weights(source, spec=spec)
    if found is not None and found.release is not None:
        if spec is not None:
            check_fits(found.release, spec, purpose="init")
        return load_release(model, found.release)
    if found is not None and found.kind == RUN and found.path is None:
        raise CheckpointError(f"{source}: a folder without {runs.LAST_WEIGHTS} "
                              "(give a run folder, a weights file or a release name)")
    # A file, or a name that is nothing: load_checkpoint says which ("no such file").
    return load_checkpoint(model, found.path if found is not None else source)
