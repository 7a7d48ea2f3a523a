"""Validation during training: the model (and its EMA) over the validation split, recorded
in the run's state, its metrics and its log."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ..data.dataset import UnreadableImages
from .distributed import DistEnv
from .evaluate import evaluate
from .metrics import MetricsLog, pct
from .parts import Parts
from .state import TrainState


class Validator:
    """Calling it validates at the state's current step (None without a val split)."""

    def __init__(self, parts: Parts, env: DistEnv, state: TrainState, metrics: MetricsLog,
                 loader: Callable[[], Any], progress: bool, log: Callable[[str], None]) -> None:
        self.parts, self.env, self.state, self.metrics = parts, env, state, metrics
        self.loader = loader  # a fresh pass over the split
        self.progress = progress and env.is_main
        self.log = log

    def __call__(self) -> Optional[Dict[str, Any]]:
        parts, st = self.parts, self.state
        if parts.val_set is None:
            return None
        res = evaluate(parts.forward_model, self.loader(), self.env, progress=self.progress)
        if parts.ema_eval is not None:
            ema = evaluate(parts.ema_eval, self.loader(), self.env, progress=self.progress,
                           desc="val (EMA)")
            res["ema_top1"], res["ema_top5"] = ema["top1"], ema["top5"]
        st.last_val, st.last_val_step = res, st.step
        st.unreadable_val.merge(res["skipped_files"])
        ema_row = {"ema_top1": res["ema_top1"]} if "ema_top1" in res else {}
        self.metrics.write("val", st.step, epoch=st.epoch, top1=res["top1"], top5=res["top5"],
                           loss=res["loss"], img_s=res["img_s"],
                           skipped_images=res["skipped_images"], **ema_row)
        extra = f", EMA top-1 {pct(res['ema_top1'])}" if ema_row else ""
        self.log(f"val @ step {st.step}: top-1 {pct(res['top1'])}  top-5 {pct(res['top5'])}  "
                 f"loss {res['loss']:.4f}  ({res['images']} images, {res['img_s']:.0f} img/s)"
                 + extra)
        if res["skipped_images"]:
            self.log("val: skipped " + UnreadableImages("val", res["skipped_files"]).describe())
        return res
