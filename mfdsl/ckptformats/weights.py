"""Loading weights into a built model from the checkpoint formats users hold.

Three key layouts are understood and converted to mfdsl's own names, which follow timm's
module tree:

* ``mfdsl``    — what ``model.state_dict()`` gives (also what the runner saves);
* ``timm``     — ``stem.norm``, ``stages.{i}.downsample.norm``, MLP / SepConv pointwise
  layers stored as 1x1 convs in non-attention stages;
* ``official`` — the sail-sg release: ``downsample_layers.{i}``, ``stages.{i}.{j}``,
  ``norm``, ``head``;
* ``poolformer_v1`` — the sail-sg/poolformer release: ``patch_embed``, ``network.{k}``
  (even k: stage k/2's blocks, odd k: the downsampling before stage (k+1)/2), 1x1-conv
  MLPs, ``layer_scale_{1,2}``, ``norm``, ``head``; its detection backbones' output norms
  ``norm{k}`` are stage k/2's dense norm.

A model may name tensors that no classification checkpoint holds (``new_weight_prefixes``:
the dense outputs' norms); those it lacks are listed as new, initialised, not missing.

Files are read without ever running pickled code: ``.safetensors`` with safetensors,
anything else with ``torch.load(weights_only=True)``. A checkpoint that needs code to load
is refused with a :class:`CheckpointError`, as are corrupt or truncated files.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .. import runs
from ..errors import UserError
from .in21k import IN1K_CLASSES, IN21K_CLASSES, class_map, remap_in21k_head

__all__ = [
    "CheckpointError", "LoadReport", "load_checkpoint", "read_state_dict",
    "detect_format", "convert_state_dict",
]

StateDict = Dict[str, torch.Tensor]
Source = Union[str, "os.PathLike[str]", Mapping[str, Any]]

# Training scripts wrap the weights in a dict under one of these keys (timm, DeiT-style
# and the official release's train.py use "state_dict", "model" and "model_ema").
_CONTAINER_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "module", "net")
# Prefixes added by DDP, torch.compile and Lightning-style wrappers.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

_SAFETENSORS_EXT = (runs.WEIGHTS_EXT,)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # torch's legacy format: a pickle stream (protocol >= 2)
# What torch's weights-only unpickler says for a byte that is no pickle opcode at all:
# random data behind a pickle-like first byte, a corrupt file rather than code to refuse.
_UNKNOWN_OPCODE = "Unsupported operand"


class CheckpointError(UserError):
    """A checkpoint that cannot be read, is refused, or does not fit the model."""

    label = "checkpoint"  # what the message names first: "error: checkpoint: ..."
    # The account of a checkpoint that does not fit, so a command can word its own advice.
    report: Optional["LoadReport"] = None

    def render(self) -> str:
        text = str(self)
        if text.startswith(self.label + " "):  # "checkpoint X ...": named once
            return f"error: {text}"
        return f"error: {self.label}: {text}"


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did: keys loaded, and every key that did not fit, by name.

    ``mismatched`` holds ``(name, expected shape, checkpoint shape)``. ``renamed`` maps an
    mfdsl key to the checkpoint key it came from, where they differ.
    """

    format: str
    source: str = "<state dict>"
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    renamed: Dict[str, str] = field(default_factory=dict)
    container: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    # (name, why): right shape but unusable values (NaN, complex, integer, no data).
    bad_values: List[Tuple[str, str]] = field(default_factory=list)
    # Keys whose 21841-class ImageNet-21K rows were mapped to 1000 ImageNet-1K rows by the
    # official class map (mfdsl.ckptformats.in21k).
    remapped: List[str] = field(default_factory=list)
    # The model's own new tensors (its ``new_weight_prefixes``) the checkpoint lacks: they
    # keep their initialisation, and are no error.
    new: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.bad_values)

    @classmethod
    def compare(cls, expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor],
                source: str = "<state dict>") -> "LoadReport":
        """The keys and shapes where ``got`` (same names) differs from ``expected``."""
        return cls("mfdsl", source,
                   loaded=[k for k, v in expected.items()
                           if k in got and tuple(got[k].shape) == tuple(v.shape)],
                   missing=[k for k in expected if k not in got],
                   unexpected=[k for k in got if k not in expected],
                   mismatched=[(k, tuple(v.shape), tuple(got[k].shape))
                               for k, v in expected.items()
                               if k in got and tuple(got[k].shape) != tuple(v.shape)])

    def summary(self, outcome: Optional[str] = None) -> str:
        """A readable multi-line account, naming every key that did not fit."""
        head = f"checkpoint {self.source} (format: {self.format}"
        head += f", from its '{self.container}' entry" if self.container else ""
        head += f"): {outcome or f'{len(self.loaded)} tensors loaded'}"
        return "\n".join([head] + self.problems() + [f"  note: {n}" for n in self.notes])

    def problems(self, limit: Optional[int] = None) -> List[str]:
        """One indented line per key that did not fit, under a heading per kind; at most
        ``limit`` keys per kind when given."""
        def listed(title: str, items: List[str]) -> List[str]:
            if not items:
                return []
            more = len(items) - limit if limit is not None else 0
            shown = items[:limit] if limit is not None else items
            return ([f"  {title} ({len(items)}):"] + [f"    {x}" for x in shown]
                    + ([f"    ... and {more} more"] if more > 0 else []))

        return (listed("missing from the checkpoint", self.missing)
                + listed("new in the model, initialised", self.new)
                + listed("not in the model", [self._named(k) for k in self.unexpected])
                + listed("wrong shape", [f"{self._named(k)}: model expects {list(e)}, "
                                         f"checkpoint has {list(g)}"
                                         for k, e, g in self.mismatched])
                + listed("unusable values", [f"{self._named(k)}: {why}"
                                             for k, why in self.bad_values]))

    def _named(self, key: str) -> str:
        orig = self.renamed.get(key)
        return f"{key} (checkpoint key '{orig}')" if orig else key


