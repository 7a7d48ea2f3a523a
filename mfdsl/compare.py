"""Where models sit against each other: top-1 against MACs, parameters and throughput.

Entries are specs (static counts; no accuracy), runs (the accuracy their run folder
recorded, with the dataset it was measured on) and, on request, the paper's table
(ImageNet-1K top-1, parameters and MACs as published). Accuracy is only ever compared
within one dataset: the Pareto front is computed per dataset. Throughput is measured here,
with a short timed forward at a stated batch and image size, and is recorded with the
machine it came from.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from . import runs
from .errors import UserError
from .ir import ModelSpec
from .paper_table import PAPER_TABLE, SOURCE

IMAGENET = "ImageNet-1K"


class CompareError(UserError):
    """An item that cannot be compared, or an output that would overwrite a file."""


@dataclass
class Entry:
    label: str
    kind: str  # spec | run | paper
    source: str
    params: int  # trainable
    frozen: int
    macs: int
    img_size: Optional[List[int]] = None
    top1: Optional[float] = None
    top1_from: Optional[str] = None  # which record the accuracy comes from
    dataset: Optional[str] = None
    img_s: Optional[float] = None
    pareto: Dict[str, bool] = field(default_factory=dict)


# --- gathering ------------------------------------------------------------------------

def _counts(spec: ModelSpec) -> tuple:
    from .analysis.counting import macs_by_module, meta_model, param_counts

    model = meta_model(spec)
    trainable, frozen = param_counts(model)
    return trainable, frozen, macs_by_module(model, spec)["Global"]


def _load_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _run_accuracy(folder: str) -> tuple:
    """(top1, where it comes from, dataset) of a run folder."""
    summary = _load_json(os.path.join(folder, runs.SUMMARY_FILE))
    recipe = _load_json(os.path.join(folder, runs.RECIPE_FILE)) or {}
    resolved = recipe.get("resolved", {})
    data = resolved.get("data")
    dataset = ("TinyShapes" if resolved.get("embedded_data")
               else os.path.basename(os.path.normpath(data)) if data else None)
    if summary and summary.get("final_val"):
        return (float(summary["final_val"]["top1"]), "summary.json final_val.top1", dataset)
    last = None
    try:
        with open(os.path.join(folder, runs.METRICS_FILE), encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("kind", rec.get("type")) == "val" and "top1" in rec:
                    last = rec
    except OSError:
        pass
    if last is not None:
        return float(last["top1"]), f"metrics.jsonl val @ step {last.get('step')}", dataset
    return None, None, dataset


def gather(item: str) -> Entry:
    """An Entry for a spec file, a zoo model name or a run folder."""
    from .api import check_spec, load_spec
    from .resources import zoo_spec_file

    if os.path.isdir(item):
        spec_file = runs.spec_file(item)
        if spec_file is None:
            raise CompareError(f"{item}: a folder without spec.mf (a run folder is expected)")
        spec = check_spec(load_spec(spec_file))
        top1, where, dataset = _run_accuracy(item)
        if top1 is None:
            raise CompareError(f"{item}: the run has no validation accuracy yet (no "
                               "summary.json final_val and no val record in metrics.jsonl)")
        p, f, m = _counts(spec)
        return Entry(os.path.basename(os.path.normpath(item)), "run", item, p, f, m,
                     list(spec.img_size), top1, where, dataset)
    path = item
    if not os.path.exists(item):
        zoo = zoo_spec_file(item)
        if zoo is None:
            raise CompareError(f"{item}: no such spec file, run folder or zoo model")
        path = str(zoo)
    spec = check_spec(load_spec(path))
    p, f, m = _counts(spec)
    return Entry(spec.name, "spec", path, p, f, m, list(spec.img_size))


def paper_entries() -> List[Entry]:
    """The paper's models that have a published top-1, as comparable entries."""
    return [Entry(name, "paper", SOURCE, int(round(float(r.params) * 1e6)),
                  int(round(float(r.frozen or 0) * 1e6)), int(round(float(r.macs) * 1e9)),
                  [r.img_size, r.img_size], float(r.top1), "paper table", IMAGENET)
            for name, r in PAPER_TABLE.items() if r.top1 is not None]


# --- throughput -----------------------------------------------------------------------

