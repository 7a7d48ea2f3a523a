"""A finished run's summary: every figure that can be missing prints as n/a."""
from __future__ import annotations

from mfdsl.runner.summary import summary_line


def _summary(**final):
    return {"steps": 7, "seconds": 3.0, "final_val": final or None, "best_top1": None,
            "best_selected_by": "EMA top-1", "best_checkpoint": None, "skipped_images": 0,
            "nan_skipped_steps": 0}


def test_missing_top5_and_ema_top5_print_as_na() -> None:
    """Fewer than 5 classes: top-5 is None for the model and its EMA (the run trained and
    saved everything; its last line must not fail)."""
    line = summary_line(_summary(top1=50.0, top5=None, ema_top1=55.0, ema_top5=None),
                        "runs/x", None)
    assert "final val top-1 50.00% top-5 n/a" in line
    assert "(EMA top-1 55.00% top-5 n/a" in line


def test_a_run_without_validation_has_a_plain_last_line() -> None:
    line = summary_line(_summary(), "runs/x", None)
    assert line.startswith("done: 7 steps") and "final val" not in line and "best" not in line