# --- reading --------------------------------------------------------------------------

def read_state_dict(
    src: Source, map_location: Union[str, torch.device] = "cpu"
) -> Tuple[StateDict, str, Optional[str]]:
    """Read a file or take a mapping; unwrap containers and wrapper prefixes.

    Returns ``(state dict, source description, container key or None)``.
    """
    if isinstance(src, Mapping):
        obj: Any = src
        where = "<state dict>"
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        where = path
        obj = _read_file(path, map_location)
    else:
        raise CheckpointError(
            f"expected a checkpoint path or a state dict, got {type(src).__name__}")
    sd, container = _unwrap(obj, where)
    return _strip_prefixes(sd), where, container


def _read_file(path: str, map_location: Union[str, torch.device]) -> Any:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    from ..fsio import check_regular

    try:
        check_regular(path, "checkpoint")  # a FIFO would block the read below
        with open(path, "rb") as f:
            magic = f.read(16)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
    if not magic:
        raise CheckpointError(f"{path}: the checkpoint file is empty")
    if path.lower().endswith(_SAFETENSORS_EXT) or _looks_like_safetensors(magic):
        return _read_safetensors(path, map_location)
    if not (magic.startswith(_ZIP_MAGIC) or magic.startswith(_PICKLE_MAGIC)):
        raise CheckpointError(
            f"{path}: not a valid checkpoint: neither a PyTorch file nor safetensors "
            f"(starts with {magic[:8]!r})")
    return _read_torch(path, map_location)


