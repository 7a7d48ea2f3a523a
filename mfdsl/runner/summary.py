"""A finished run's summary: ``summary.json`` and the closing line of its log.

Every figure that can be missing (top-5 of fewer than 5 classes, no validation split, no
best checkpoint) is ``None`` in the record and "n/a" in the line, through one formatter
(:func:`mfdsl.runner.metrics.pct`), so no run that trained can fail while reporting.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from .. import runs
from .checkpointing import WEIGHTS_EXT
from .metrics import format_duration, pct
from .plan import RunPlan
from .state import TrainState


def run_summary(plan: RunPlan, st: TrainState, final: Optional[Dict[str, Any]],
                ckpt_dir: str, seconds: float) -> Dict[str, Any]:
    """The record of a run that ended at ``st`` with the validation result ``final``."""
    has_best = st.best_top1 >= 0
    return {
        "status": "completed" if st.epoch >= plan.total_epochs else "stopped_at_max_steps",
        "steps": st.step, "epochs_completed": st.epoch,
        "final_val": ({k: v for k, v in final.items()
                       if k not in ("skipped_paths", "skipped_files")} if final else None),
        "best_top1": st.best_top1 if has_best else None,
        "best_selected_by": plan.best.label,
        "best_checkpoint": (os.path.join(ckpt_dir, plan.best.stem + WEIGHTS_EXT)
                            if has_best else None),
        "skipped_images": len(st.unreadable),
        "skipped_image_fetches": st.unreadable.attempts(),
        "nan_skipped_steps": st.nan_skipped,
        "checkpoint": os.path.join(ckpt_dir, runs.LAST + WEIGHTS_EXT),
        "seconds": seconds,
    }


def summary_line(summary: Dict[str, Any], output: str, curves: Optional[str]) -> str:
    """The log's last words on a run."""
    fv = summary["final_val"]
    text = f"done: {summary['steps']} steps in {format_duration(summary['seconds'])}"
    if fv:
        text += f"; final val top-1 {pct(fv['top1'])} top-5 {pct(fv.get('top5'))}"
        if "ema_top1" in fv:
            text += f" (EMA top-1 {pct(fv['ema_top1'])} top-5 {pct(fv.get('ema_top5'))})"
    if summary["best_checkpoint"]:
        text += (f"; best {pct(summary['best_top1'])} by {summary['best_selected_by']}: "
                 f"{summary['best_checkpoint']}")
    text += f"; skipped {summary['skipped_images']} unreadable training image(s)"
    if summary["nan_skipped_steps"]:
        text += f"; {summary['nan_skipped_steps']} non-finite step(s) skipped"
    text += f"\nrun folder: {output}"
    if curves:
        text += f" (curves: {os.path.basename(curves)})"
    return text
