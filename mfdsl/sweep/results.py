"""A sweep's results: ``results.csv`` and ``results.json`` in the sweep folder, one row per
candidate, written atomically (mfdsl.fsio) from the study each time a worker ends."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Dict, List

from .. import fsio
from .errors import SweepError

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
COLUMNS = ("candidate", "fingerprint", "choices", "params", "macs", "top1", "epochs",
           "seconds", "status", "rung_top1", "check_top1", "check_epochs")


def to_csv(rows: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(r.get(k), sort_keys=True)
                    if isinstance(r.get(k), (dict, list)) else r.get(k) for k in COLUMNS})
    return buf.getvalue()


def write(folder: str, context: Dict[str, Any], rows: List[Dict[str, Any]]) -> None:
    fsio.write_atomic(os.path.join(folder, RESULTS_CSV), to_csv(rows))
    fsio.write_atomic(os.path.join(folder, RESULTS_JSON),
                      json.dumps({"sweep": context, "candidates": rows}, indent=2,
                                 sort_keys=True) + "\n")


def read(folder: str) -> Dict[str, Any]:
    """The results.json of sweep folder ``folder``."""
    path = os.path.join(folder, RESULTS_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data["candidates"]
        return data
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SweepError(f"{folder}: not a sweep folder with a readable {RESULTS_JSON} "
                         f"({exc}); run mfdsl sweep first") from None