def _looks_like_safetensors(magic: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(magic) >= 9 and magic[8:9] == b"{"


def _read_safetensors(path: str, map_location: Union[str, torch.device]) -> StateDict:
    from safetensors.torch import load_file

    device = str(map_location) if not isinstance(map_location, str) else map_location
    try:
        return load_file(path, device=device)
    except Exception as exc:  # SafetensorError, or a header that is not JSON
        raise CheckpointError(
            # "not a valid checkpoint" as for any other unreadable file: random bytes can
            # look like a safetensors header (byte 8 is '{') and take this path.
            f"{path}: not a valid checkpoint: not a valid safetensors file "
            f"({_first_line(exc)}); it may be truncated or corrupt"
        ) from None


def _read_torch(path: str, map_location: Union[str, torch.device]) -> Any:
    # argparse.Namespace is plain data: timm's training checkpoints store their args as one.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        needs_code = "Weights only load failed" in text or "Unsupported global" in text
        if needs_code and _UNKNOWN_OPCODE not in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" (it references {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: the checkpoint needs pickled Python code to load{what}. "
                "mfdsl only loads plain tensors (torch.load weights_only=True); re-save the "
                f"weights as a plain state dict or as {runs.WEIGHTS_EXT}"
            ) from None
        raise CheckpointError(_not_valid(path, exc)) from None
    except Exception as exc:  # truncated zip, garbage bytes, unsupported legacy data
        raise CheckpointError(_not_valid(path, exc)) from None


def _not_valid(path: str, exc: BaseException) -> str:
    reason = ("an unknown pickle opcode" if _UNKNOWN_OPCODE in str(exc)
              else _first_line(exc))
    return (f"{path}: not a valid checkpoint: not a readable PyTorch file ({reason}); it "
            "may be truncated or corrupt")


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message, for a one-line error."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    text = re.split(r"(?<=[a-z])\. ", text)[0]
    return text[:200]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _unwrap(obj: Any, where: str) -> Tuple[StateDict, Optional[str]]:
    container: Optional[str] = None
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if _is_state_dict(obj):
            return dict(obj), container
        if not isinstance(obj, Mapping):
            break
        inner = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        container = inner if container is None else f"{container}.{inner}"
        obj = obj[inner]
    if isinstance(obj, Mapping):
        if not obj:
            raise CheckpointError(f"{where}: the checkpoint holds no tensors")
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        raise CheckpointError(
            f"{where}: not a state dict: entries {bad} are not tensors (looked for the "
            f"weights under {', '.join(repr(k) for k in _CONTAINER_KEYS)})")
    raise CheckpointError(
        f"{where}: not a state dict: the checkpoint holds a {type(obj).__name__}")


def _strip_prefixes(sd: StateDict) -> StateDict:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    return sd


# --- formats --------------------------------------------------------------------------

_OFFICIAL = re.compile(r"^(downsample_layers\.\d+\.|stages\.\d+\.\d+\.)")
_TIMM = re.compile(r"^(stem\.norm\.|stages\.\d+\.downsample\.norm\.)")
_POOLFORMER_V1 = re.compile(r"^network\.\d+\.")
_OURS = re.compile(r"^(stem|stages|head)\.")


def detect_format(sd: Mapping[str, torch.Tensor]) -> str:
    """``"official"``, ``"poolformer_v1"``, ``"timm"``, ``"mfdsl"`` or ``"unknown"``, from
    the key names.

    timm and mfdsl name almost everything alike; a timm checkpoint is recognised by its
    downsampling norms (``stem.norm``) or by 1x1-conv MLP weights.
    """
    keys = list(sd)
    if any(_OFFICIAL.match(k) for k in keys):
        return "official"
    if any(_POOLFORMER_V1.match(k) for k in keys):
        return "poolformer_v1"
    if any(_TIMM.match(k) for k in keys):
        return "timm"
    if any(re.search(r"\.(mlp\.fc[12]|pwconv[12])\.weight$", k) and sd[k].dim() == 4
           for k in keys):
        return "timm"
    if any(_OURS.match(k) for k in keys):
        return "mfdsl"
    return "unknown"


