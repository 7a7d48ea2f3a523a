"""The candidates of a sweep: the spec files of a folder, in the order its manifest lists
them (``manifest.json``, written by ``mfdsl sample``), else sorted by file name."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import SweepError

MANIFEST_FILE = "manifest.json"
SPEC_SUFFIXES = (".mf", ".yaml", ".yml")


@dataclass
class Candidate:
    name: str  # the file name without its suffix: the run folder's and the trial's name
    file: str  # the spec file's path
    fingerprint: Optional[str] = None
    choices: Dict[str, Any] = field(default_factory=dict)
    params: Optional[int] = None
    macs: Optional[int] = None


def _manifest(folder: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data.get("candidates"), list):
            raise ValueError("no 'candidates' list")
        return data
    except (OSError, ValueError, AttributeError) as exc:
        raise SweepError(f"{path}: not a readable candidate manifest ({exc})") from None


def read_candidates(folder: str) -> List[Candidate]:
    """The candidates of ``folder``; counts and fingerprints missing from the manifest
    (or without one) are measured from the specs."""
    if not os.path.isdir(folder):
        raise SweepError(f"{folder}: not a folder of candidate specs")
    manifest = _manifest(folder)
    if manifest is not None:
        rows = manifest["candidates"]
        out = []
        for row in rows:
            if not isinstance(row, dict) or not isinstance(row.get("file"), str):
                raise SweepError(f"{folder}/{MANIFEST_FILE}: each candidate needs a 'file'")
            path = os.path.join(folder, row["file"])
            if not os.path.isfile(path):
                raise SweepError(f"{folder}/{MANIFEST_FILE} lists {row['file']}, which is "
                                 "not there")
            out.append(Candidate(_name(row["file"]), path, row.get("fingerprint"),
                                 dict(row.get("choices") or {}), row.get("params"),
                                 row.get("macs")))
    else:
        out = [Candidate(_name(n), os.path.join(folder, n))
               for n in sorted(os.listdir(folder)) if n.endswith(SPEC_SUFFIXES)
               and os.path.isfile(os.path.join(folder, n))]
    if not out:
        raise SweepError(f"{folder}: no candidate specs (.mf, .yaml) and no {MANIFEST_FILE}")
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SweepError(f"{folder}: two candidates named {dup[0]} (file names must differ "
                         "without their suffix: each names a run folder)")
    for c in out:
        if c.fingerprint is None or c.params is None or c.macs is None:
            _measure(c)
    return out


def _name(file: str) -> str:
    return os.path.splitext(os.path.basename(file))[0]


def _measure(c: Candidate) -> None:
    from ..analysis.counting import macs_by_module, meta_model, param_counts
    from ..api import check_spec, load_spec
    from ..fingerprint import model_fingerprint

    spec = check_spec(load_spec(c.file))
    model = meta_model(spec)
    c.fingerprint = c.fingerprint or model_fingerprint(spec)
    c.params = c.params if c.params is not None else param_counts(model)[0]
    c.macs = c.macs if c.macs is not None else macs_by_module(model, spec)["Global"]
