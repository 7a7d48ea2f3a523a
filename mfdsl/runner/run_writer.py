"""What a run writes into its folder when it starts and when it ends (rank 0).

At the start: the spec (never rewritten), ``run.json`` (the run's context), ``recipe.json``
(the recipe and what was derived from it; a resume appends its changes instead),
``plan.json`` (the plan the run is built from), ``environment.json`` and, when parts were
inherited, ``inheritance.json``. At the end: ``summary.json``, ``skipped.jsonl`` and the
curves. File names come from :mod:`mfdsl.runs`; every write is atomic (:mod:`mfdsl.fsio`).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, Optional

from .. import fsio, runs
from . import recipe_history
from .distributed import DistEnv
from .metrics import plot_curves
from ..run_options import TrainOptions
from .options import recipe_as_dict
from .parts import Parts
from .plan import RunPlan
from .run_folder import MANIFEST, OutputPlan, RunContext, environment, record_run_files, \
    spec_text, write_json


def recipe_record(plan: RunPlan, parts: Parts, context: RunContext, opts: TrainOptions
                  ) -> Dict[str, Any]:
    """recipe.json: the recipe and what was derived from it for this run."""
    b, s, dp = plan.batch, plan.schedule, plan.device
    return {
        "recipe": recipe_as_dict(plan.recipe),
        "resolved": {
            "global_batch": b.global_batch, "per_device_batch": b.per_device,
            "accum": b.accum, "world_size": b.world_size, "lr": plan.lr,
            "steps_per_epoch": s.steps_per_epoch, "total_steps": s.total_steps,
            "warmup_steps": s.warmup_steps, "img_size": list(plan.spec.img_size),
            "amp": dp.amp, "amp_dtype": dp.amp_dtype if dp.amp else None,
            "channels_last": dp.channels_last, "compile": dp.compile,
            "cuda_graphs": dp.cuda_graphs,
            "grad_checkpointing": opts.grad_checkpointing,
            "mixup_active": plan.mixup_active, "loss": type(parts.step.criterion).__name__,
            "data": plan.data.root, "embedded_data": plan.data.embedded,
            "train_images": plan.data.train_images,
            "val_images": plan.data.val_images or 0,
            "classes": plan.data.classes, "seed": opts.seed,
            "model_fingerprint": context.model,
            "nan_policy": opts.nan_policy, "crop_scale_min": plan.crop_scale_min,
            "hflip": plan.hflip,
        },
    }


def write_run_start(out: OutputPlan, plan: RunPlan, context: RunContext,
                    record: Dict[str, Any], recipe_diff: Dict[str, Any], opts: TrainOptions,
                    env: DistEnv, inheritance: Any, step: int,
                    log: Callable[[str], None]) -> None:
    """The run folder's files at the start of a run (or of a resumed one, at ``step``)."""
    output, resumed = out.output, out.resume_stem
    os.makedirs(output, exist_ok=True)
    name, text = spec_text(plan.spec)
    spec_path = os.path.join(output, name)
    if any(fsio.same_file(spec_path, src) for src in out.inputs):
        log(f"note: {spec_path} is the spec file you gave; it is left as it is "
            f"(the run's canonical spec is in {os.path.join(output, runs.RUN_FILE)})")
    elif not os.path.lexists(spec_path):
        # Never rewritten: a resumed run keeps the spec it was started with.
        fsio.write_atomic(spec_path, text, links=fsio.INTERNAL)
    if resumed is None or not os.path.lexists(os.path.join(output, MANIFEST)):
        record_run_files(output, context.run_id)  # what --overwrite may remove
    write_json(os.path.join(output, runs.RUN_FILE), context.to_json())
    recipe_file = os.path.join(output, runs.RECIPE_FILE)
    if resumed is None or not os.path.lexists(recipe_file):
        write_json(recipe_file, record)
    # A resume never rewrites the run's recipe: a change is appended, with its step.
    argv = list(opts.argv or sys.argv)
    recipe_history.record(output, step, recipe_diff, argv)
    write_json(os.path.join(output, runs.PLAN_FILE), plan.to_json())
    env_record = environment(argv, env.world_size, env.device)
    env_record["resumed_from"] = resumed
    write_json(os.path.join(output, runs.ENVIRONMENT_FILE), env_record)
    if inheritance is not None and resumed is None:
        write_json(os.path.join(output, runs.INHERITANCE_FILE), inheritance.as_json())


def write_run_end(output: str, summary: Dict[str, Any], metrics_jsonl: str) -> Optional[str]:
    """``summary.json`` and the curves; returns the curves' path (None if none)."""
    write_json(os.path.join(output, runs.SUMMARY_FILE), summary)
    return plot_curves(metrics_jsonl, os.path.join(output, runs.CURVES_FILE))
