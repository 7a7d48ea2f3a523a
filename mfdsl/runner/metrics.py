"""Metric sinks of a run: JSONL (the record), CSV of epochs, TensorBoard, and the curves PNG."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional

import torch

from .. import fsio, runs


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> List[int]:
    """How many rows have the target among the top-k logits, for each k."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hit = top.eq(target.view(-1, 1))
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


def pct(v: Optional[float]) -> str:
    """An accuracy for a log line; top-5 of fewer than 5 classes is None: "n/a"."""
    return "n/a (< 5 classes)" if v is None else f"{v:.2f}%"


def _finite(v: Any) -> Any:
    # JSON has no NaN/inf: write them as strings so every line stays valid JSON.
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLog:
    """Appends records to ``metrics.jsonl``, epoch rows to ``epochs.csv`` and scalars to
    TensorBoard (if installed). Only the main rank writes."""

    def __init__(self, folder: str, enabled: bool, tensorboard: bool = True) -> None:
        self.folder = folder
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.jsonl = os.path.join(folder, runs.METRICS_FILE)
        self.csv = os.path.join(folder, runs.EPOCHS_FILE)
        self.tb = None

    def open(self, resume_step: Optional[int] = None) -> "MetricsLog":
        """Start the files: a new run's afresh (the folder was checked), a resumed run's
        cut back to ``resume_step``."""
        if not self.enabled:
            return self
        os.makedirs(self.folder, exist_ok=True)
        if resume_step is None:
            for p in (self.jsonl, self.csv):
                if os.path.lexists(p):
                    os.unlink(p)  # a link itself only
        else:
            self._truncate_after(resume_step)
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb_dir = os.path.join(self.folder, runs.TENSORBOARD_DIR)
                fsio.ensure_folder(tb_dir)
                self.tb = SummaryWriter(tb_dir)
            except Exception as exc:  # tensorboard missing or broken: the JSONL still has it all
                print(f"note: TensorBoard logging off ({exc.__class__.__name__}: {exc})",
                      file=sys.stderr)
        return self

    def _truncate_after(self, step: int) -> None:
        """Drop records a killed run logged after the checkpoint it resumes from."""
        if os.path.exists(self.jsonl):
            keep = [r for r in read_jsonl(self.jsonl) if r.get("step", 0) <= step]
            fsio.write_atomic(self.jsonl, "".join(json.dumps(r) + "\n" for r in keep),
                              links=fsio.INTERNAL)
            self._rewrite_csv([r for r in keep if r.get("kind") == "epoch"])

    def _rewrite_csv(self, rows: List[Dict[str, Any]]) -> None:
        text = "".join(_csv_text(r, header=i == 0) for i, r in enumerate(rows))
        if rows or os.path.lexists(self.csv):
            fsio.write_atomic(self.csv, text, links=fsio.INTERNAL)

    def _csv_row(self, rec: Dict[str, Any]) -> None:
        new = not os.path.exists(self.csv) or os.path.getsize(self.csv) == 0
        fsio.append_text(self.csv, _csv_text(rec, header=new))

    def write(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "step": step, **{k: _finite(v) for k, v in values.items()}}
        fsio.append_text(self.jsonl, json.dumps(rec) + "\n")
        if kind == "epoch":
            self._csv_row(rec)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _csv_text(rec: Dict[str, Any], header: bool) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rec.keys()), extrasaction="ignore")
    if header:
        w.writeheader()
    w.writerow(rec)
    return buf.getvalue()


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
    return out


def plot_curves(jsonl_path: str, png_path: str) -> Optional[str]:
    """Loss (train and val) and val top-1/top-5 against optimizer step; None if nothing to plot."""
    if not os.path.exists(jsonl_path):
        return None
    recs = read_jsonl(jsonl_path)
    train = [r for r in recs if r["kind"] == "train" and isinstance(r.get("loss"), float)]
    val = [r for r in recs if r["kind"] == "val"]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if val:
        ax1.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val loss")
        ax2.plot([r["step"] for r in val], [r["top1"] for r in val], "o-", label="val top-1")
        if all(r.get("top5") is not None for r in val):
            ax2.plot([r["step"] for r in val], [r["top5"] for r in val], "s-",
                     label="val top-5")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("accuracy (%)")
    if ax2.get_legend_handles_labels()[0]:  # no val split: nothing to label
        ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fsio.write_atomic_with(png_path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"),
                               links=fsio.INTERNAL)
    finally:
        plt.close(fig)
    return png_path


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