@torch.no_grad()
def measure_throughput(specs: Sequence[ModelSpec], batch: int = 8, seconds: float = 2.0,
                       device: str = "cpu", rounds: int = 3) -> List[float]:
    """Images/s of an eval-mode forward (fp32, eager) at ``batch`` x each spec's image size.

    Models are timed side by side: in each of ``rounds`` rounds every model runs for
    ``seconds / rounds`` (at least two passes) after one warm-up pass; a model's figure is
    its median round, so load that comes and goes hits all models alike.
    """
    from .lower import lower

    models, inputs = [], []
    for spec in specs:
        torch.manual_seed(0)
        m = lower(spec).eval().to(device)
        x = torch.randn(batch, spec.in_chans, *spec.img_size, device=device)
        m(x)  # warm-up
        models.append(m)
        inputs.append(x)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    per_round = max(seconds, 0.0) / max(rounds, 1)
    rates: List[List[float]] = [[] for _ in models]
    for _ in range(max(rounds, 1)):
        for k, (m, x) in enumerate(zip(models, inputs)):
            sync()
            n, t0 = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - t0 < per_round:
                m(x)
                n += 1
            sync()
            rates[k].append(batch * n / (time.perf_counter() - t0))
    return [sorted(r)[len(r) // 2] for r in rates]


def machine() -> Dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# --- Pareto ---------------------------------------------------------------------------

AXES = (("macs", "MACs", False), ("params", "parameters", False),
        ("img_s", "throughput (img/s)", True))


def mark_pareto(entries: Sequence[Entry]) -> None:
    """For each axis, mark the entries no other entry of the same dataset beats: at least
    as accurate and at least as cheap (fewer MACs / parameters, more img/s), one strictly."""
    for attr, _, higher_better in AXES:
        for e in entries:
            x = getattr(e, attr)
            if e.top1 is None or x is None:
                continue

            def better(o: Entry) -> bool:
                ox = getattr(o, attr)
                if o is e or o.top1 is None or ox is None or o.dataset != e.dataset:
                    return False
                cheaper = ox >= x if higher_better else ox <= x
                strictly = (ox > x if higher_better else ox < x) or o.top1 > e.top1
                return cheaper and o.top1 >= e.top1 and strictly

            e.pareto[attr] = not any(better(o) for o in entries)


# --- output ---------------------------------------------------------------------------

COLUMNS = ("label", "kind", "dataset", "top1", "params", "frozen", "macs", "img_s",
           "img_size", "pareto_macs", "pareto_params", "pareto_img_s", "top1_from", "source")


def _row(e: Entry) -> Dict[str, Any]:
    d = asdict(e)
    d.pop("pareto")
    for attr, _, _ in AXES:
        d[f"pareto_{attr}"] = e.pareto.get(attr)
    d["img_size"] = "x".join(map(str, e.img_size)) if e.img_size else None
    return d


def table(entries: Sequence[Entry]) -> str:
    from .analysis.labels import human

    head = ("model", "kind", "dataset", "top-1", "params", "MACs", "img/s", "Pareto")
    rows = [head]
    for e in entries:
        front = ",".join(a for a, _, _ in AXES if e.pareto.get(a)) or "-"
        params = human(e.params) + (f" + {human(e.frozen)} frozen" if e.frozen else "")
        rows.append((e.label, e.kind, e.dataset or "-",
                     f"{e.top1:.2f}" if e.top1 is not None else "-", params, human(e.macs),
                     f"{e.img_s:.1f}" if e.img_s is not None else "-", front))
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_csv(entries: Sequence[Entry]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for e in entries:
        w.writerow(_row(e))
    return buf.getvalue()


def to_json(entries: Sequence[Entry], context: Dict[str, Any]) -> str:
    return json.dumps({"context": context, "entries": [_row(e) for e in entries]},
                      indent=2, sort_keys=True) + "\n"


def plot(entries: Sequence[Entry], context: Dict[str, Any]) -> bytes:
    """PNG: one row per dataset (accuracies from different data never share an axis), one
    column per cost axis (log scale); Pareto fronts as dashed lines; specs without an
    accuracy as grey ticks on the cost axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if all(e.top1 is None for e in entries):
        return _plot_costs(entries, context)
    datasets = sorted({e.dataset for e in entries if e.top1 is not None}, key=str) or [None]
    fig, grid = plt.subplots(len(datasets), 3, figsize=(16, 4.6 * len(datasets)),
                             squeeze=False)
    markers = {"paper": "s", "run": "o", "spec": "^"}
    for row, dataset in zip(grid, datasets):
        mine = [e for e in entries if e.dataset == dataset and e.top1 is not None]
        for ax, (attr, name, higher_better) in zip(row, AXES):
            scale = {"macs": 1e9, "params": 1e6}.get(attr, 1.0)
            unit = {"macs": " (G)", "params": " (M)"}.get(attr, "")
            for kind in ("paper", "run", "spec"):
                pts = [e for e in mine if e.kind == kind and getattr(e, attr) is not None]
                if not pts:
                    continue
                xs = [getattr(e, attr) / scale for e in pts]
                ax.scatter(xs, [e.top1 for e in pts], marker=markers[kind],
                           label=f"{kind}s")
                for e, x in zip(pts, xs):
                    ax.annotate(e.label, (x, e.top1), fontsize=6, xytext=(3, 3),
                                textcoords="offset points")
            front = sorted((e for e in mine if e.pareto.get(attr)),
                           key=lambda e: getattr(e, attr))
            if len(front) > 1:
                ax.plot([getattr(e, attr) / scale for e in front], [e.top1 for e in front],
                        "--", linewidth=1, alpha=0.7, label="Pareto front")
            placed = [getattr(e, attr) for e in mine if getattr(e, attr)]
            lo, hi = (min(placed), max(placed)) if placed else (0.0, float("inf"))
            for e in entries:
                x = getattr(e, attr)
                # a spec without an accuracy: a tick, in the rows whose range it is near
                if e.top1 is None and x is not None and lo / 3 <= x <= hi * 3:
                    ax.axvline(x / scale, color="grey", linewidth=0.6, alpha=0.5)
            if placed and hi / lo > 20:
                ax.set_xscale("log")
            ax.set_xlabel(name + unit + (" - higher is better" if higher_better else ""))
            ax.set_ylabel(f"top-1 (%) on {dataset or '-'}")
            ax.grid(alpha=0.3, which="both")
            if attr == "img_s":
                ax.set_title(f"measured here: batch {context['batch']}, fp32, "
                             f"{context['device']}" if context.get("throughput")
                             else "throughput not measured", fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plot_costs(entries: Sequence[Entry], context: Dict[str, Any]) -> bytes:
    """PNG for entries without any accuracy (specs only): one labelled row per entry on
    each cost axis, so the models are compared by what they cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 1.2 + 0.35 * max(len(entries), 3)),
                             squeeze=False)
    ys = list(range(len(entries)))
    for ax, (attr, name, higher_better) in zip(axes[0], AXES):
        scale = {"macs": 1e9, "params": 1e6}.get(attr, 1.0)
        unit = {"macs": " (G)", "params": " (M)"}.get(attr, "")
        pts = [(y, getattr(e, attr) / scale) for y, e in zip(ys, entries)
               if getattr(e, attr) is not None]
        if pts:
            ax.barh([y for y, _ in pts], [x for _, x in pts], color="tab:blue", alpha=0.7)
            for y, x in pts:
                ax.annotate(f"{x:.3g}", (x, y), fontsize=7, xytext=(3, -3),
                            textcoords="offset points")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_yticks(ys)
        ax.set_yticklabels([e.label for e in entries], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(name + unit + (" - higher is better" if higher_better else ""))
        ax.grid(alpha=0.3, axis="x")
        if attr == "img_s":
            ax.set_title(f"measured here: batch {context.get('batch')}, fp32, "
                         f"{context.get('device')}" if context.get("throughput")
                         else "throughput not measured", fontsize=8)
    fig.suptitle("specs without an accuracy: costs only", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(folder: str, files: Dict[str, bytes], overwrite: bool = False) -> List[str]:
    """Write every file atomically inside ``folder`` (mfdsl.fsio: permissions kept, a
    read-only file refused); refuse (before writing any) if one exists and ``overwrite`` is
    not set."""
    from . import fsio

    check_outputs(folder, files, overwrite)
    os.makedirs(folder, exist_ok=True)
    paths = {name: os.path.join(folder, name) for name in files}
    for name, data in files.items():
        fsio.write_atomic(paths[name], data)
    return list(paths.values())


OUTPUT_FILES = ("compare.csv", "compare.json", "compare.png")


def check_outputs(folder: str, names: Sequence[str] = OUTPUT_FILES,
                  overwrite: bool = False) -> None:
    """Refuse early: an output that exists (unless ``overwrite``), or a folder that is a file."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CompareError(f"--output {folder}: exists and is not a folder")
    existing = [os.path.join(folder, n) for n in names if os.path.exists(os.path.join(folder, n))]
    if existing and not overwrite:
        raise CompareError(f"would overwrite {', '.join(existing)}; pass --force or choose "
                           "another --output folder")


def compare(items: Sequence[str], *, paper: bool = False, throughput: bool = True,
            batch: int = 8, seconds: float = 2.0, device: str = "cpu", rounds: int = 3
            ) -> tuple:
    """(entries with Pareto marks, context) for ``items`` (+ the paper's table)."""
    entries = [gather(i) for i in items]
    if throughput and entries:
        from .api import check_spec, load_spec

        specs = []
        for e in entries:
            src = e.source
            if e.kind == "run":
                src = runs.spec_file(src) or src
            specs.append(check_spec(load_spec(src)))
        for e, rate in zip(entries, measure_throughput(specs, batch, seconds, device, rounds)):
            e.img_s = rate
    if paper:
        entries += paper_entries()
    mark_pareto(entries)
    context = {"batch": batch, "seconds": seconds, "device": device, "rounds": rounds,
               "throughput": "eval-mode forward, fp32, eager, each spec's own image size; "
                             "models timed side by side in rounds, median round"
               if throughput else None, "machine": machine()}
    return entries, context
