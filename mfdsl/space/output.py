"""The folder ``mfdsl sample`` writes: one canonical ``.mf`` file per candidate and
``manifest.json`` (format in docs/spaces.md), every file written atomically."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from ..emit.mf import to_mf
from ..errors import CommandError
from ..fsio import ensure_folder, write_atomic
from ..ir import with_overrides
from .ir import Space
from .emit import assignment
from .sample import Candidate

MANIFEST = "manifest.json"


def space_fingerprint(space: Space) -> str:
    """``sha256:<hex>`` of the space's canonical ``.mf`` text."""
    import hashlib

    from .emit import to_mf_space

    return "sha256:" + hashlib.sha256(to_mf_space(space).encode("utf-8")).hexdigest()


def candidate_name(i: int, n: int) -> str:
    return f"c{i:0{max(3, len(str(n - 1)))}d}.mf"


def write_sample(space: Space, candidates: List[Candidate], seed: int, folder: str,
                 overwrite: bool = False) -> str:
    """Write the candidates and the manifest into ``folder``; refuses a folder holding an
    earlier sample unless ``overwrite``. Returns the manifest's path."""
    manifest_path = os.path.join(folder, MANIFEST)
    if os.path.lexists(manifest_path) and not overwrite:
        raise CommandError(f"{folder} already holds a sample ({MANIFEST}): choose another "
                           "folder, or pass --overwrite")
    ensure_folder(folder)
    rows: List[Dict[str, Any]] = []
    for i, cand in enumerate(candidates):
        name = candidate_name(i, len(candidates))
        spec = with_overrides(cand.spec, name=f"{space.base.name}_{name[:-3]}")
        write_atomic(os.path.join(folder, name), to_mf(spec))
        row: Dict[str, Any] = {"file": name, "fingerprint": cand.fingerprint,
                               "choices": assignment(space, cand.picks)}
        if cand.est is not None:
            row.update(params=cand.est.params, macs=cand.est.macs)
        rows.append(row)
    manifest = {"space": space.source, "space_fingerprint": space_fingerprint(space),
                "seed": seed, "candidates": rows}
    write_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest_path
