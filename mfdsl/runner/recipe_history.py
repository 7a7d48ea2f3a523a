"""A resumed run is the same run: its recipe changes only when asked, and then on record.

``recipe.json`` is written when a run starts and never rewritten by a resume. A resume
compares the recipe it would train with (the recipe fields and the values derived from
them and the run options that change the optimisation: global batch, lr, steps, warmup,
seed, crop scale, flip) against the run's effective recipe: ``recipe.json`` with every
recorded change applied. A difference is refused, naming each one, unless
``--allow-recipe-change`` is given; then the change and the step it takes effect at are
appended to ``recipe_changes.jsonl`` (one JSON object a line, never rewritten).

What a resume trains with is the run's current recipe: a recipe field a recorded change
set keeps its changed value unless the command line gives it again
(:func:`resume_overrides`), so the plain requeue command (``mfdsl train SPEC -o RUN
--resume auto``) continues the run as it was last changed, and only a new difference (the
spec file edited, an option given with another value) is refused.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from .. import fsio, runs
from .errors import RunError

RECIPE_FILE = runs.RECIPE_FILE
CHANGES_FILE = runs.RECIPE_CHANGES_FILE
# Derived values and run options that change what is trained (not how it is executed:
# per-device batch, accumulation, world size, compile, workers may change freely).
COMPARED_RESOLVED = ("global_batch", "lr", "total_steps", "warmup_steps", "seed",
                     "crop_scale_min", "hflip", "nan_policy")
_MAX = 16 * 1024 * 1024


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.isfile(path):
        return None
    try:
        d = json.loads(fsio.read_regular(path, _MAX, "run record").decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot read the run's recipe record: {exc}") from None
    return d if isinstance(d, dict) else None


def read_changes(folder: str) -> List[Dict[str, Any]]:
    """The recorded recipe changes of a run, oldest first (a line cut short is skipped)."""
    path = os.path.join(folder, CHANGES_FILE)
    if not os.path.isfile(path):
        return []
    out = []
    for line in fsio.read_regular(path, _MAX, "run record").decode("utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("changes"), dict):
            out.append(rec)
    return out


def effective(folder: str) -> Optional[Dict[str, Dict[str, Any]]]:
    """{"recipe": ..., "resolved": ...} the run trains with now (None: no record)."""
    base = _read_json(os.path.join(folder, RECIPE_FILE))
    if base is None:
        return None
    cur = {"recipe": dict(base.get("recipe") or {}), "resolved": dict(base.get("resolved") or {})}
    for key, new in changed_since_start(folder).items():
        part, _, name = key.partition(".")
        if part in cur:
            cur[part][name] = new
    return cur


def changed_since_start(folder: str) -> Dict[str, Any]:
    """"recipe.X"/"resolved.Y" -> the value the recorded changes left it at (only the
    names some change set), oldest change first, the last one winning."""
    out: Dict[str, Any] = {}
    for rec in read_changes(folder):
        for key, (_, new) in rec["changes"].items():
            out[key] = new
    return out


def history_folder(resume_stem: str, output: str) -> str:
    """The run folder whose recipe a resume from ``resume_stem`` continues."""
    from .run_folder import run_folder_of

    return run_folder_of(resume_stem + runs.WEIGHTS_EXT) or output


def resume_overrides(resume_stem: Optional[str], output: str, given: Dict[str, Any]
                     ) -> Dict[str, Any]:
    """The recipe overrides a run trains with: ``given`` (the command line's), and, on a
    resume, each recipe field a recorded change set, at its changed value, unless
    ``given`` names it: the run's current recipe, not the one it started with."""
    if resume_stem is None:
        return dict(given)
    from .options import recipe_field_names

    fields = recipe_field_names()
    out = {}
    for key, value in changed_since_start(history_folder(resume_stem, output)).items():
        part, _, name = key.partition(".")
        if part == "recipe" and name in fields and name not in given:
            out[name] = tuple(value) if isinstance(value, list) else value
    out.update(given)
    return out


def _norm(v: Any) -> Any:
    # JSON turns tuples into lists and may have turned ints into floats.
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    return v


def differences(old: Dict[str, Dict[str, Any]], new: Dict[str, Dict[str, Any]]
                ) -> Dict[str, Tuple[Any, Any]]:
    """"recipe.X"/"resolved.Y" -> (old, new) where the new record differs."""
    out: Dict[str, Tuple[Any, Any]] = {}
    for name in sorted(set(old["recipe"]) | set(new["recipe"])):
        a, b = old["recipe"].get(name), new["recipe"].get(name)
        if _norm(a) != _norm(b):
            out[f"recipe.{name}"] = (a, b)
    for name in COMPARED_RESOLVED:
        if name not in old["resolved"]:
            continue  # recorded by an older mfdsl: nothing to compare
        a, b = old["resolved"].get(name), new["resolved"].get(name)
        if _norm(a) != _norm(b):
            out[f"resolved.{name}"] = (a, b)
    return out


_LABELS = {"resolved.global_batch": "global batch", "resolved.lr": "lr scaled to the batch",
           "resolved.total_steps": "total steps (epochs, --max-steps)",
           "resolved.warmup_steps": "warmup steps", "resolved.seed": "--seed",
           "resolved.crop_scale_min": "--crop-scale-min",
           "resolved.hflip": "flip probability (--no-flip)",
           "resolved.nan_policy": "--nan-policy"}


# The compared values a run option sets (the rest follow from the recipe, which a resume
# takes from the run: resume_overrides).
_OPTIONS = ("resolved.global_batch", "resolved.total_steps", "resolved.seed",
            "resolved.crop_scale_min", "resolved.hflip", "resolved.nan_policy")


def _label(key: str) -> str:
    return _LABELS.get(key, key.split(".", 1)[1])


def check_resume(folder: str, new: Dict[str, Dict[str, Any]], allow: bool
                 ) -> Dict[str, Tuple[Any, Any]]:
    """The changes a resume makes to the run's recipe; RunError if any and not ``allow``."""
    old = effective(folder)
    if old is None:
        return {}
    diff = differences(old, new)
    if diff and not allow:
        lines = "\n".join(f"  {_label(k)}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        # A run option (not a recipe field) a recorded change set, back at the value the run
        # started with: this command left out the option that changed it.
        changed = changed_since_start(folder)
        started = _read_json(os.path.join(folder, RECIPE_FILE)) or {}
        dropped = [k for k, (_, b) in diff.items() if k in changed and k in _OPTIONS
                   and _norm(b) == _norm((started.get("resolved") or {}).get(
                       k.partition(".")[2]))]
        again = (f"; {', '.join(_label(k) for k in dropped)} was changed with "
                 f"--allow-recipe-change (recorded in {CHANGES_FILE}): give that option "
                 "again" if dropped else "")
        raise RunError(f"--resume: the run in {folder} was trained with another recipe; a "
                       f"resumed run keeps its recipe. Differences (run -> now):\n{lines}\n"
                       "Resume without these options, or pass --allow-recipe-change to change "
                       f"them from this step on (recorded in {CHANGES_FILE}){again}")
    return diff


def record(folder: str, step: int, diff: Dict[str, Tuple[Any, Any]], command: List[str]
           ) -> None:
    """Append one change record (the step it takes effect after)."""
    if not diff:
        return
    rec = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "changes": {k: [a, b] for k, (a, b) in diff.items()}, "command": list(command)}
    fsio.append_text(os.path.join(folder, CHANGES_FILE),
                     json.dumps(rec, sort_keys=True, default=str) + "\n")


def optimizer_changed(diff: Dict[str, Tuple[Any, Any]]) -> bool:
    return "recipe.optimizer" in diff
