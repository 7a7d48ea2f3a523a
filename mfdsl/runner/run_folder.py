"""A run folder: what it records besides metrics (the spec, the resolved recipe, the
environment), the context a result depends on (``run.json``), and the rules that keep an
earlier run's files from being overwritten.

``run.json`` holds the run's context: its id, the model fingerprint (see
``mfdsl.fingerprint``), the canonical spec text, the input size, the eval transform and the
class list (label i is ``classes[i]``). Every checkpoint's metadata carries the same
context, so a weights file copied out of its folder still knows what it is. ``--resume``
and ``eval`` check it; ``eval`` uses it.

Rules: a new run never writes into a folder holding an earlier run's files unless asked
(``--overwrite`` clears those files first; ``--resume`` continues them); the run's spec.mf
is never rewritten; a file the command reads (the user's spec) is never written; every
file is written through ``mfdsl.fsio`` with the internal symlink policy (a link inside the
folder is refused, so nothing outside it is written).
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .. import fsio, runs
from ..ir import EvalSpec, ModelSpec, with_overrides
from .errors import RunError

RUN_FILE = runs.RUN_FILE
RUN_FORMAT = "mfdsl-run"
RUN_ENTRIES = runs.RUN_ENTRIES  # the file names: mfdsl.runs
_MAX_RUN_JSON = 64 * 1024 * 1024


@dataclass
class RunContext:
    """What a result of the run depends on; see the module docstring."""

    model: str  # fingerprint
    spec_mf: str  # canonical .mf text of the spec the run trains
    img_size: Tuple[int, int]
    eval: Dict[str, Any]  # crop_pct, interpolation, mean, std
    classes: List[str]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of(cls, spec: ModelSpec, classes: Sequence[str], run_id: Optional[str] = None
           ) -> "RunContext":
        from ..fingerprint import model_fingerprint

        ev = spec.eval
        ctx = cls(model=model_fingerprint(spec), spec_mf=spec_text(spec)[1],
                  img_size=(int(spec.img_size[0]), int(spec.img_size[1])),
                  eval={"crop_pct": ev.crop_pct, "interpolation": ev.interpolation,
                        "mean": list(ev.mean), "std": list(ev.std)},
                  classes=list(classes))
        if run_id:
            ctx.run_id = run_id
        return ctx

    def to_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return dict(d, format=RUN_FORMAT)

    @classmethod
    def from_json(cls, d: Any, where: str) -> "RunContext":
        try:
            if d.get("format") != RUN_FORMAT:
                raise ValueError("not an mfdsl run record")
            ev = d["eval"]
            return cls(model=str(d["model"]), spec_mf=str(d["spec_mf"]),
                       img_size=(int(d["img_size"][0]), int(d["img_size"][1])),
                       eval={"crop_pct": float(ev["crop_pct"]),
                             "interpolation": str(ev["interpolation"]),
                             "mean": [float(x) for x in ev["mean"]],
                             "std": [float(x) for x in ev["std"]]},
                       classes=[str(c) for c in d["classes"]], run_id=str(d["run_id"]))
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise RunError(f"{where}: unreadable run context ({exc}); was it written by "
                           "mfdsl?") from None

    def apply(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` at the run's input size and with its eval transform."""
        ev = EvalSpec(crop_pct=self.eval["crop_pct"], interpolation=self.eval["interpolation"],
                      mean=tuple(self.eval["mean"]), std=tuple(self.eval["std"]))
        ev.locs = dict(spec.eval.locs)
        return with_overrides(spec, img_size=tuple(self.img_size), eval=ev)

    def check_model(self, spec: ModelSpec, than: str, advice: str) -> None:
        """Refuse (RunError) ``spec`` unless it builds the model this run trained, by the
        fingerprint: the one check and wording of that refusal (resume, weights, eval).
        ``than`` names the run's side ("the run being resumed", "X was trained as");
        ``advice`` says what to give instead; where the models differ is appended."""
        from ..fingerprint import model_fingerprint, short

        fp = model_fingerprint(spec)
        if fp != self.model:
            raise RunError(f"{spec.source or 'the spec'} builds a different model (fingerprint "
                           f"{short(fp)}) than {than} (fingerprint {short(self.model)}); "
                           f"{advice}" + self.difference(spec))

    def difference(self, spec: ModelSpec) -> str:
        """":\n<lines>" naming where ``spec``'s model differs from the run's ("" if unknown)."""
        from ..errors import SpecError
        from ..fingerprint import describe_difference

        try:
            text = describe_difference(self.load_spec("run"), spec)
        except (SpecError, RunError):
            return ""
        return ":\n" + text if text else ""

    def load_spec(self, where: str) -> ModelSpec:
        """The run's own spec (from its canonical text), with the run's context."""
        from ..frontend.mf import parse_mf

        spec = parse_mf(self.spec_mf, where)
        return self.apply(spec)


