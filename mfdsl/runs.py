"""The run-folder format: the names of a run folder's files and where each lives.

This is the one home of the layout; the runner (which writes a run), ``eval``, weight
inheritance, ``compare`` and the CLI (which read one) take every name and path from here.
It imports nothing from mfdsl, so any package may use it without importing upwards: what
the files *contain* (the run context, checkpoints, the recipe history) is read and written
by ``mfdsl.runner.run_folder`` and its neighbours, which sit higher.

    <run>/run.json              the run's context (id, model fingerprint, spec, classes)
    <run>/spec.mf               the trained spec (spec.yaml / spec.yml / spec.repr.txt as
                                fallbacks when no canonical .mf could be written)
    <run>/recipe.json           the resolved recipe; recipe_changes.jsonl: its changes
    <run>/plan.json             the resolved run plan; environment.json: the machine
    <run>/metrics.jsonl         one record per log step; epochs.csv: one row per epoch
    <run>/summary.json          the run's result; curves.png: its plot
    <run>/checkpoints/          ckpt-<step>, last, best (+ .ema) as .safetensors + .state.pt
    <run>/output.log            console lines after stdout broke
    <run>/.mfdsl-lock           the running process's lock
    <run>/.mfdsl-files.json     the entries the run owns (what --overwrite may remove)
"""
from __future__ import annotations

import os
import re
from typing import Optional

RUN_FILE = "run.json"
SPEC_FILE = "spec.mf"
# Spec files a run folder may hold, in the order a reader looks for them.
SPEC_FILES = ("spec.mf", "spec.yaml", "spec.yml")
SPEC_REPR_FILE = "spec.repr.txt"
RECIPE_FILE = "recipe.json"
RECIPE_CHANGES_FILE = "recipe_changes.jsonl"
PLAN_FILE = "plan.json"
ENVIRONMENT_FILE = "environment.json"
METRICS_FILE = "metrics.jsonl"
EPOCHS_FILE = "epochs.csv"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
SKIPPED_FILE = "skipped_images.txt"
INHERITANCE_FILE = "inheritance.json"
LOG_FILE = "output.log"
LOCK_FILE = ".mfdsl-lock"
MANIFEST_FILE = ".mfdsl-files.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"

# Checkpoint pairs in checkpoints/: <stem> + WEIGHTS_EXT and <stem> + STATE_EXT, and with
# EMA the EMA weights, <stem> + EMA + WEIGHTS_EXT. The stem is a periodic checkpoint's,
# PERIODIC + the step in 8 digits (periodic_stem, periodic_step), or LAST or BEST.
WEIGHTS_EXT = ".safetensors"  # also the one spelling of the safetensors file extension
STATE_EXT = ".state.pt"
EMA = ".ema"
LAST = "last"
BEST = "best"
PERIODIC = "ckpt-"
# A run's last weights, relative to its folder (what a run folder given as weights means).
LAST_WEIGHTS = os.path.join(CHECKPOINTS_DIR, LAST + WEIGHTS_EXT)
_PERIODIC_STEP = re.compile(re.escape(PERIODIC) + r"([0-9]+)")

# Everything a run writes at the top of its folder (what --overwrite may clear).
RUN_ENTRIES = (RUN_FILE, "spec.mf", "spec.yaml", SPEC_REPR_FILE, RECIPE_FILE,
               ENVIRONMENT_FILE, METRICS_FILE, EPOCHS_FILE, SUMMARY_FILE, CURVES_FILE,
               SKIPPED_FILE, CHECKPOINTS_DIR, TENSORBOARD_DIR, RECIPE_CHANGES_FILE,
               LOG_FILE, PLAN_FILE)


def periodic_stem(step: int) -> str:
    """The stem of the periodic checkpoint of ``step``: ``ckpt-00000012``."""
    return f"{PERIODIC}{step:08d}"


def checkpoint_stem(name: str) -> Optional[str]:
    """The checkpoint a file name in checkpoints/ belongs to (``ckpt-<step>``, ``last`` or
    ``best``: its weights, EMA weights or state file), None for any other name."""
    for ext in (EMA + WEIGHTS_EXT, WEIGHTS_EXT, STATE_EXT):
        if name.endswith(ext):
            stem = name[: -len(ext)]
            return stem if stem in (LAST, BEST) or _PERIODIC_STEP.fullmatch(stem) else None
    return None


def is_checkpoint_file(name: str) -> bool:
    """Whether ``name`` is the name of a file a run writes in checkpoints/."""
    return checkpoint_stem(name) is not None


def periodic_step(name: str) -> Optional[int]:
    """The step of a periodic checkpoint named by ``name`` (its stem ``ckpt-<step>`` or one
    of its files), None for anything else (``last``, ``best``, other files)."""
    m = _PERIODIC_STEP.fullmatch(checkpoint_stem(name) or name)
    return int(m.group(1)) if m else None


def checkpoints_dir(folder: str) -> str:
    """The checkpoints folder of the run folder ``folder``."""
    return os.path.join(folder, CHECKPOINTS_DIR)


def weights_file(folder: str, stem: str = LAST) -> str:
    """The weights file of checkpoint ``stem`` (``last``, ``best``, ``ckpt-N``) of a run."""
    return os.path.join(folder, CHECKPOINTS_DIR, stem + WEIGHTS_EXT)


def run_folder_of_path(path: str) -> str:
    """The run folder a path inside it names: a run folder itself, its checkpoints folder,
    or a file in either (no check that a run is there)."""
    p = os.path.abspath(path)
    if os.path.isdir(p):
        return os.path.dirname(p) if os.path.basename(p) == CHECKPOINTS_DIR else p
    folder = os.path.dirname(p)
    return os.path.dirname(folder) if os.path.basename(folder) == CHECKPOINTS_DIR else folder


def in_checkpoints_dir(path: str) -> bool:
    """Whether ``path`` (a file) lies directly in a run's checkpoints folder."""
    return os.path.basename(os.path.dirname(os.path.abspath(path))) == CHECKPOINTS_DIR


def spec_file(folder: str) -> Optional[str]:
    """The spec file a run folder holds (the first of ``SPEC_FILES``), None if none."""
    for name in SPEC_FILES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None