def _pick(candidates: List[str], target: Mapping[str, Any]) -> str:
    """The first candidate the model has; the first one if it has none."""
    return next((c for c in candidates if c in target), candidates[0])


def _rename(key: str, fmt: str, target: Mapping[str, Any]) -> str:
    if fmt == "official":
        m = re.match(r"^downsample_layers\.(\d+)\.(.*)$", key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            return f"stem.{rest}" if i == 0 else f"stages.{i}.downsample.{rest}"
        key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
        if key.startswith("norm."):
            return "head." + key
        if key.startswith("head."):
            return "head.fc." + key[len("head."):]
        return key
    if fmt == "poolformer_v1":
        return _rename_poolformer_v1(key)
    if fmt == "timm":
        # timm calls the stem's norm and the downsampling norm both "norm"; mfdsl says
        # which side of the conv it is on.
        m = re.match(r"^(stem|stages\.\d+\.downsample)\.norm\.(.*)$", key)
        if m:
            base, rest = m.groups()
            order = ["post_norm", "pre_norm"] if base == "stem" else ["pre_norm", "post_norm"]
            return _pick([f"{base}.{n}.{rest}" for n in order], target)
        return key
    return key


def _rename_poolformer_v1(key: str) -> str:
    m = re.match(r"^network\.(\d+)\.(.*)$", key)
    if m:
        k, rest = int(m.group(1)), m.group(2)
        if k % 2:  # a downsampling PatchEmbed between stages
            return f"stages.{(k + 1) // 2}.downsample.{rest.replace('proj.', 'conv.', 1)}"
        rest = re.sub(r"^(\d+)\.", r"blocks.\1.", rest)
        rest = re.sub(r"\.layer_scale_([12])$", r".layer_scale\1.scale", rest)
        return f"stages.{k // 2}.{rest}"
    if key.startswith("patch_embed.proj."):
        return "stem.conv." + key[len("patch_embed.proj."):]
    m = re.match(r"^norm(\d+)\.(.*)$", key)
    if m:
        return f"dense.stage{int(m.group(1)) // 2}.{m.group(2)}"
    if key.startswith("norm."):
        return "head." + key
    if key.startswith("head."):
        return "head.fc." + key[len("head."):]
    return key


def _fit_shape(v: torch.Tensor, want: torch.Size) -> torch.Tensor:
    """A 1x1 conv weight [out, in, 1, 1] for a Linear [out, in] (timm's MLP layout)."""
    if v.shape == want:
        return v
    if v.dim() > len(want) and tuple(v.shape[:len(want)]) == tuple(want) and all(
            s == 1 for s in v.shape[len(want):]):
        return v.reshape(want)
    return v


def convert_state_dict(
    sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], fmt: str
) -> Tuple[StateDict, Dict[str, str]]:
    """Rename keys of ``fmt`` to mfdsl's and fit 1x1-conv shapes to ``target``'s.

    Returns the converted dict and ``{new key: checkpoint key}`` for renamed entries.
    """
    out: StateDict = {}
    renamed: Dict[str, str] = {}
    for k, v in sd.items():
        nk = _rename(k, fmt, target)
        if nk in out:
            raise CheckpointError(
                f"checkpoint keys '{renamed.get(nk, nk)}' and '{k}' both map to '{nk}'")
        if nk != k:
            renamed[nk] = k
        if nk in target:
            v = _fit_shape(v, target[nk].shape)
        out[nk] = v
    return out, renamed


# --- loading --------------------------------------------------------------------------