def read_run(folder: str) -> Optional[RunContext]:
    """The context recorded in ``folder``/run.json, None if the folder has none."""
    path = os.path.join(folder, RUN_FILE)
    if not os.path.lexists(path):
        return None
    try:
        raw = fsio.read_regular(path, _MAX_RUN_JSON, "run record")
        d = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot read the run record: {exc}") from None
    return RunContext.from_json(d, path)


def run_folder_of(path: str) -> Optional[str]:
    """The run folder a checkpoint file or folder belongs to (one holding run.json)."""
    p = os.path.abspath(path)
    cands = [p] if os.path.isdir(p) else []
    parent = os.path.dirname(p)
    in_ckpt = os.path.basename(parent) == runs.CHECKPOINTS_DIR
    cands += [parent, os.path.dirname(parent)] if in_ckpt else [parent]
    for c in cands:
        if os.path.isfile(os.path.join(c, RUN_FILE)):
            return c
    return None


def checkpoint_context(weights_path: str) -> Optional[RunContext]:
    """The context of a weights file: its own metadata, else its run folder's run.json."""
    from .checkpointing import weights_meta

    meta = weights_meta(weights_path) if os.path.isfile(weights_path) else None
    if meta and isinstance(meta.get("run"), dict):
        return RunContext.from_json(meta["run"], weights_path)
    folder = run_folder_of(weights_path)
    return read_run(folder) if folder else None


# --------------------------------------------------------------------------- folder rules
def earlier_run_entries(folder: str, inputs: Iterable[Optional[str]] = ()) -> List[str]:
    """The run files already in ``folder`` (input files of this command excepted)."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in RUN_ENTRIES:
        path = os.path.join(folder, name)
        if os.path.lexists(path) and not any(src and fsio.same_file(path, src)
                                             for src in inputs):
            if name in (runs.CHECKPOINTS_DIR, runs.TENSORBOARD_DIR) and os.path.isdir(path) \
                    and not os.path.islink(path) and not os.listdir(path):
                continue  # an empty folder holds nothing to lose
            found.append(name)
    return found


def check_no_links(folder: str, inputs: Iterable[Optional[str]] = ()) -> None:
    """Refuse a run folder whose run files are symbolic links (writing them would write
    outside the folder). The command's own input files are exempt: they are never written."""
    inputs = list(inputs)
    paths = [os.path.join(folder, n) for n in RUN_ENTRIES]
    ck = runs.checkpoints_dir(folder)
    if os.path.isdir(ck) and not os.path.islink(ck):
        paths += [os.path.join(ck, n) for n in os.listdir(ck)]
    for p in paths:
        if os.path.islink(p) and not any(src and fsio.same_file(p, src) for src in inputs):
            raise RunError(f"{p} is a symbolic link; mfdsl writes a run's files only inside "
                           "its folder (remove the link, or choose another --output)")


# The run's own entries of its folder, recorded when it starts (``--overwrite`` removes only
# what this names).
MANIFEST = runs.MANIFEST_FILE
MANIFEST_FORMAT = "mfdsl-run-files"


def record_run_files(folder: str, run_id: str) -> None:
    """Record that the run ``run_id`` owns the run entries of ``folder`` (called when a run
    starts, after the folder was found free of them or cleared by --overwrite)."""
    write_json(os.path.join(folder, MANIFEST), {
        "format": MANIFEST_FORMAT, "run_id": run_id,
        "entries": sorted(RUN_ENTRIES + (runs.INHERITANCE_FILE,))})


def recorded_run_files(folder: str) -> Optional[List[str]]:
    """The entries an earlier run recorded as its own (None: no usable record). A folder of
    an mfdsl run from before the record existed (a readable run.json) owns every run
    entry."""
    path = os.path.join(folder, MANIFEST)
    if os.path.isfile(path) and not os.path.islink(path):
        try:
            d = json.loads(fsio.read_regular(path, _MAX_RUN_JSON, "run record").decode("utf-8"))
            if d.get("format") == MANIFEST_FORMAT:
                return [str(e) for e in d["entries"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    try:
        if read_run(folder) is not None:
            return list(RUN_ENTRIES)
    except RunError:
        pass
    # A damaged run with no record left: its checkpoints still say they are mfdsl's.
    from .checkpointing import weights_meta

    ck = runs.checkpoints_dir(folder)
    if os.path.isdir(ck) and not os.path.islink(ck) and any(
            runs.is_checkpoint_file(n) and n.endswith(runs.WEIGHTS_EXT)
            and weights_meta(os.path.join(ck, n)) is not None for n in os.listdir(ck)):
        return [runs.CHECKPOINTS_DIR]
    return None


def foreign_entries(folder: str, inputs: Iterable[Optional[str]] = ()) -> List[str]:
    """Run-entry names in ``folder`` that no earlier run recorded as its own."""
    entries = earlier_run_entries(folder, inputs)
    owned = recorded_run_files(folder) or []
    return [e for e in entries if e not in owned]


def _ours_in_checkpoints(name: str) -> bool:
    """What a run writes inside checkpoints/, and the temporary files of its atomic writes."""
    return runs.is_checkpoint_file(name) or fsio.temporary_target(name) is not None


def _ours_in_tensorboard(name: str) -> bool:
    return name.startswith("events.out.")


def clear_run(folder: str, inputs: Iterable[Optional[str]] = ()) -> List[str]:
    """Remove an earlier run's files from ``folder`` (for --overwrite): only the entries
    the run recorded as its own; files mfdsl did not write, and the command's input
    files, stay. Returns what was removed."""
    removed = []
    owned = recorded_run_files(folder) or []
    for name in earlier_run_entries(folder, inputs):
        if name not in owned:
            continue
        path = os.path.join(folder, name)
        if os.path.islink(path) or not os.path.isdir(path):
            os.unlink(path)  # a link itself, never its target
            removed.append(name)
            continue
        ours = _ours_in_checkpoints if name == runs.CHECKPOINTS_DIR else _ours_in_tensorboard
        for entry in os.listdir(path):
            p = os.path.join(path, entry)
            if ours(entry) and (os.path.islink(p) or os.path.isfile(p)):
                os.unlink(p)
        removed.append(name + "/")
        try:
            os.rmdir(path)
        except OSError:
            pass  # other files are in there: not ours to delete
    return removed


def is_run_file(name: str, in_checkpoints: bool) -> bool:
    """Whether ``name`` is a file a run writes (at the top of its folder, or in
    checkpoints/): the targets whose interrupted writes may be cleaned up."""
    if in_checkpoints:
        return runs.is_checkpoint_file(name)
    return name in RUN_ENTRIES or name in (runs.INHERITANCE_FILE, MANIFEST)


def spec_text(spec: ModelSpec) -> "tuple[str, str]":
    """(file name, text) of the spec in canonical .mf form; falls back to the source file."""
    try:
        from ..emit.mf import to_mf

        return runs.SPEC_FILE, to_mf(spec)
    except Exception:  # the emitter is optional here: record what we can
        pass
    if spec.source and os.path.isfile(spec.source):
        ext = os.path.splitext(spec.source)[1] or ".mf"
        from ..api import MAX_SPEC_BYTES

        raw = fsio.read_regular(spec.source, MAX_SPEC_BYTES, "spec file")
        return "spec" + ext, raw.decode("utf-8", errors="replace")
    return runs.SPEC_REPR_FILE, repr(spec) + "\n"


def git_sha() -> Optional[str]:
    """The mfdsl checkout's commit, if it is a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(argv: Any, world_size: int, device: torch.device) -> Dict[str, Any]:
    import numpy
    import timm

    from .. import __version__

    env: Dict[str, Any] = {
        "command": list(argv),
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "mfdsl": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "git_sha": git_sha(),
        "world_size": world_size,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def write_json(path: str, obj: Any) -> None:
    """A run-folder JSON file, atomically (a symlink there is refused)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    fsio.write_atomic(path, text, links=fsio.INTERNAL)


# --------------------------------------------------------------------------- a run's start
@dataclass
class OutputPlan:
    """Where a training run writes and what it continues (decided before any write)."""

    output: str
    resume_stem: Optional[str]  # the checkpoint to continue from, if any
    prior: Optional[RunContext]  # the context of the run being continued
    inputs: List[str]  # files this command reads: never written
    notes: List[str] = field(default_factory=list)  # for the log


def plan_output(spec: ModelSpec, output: Optional[str], resume: Optional[str],
                overwrite: bool, img_size: Optional[Tuple[int, int]],
                inputs: Sequence[Optional[str]]) -> OutputPlan:
    """Check the run folder before anything is written (read-only, so every rank of a
    distributed run can do it before the process group exists).

    Refuses: an earlier run's files without --resume/--overwrite; links inside the folder;
    a resumed run with a different model (fingerprint) or input size than it was trained
    with. ``--resume auto`` with checkpoint files but no usable pair is refused by
    ``checkpointing.resolve_resume``.
    """
    from . import checkpointing as ckpt
    from ..fingerprint import short

    out = output or os.path.join("runs", spec.name)  # the default parent folder, not a file
    ins = [os.path.abspath(p) for p in inputs if p]
    if overwrite and resume is not None:
        raise RunError("--overwrite starts a new run in place of an earlier one; it cannot "
                       "be combined with --resume")
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"--output {out}: exists and is not a folder")
    check_no_links(out, ins)
    stem, prior, notes = None, None, []
    if resume is None:
        entries = earlier_run_entries(out, ins)
        if entries and not overwrite:
            raise RunError(f"--output {out} holds an earlier run's files ({', '.join(entries)});"
                           " continue it with --resume auto, choose another --output, or pass "
                           "--overwrite to replace them")
        foreign = foreign_entries(out, ins) if entries else []
        if foreign:
            raise RunError(f"--overwrite: {', '.join(foreign)} in {out} were not written by an "
                           "mfdsl run (no run there recorded them as its own), so they are "
                           "not removed, and a new run would overwrite them; move them away "
                           "or choose another --output")
    else:
        stem = ckpt.resolve_resume(resume, out)
        notes = []
        if stem is not None:
            prior = checkpoint_context(stem + ckpt.WEIGHTS_EXT)
            step = ckpt.pair_step(stem) or 0
            folder = os.path.dirname(stem)
            newer = [n for n in ckpt.checkpoint_files(folder)
                     if (s1 := runs.periodic_step(n)) is not None and s1 > step]
            # Newer pairs that are intact would be overwritten (same step names) or pruned
            # by the resumed run: refuse, naming them.
            intact = sorted({(s2, os.path.basename(c)) for c in
                             [os.path.join(folder, runs.checkpoint_stem(n)) for n in newer]
                             + [os.path.join(folder, runs.LAST), os.path.join(folder, runs.BEST)]
                             if (s2 := ckpt.pair_step(c)) is not None and s2 > step})
            if intact and os.path.abspath(folder) == os.path.abspath(
                    runs.checkpoints_dir(out)):
                shown = ", ".join(f"{n} (step {s2})" for s2, n in intact[:6])
                raise RunError(f"--resume {resume}: step {step} is older than intact "
                               f"checkpoints in {folder} ({shown}); continuing there would "
                               "overwrite or prune them. Resume from the newest (--resume "
                               "auto), or into another --output, or move them away")
            newer = [n for n in newer if not any(n.startswith(c + ".") for _, c in intact)]
            if newer:
                notes.append(f"note: resuming from step {step}: newer checkpoint files are "
                             f"incomplete or unreadable and are left as they are "
                             f"({', '.join(newer[:4])}{' ...' if len(newer) > 4 else ''})")
        folder_ctx = read_run(out) if os.path.isdir(out) else None
        if prior is None:
            prior = folder_ctx
        elif folder_ctx is not None and folder_ctx.run_id != prior.run_id:
            raise RunError(f"--output {out} holds another run (id {folder_ctx.run_id[:12]}, "
                           f"model {short(folder_ctx.model)}) than checkpoint {stem} belongs "
                           f"to (id {prior.run_id[:12]}); resuming there would overwrite it: "
                           "choose another --output")
    if prior is not None:
        prior.check_model(spec, "the run being resumed", "resume with the run's own spec, "
                          + os.path.join(out, runs.SPEC_FILE))
        if img_size is not None and tuple(img_size) != tuple(prior.img_size):
            raise RunError(f"--img-size {img_size[0]}x{img_size[1]}: the run was trained at "
                           f"{prior.img_size[0]}x{prior.img_size[1]}; a resumed run keeps its "
                           "input size")
    return OutputPlan(out, stem, prior, ins, notes if resume is not None else [])


def check_weights_model(spec: ModelSpec, weights_path: str) -> Optional[RunContext]:
    """The run context of ``weights_path`` (None for weights without one), after checking
    that ``spec`` builds the model they were trained as (RunError if not)."""
    if not weights_path.endswith(runs.WEIGHTS_EXT) or not os.path.isfile(weights_path):
        return None
    ctx = checkpoint_context(weights_path)
    if ctx is not None:
        ctx.check_model(spec, f"{weights_path} was trained as",
                        f"use the run's own {runs.SPEC_FILE}")
    return ctx