def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: Source,
    *,
    strict: bool = True,
    map_location: Union[str, torch.device] = "cpu",
) -> LoadReport:
    """Load weights into ``model`` from a file or a state dict of any known format.

    With ``strict`` any missing, unexpected or mis-shaped key raises
    :class:`CheckpointError` naming them all, and the model is left unchanged. Without it
    the keys that fit are loaded and the rest are listed in the returned report.
    """
    sd, where, container = read_state_dict(path_or_state_dict, map_location)
    fmt = detect_format(sd)
    target = model.state_dict()
    converted, renamed = convert_state_dict(sd, target, fmt)
    converted, remapped = remap_in21k_head(converted, target)

    report = LoadReport(format=fmt, source=where, container=container, renamed=renamed,
                        remapped=remapped)
    # BatchNorm's step counter is bookkeeping that older checkpoints lack; torch fills it.
    absent = [k for k in target if k not in converted and not k.endswith(".num_batches_tracked")]
    new_prefixes = tuple(getattr(model, "new_weight_prefixes", ()))
    report.new = [k for k in absent if new_prefixes and k.startswith(new_prefixes)]
    report.missing = [k for k in absent if k not in report.new]
    report.unexpected = [k for k in converted if k not in target]
    good: StateDict = {}
    for k, v in converted.items():
        if k not in target:
            continue
        if tuple(v.shape) != tuple(target[k].shape):
            report.mismatched.append((k, tuple(target[k].shape), tuple(v.shape)))
            continue
        why = _unusable(v, target[k])
        if why:
            report.bad_values.append((k, why))
        else:
            good[k] = v
    report.notes = _notes(model, fmt, report)

    if strict and not report.ok:
        text = report.summary("does not fit the model; nothing was loaded")
        if fmt == "unknown":
            text += ("\n  note: no key looks like a MetaFormer checkpoint (official, timm or "
                     "mfdsl layout)")
        err = CheckpointError(text + "\n  (load with strict=False to load the keys that fit)")
        err.report = report
        raise err
    try:
        model.load_state_dict(good, strict=False)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise CheckpointError(f"{where}: cannot copy the weights: {_first_line(exc)}") from None
    report.loaded = list(good)
    return report


def _unusable(v: torch.Tensor, want: torch.Tensor) -> Optional[str]:
    """Why a right-shaped tensor still cannot be loaded (copy_ would silently cast it)."""
    if v.is_meta:
        return "holds no data (it was saved from the meta device)"
    if want.is_floating_point():
        if not v.is_floating_point():
            return f"is {str(v.dtype).replace('torch.', '')}, the model's weight is " \
                   f"{str(want.dtype).replace('torch.', '')}"
        if not bool(torch.isfinite(v).all()):
            return "contains NaN or infinite values"
    return None


def _notes(model: nn.Module, fmt: str, report: LoadReport) -> List[str]:
    notes = []
    if report.remapped:
        _, _, missing = class_map()
        notes.append(f"ImageNet-21K head ({IN21K_CLASSES} classes) mapped to the model's "
                     f"{IN1K_CLASSES} ImageNet-1K classes by the official class map "
                     f"({', '.join(report.remapped)}; class {missing}, absent from "
                     "ImageNet-21K, takes the mean row)")
    # The MlpHead norm's eps is not stored in any checkpoint but changes the logits.
    head_norm = getattr(getattr(getattr(model, "head", None), "fc", None), "norm", None)
    eps = getattr(head_norm, "eps", None)
    want = {"timm": 1e-6, "official": 1e-5}.get(fmt)
    if eps is not None and want is not None and abs(eps - want) > 1e-12:
        notes.append(f"the {fmt} MLP head norm uses eps {want:g}, this model uses {eps:g}: "
                     f"logits differ slightly from the {fmt} model's")
    for k, e, g in report.mismatched:
        if k.endswith("random_matrix"):
            notes.append(f"{k}: a random-mixing matrix is sized by the stage's token count; "
                         "build the model at the checkpoint's input size")
            break
    for k, e, g in report.mismatched:
        if k.startswith("head.fc.") and e and g and e[0] != g[0]:
            notes.append(f"the classifier has {e[0]} classes, the checkpoint {g[0]}; "
                         "load with strict=False to keep a fresh head for fine-tuning")
            break
    return notes
