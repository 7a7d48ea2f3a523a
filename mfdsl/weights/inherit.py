"""Weight inheritance: start a (hybrid) model from the trained parts of other models.

The target model is cut into *parts* by its module tree: ``stage<i>`` (its downsampling --
the stem for stage 0 -- and its blocks) and ``head`` (output norm and classifier). Each part
takes its tensors from at most one source; inside a part a tensor is copied only when its
role matches (the same module path: ``stages.i.downsample.conv.weight``,
``stages.i.blocks.j.mlp.fc1.weight``, ...), the component that owns it is the same kind
(mixer with the same arguments, norm, activation, downsampling geometry) and its shape is
equal. Everything else keeps its fresh initialisation and is reported, with the reason.

Sources: a release name (``caformer_s18.sail_in1k``), a run folder (its spec and last
checkpoint), or a checkpoint file (inside a run folder its spec is used; a bare file is
matched by key names and shapes alone).

Precedence: ``PARTS=SRC`` assigns parts explicitly (a part named twice is an error); one
bare ``SRC`` supplies every part not named explicitly. Blocks: target block j of a stage
takes source block j; where the target stage is deeper, ``depth="first"`` leaves the extra
blocks new and ``depth="repeat"`` takes source block j mod (source depth).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..ckptformats.weights import (CheckpointError, convert_state_dict, detect_format,
                                   load_checkpoint, read_state_dict)
from .. import runs
from ..fingerprint import call_text
from ..ir import DownsampleSpec, ModelSpec, default_downsample
from .sources import RUN, require_weights

DEPTH_MODES = ("first", "repeat")


class InheritError(CheckpointError):
    """An --inherit request that cannot be carried out (bad mapping, unreadable source)."""

    label = "inherit"


# --- sources --------------------------------------------------------------------------

@dataclass
class Source:
    """A trained model to inherit from: its tensors in mfdsl names, its spec if known."""

    arg: str  # as the user wrote it
    kind: str  # release | run | checkpoint
    path: str  # the weights file
    state: Dict[str, torch.Tensor]
    spec: Optional[ModelSpec] = None
    release: Optional[str] = None

    def describe(self) -> Dict[str, Any]:
        return {"arg": self.arg, "kind": self.kind, "path": os.path.abspath(self.path),
                "model": self.spec.name if self.spec else None, "release": self.release}


def _loaded(spec: ModelSpec, weights: Any, where: str) -> Dict[str, torch.Tensor]:
    from ..layers.adapters import adapter_state_rank, merge_adapter_state
    from ..pipeline import lower_checked

    model = lower_checked(spec, check_sizes=False)
    if spec.recipe is not None and spec.recipe.adapters:  # saved unmerged: merge them
        sd, _, _ = read_state_dict(weights)
        if adapter_state_rank(sd) is not None:
            weights, _ = merge_adapter_state(sd, spec.recipe.adapter_alpha)
    try:
        load_checkpoint(model, weights, strict=True)
    except CheckpointError as exc:
        raise InheritError(f"--inherit {where}: the weights do not fit its own spec "
                           f"'{spec.name}':\n{exc}") from None
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def open_source(arg: str, target: Mapping[str, torch.Tensor]) -> Source:
    """Resolve ``arg`` (release name, run folder or checkpoint file: one resolver,
    :func:`mfdsl.weights.sources.resolve_weights`) to a Source."""
    from ..pipeline import load_spec

    found = require_weights(arg, "--inherit", InheritError)
    if found.release is not None:
        from ..resources import zoo_spec_file
        from .hub import fetch, load_release

        release = found.release
        spec_file = zoo_spec_file(release.model if release.img_size == (224, 224)
                                  else f"{release.model}_384")
        path = fetch(release)
        if spec_file is None:  # no zoo spec shipped: match by names and shapes
            sd, _, _ = read_state_dict(path)
            state, _ = convert_state_dict(sd, target, detect_format(sd))
            return Source(arg, "release", path, state, None, release.name)
        from ..ir import with_overrides
        from ..pipeline import lower_checked

        spec = load_spec(spec_file)
        if spec.num_classes != release.num_classes:  # e.g. sail_in22k: a 21841-class head
            spec = with_overrides(spec, num_classes=release.num_classes)
        model = lower_checked(spec, check_sizes=False)
        load_release(model, release)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return Source(arg, "release", path, state, spec, release.name)
    if found.kind == RUN:
        spec_file = runs.spec_file(found.run)
        if spec_file is None:
            raise InheritError(f"--inherit {arg}: the run folder has no spec.mf")
        spec = load_spec(spec_file)
        return Source(arg, "run", found.path, _loaded(spec, found.path, arg), spec)
    # A file: a run's checkpoint brings its spec.
    spec_file = runs.spec_file(found.run) if found.run is not None else None
    if spec_file is not None:
        spec = load_spec(spec_file)
        return Source(arg, "checkpoint", arg, _loaded(spec, arg, arg), spec)
    sd, _, _ = read_state_dict(arg)
    fmt = detect_format(sd)
    if fmt in ("unknown", "poolformer_v1"):
        raise InheritError(f"--inherit {arg}: no key looks like a MetaFormer checkpoint "
                           "(official, timm or mfdsl layout)")
    state, _ = convert_state_dict(sd, target, fmt)
    return Source(arg, "checkpoint", arg, state, None)


# --- the plan: which source gives which part ------------------------------------------

_PART = re.compile(r"^stage(\d+)(?:-(\d+))?$")


def parse_parts(text: str, n_stages: int) -> List[str]:
    """``stage0-1,head`` -> ["stage0", "stage1", "head"]; ``all`` -> every part."""
    out: List[str] = []
    for tok in (t.strip() for t in text.split(",")):
        if tok == "all":
            out += [f"stage{i}" for i in range(n_stages)] + ["head"]
            continue
        if tok == "head":
            out.append("head")
            continue
        m = _PART.match(tok)
        if not m:
            raise InheritError(f"--inherit: unknown part '{tok}' (parts: stage0..stage"
                               f"{n_stages - 1}, ranges like stage0-1, head, all)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a or b >= n_stages:
            raise InheritError(f"--inherit: '{tok}' is not a stage range of this "
                               f"{n_stages}-stage model")
        out += [f"stage{i}" for i in range(a, b + 1)]
    return out


def split_mapping(text: str) -> Tuple[Optional[str], str]:
    """``stage0-1=runs/demo`` -> ("stage0-1", "runs/demo"); a bare source -> (None, it).

    Only a left side made of part names counts as a mapping, so paths with '=' still work.
    """
    if "=" in text:
        left, right = text.split("=", 1)
        if re.fullmatch(r"(all|head|stage\d+(-\d+)?)(,(all|head|stage\d+(-\d+)?))*",
                        left.strip()):
            return left.strip(), right
    return None, text


def plan_parts(mappings: Sequence[str], n_stages: int) -> Dict[str, str]:
    """{part: source arg} from the --inherit values (see the module doc for precedence)."""
    explicit: Dict[str, str] = {}
    fallback: Optional[str] = None
    for m in mappings:
        parts, src = split_mapping(m)
        if not src:
            raise InheritError(f"--inherit {m}: no source after '='")
        if parts is None:
            if fallback is not None:
                raise InheritError(f"--inherit: two sources for every part ({fallback} and "
                                   f"{src}); name the parts, e.g. stage0-1={src}")
            fallback = src
            continue
        for p in parse_parts(parts, n_stages):
            if p in explicit and explicit[p] != src:
                raise InheritError(f"--inherit: {p} is given twice ({explicit[p]} and {src})")
            explicit[p] = src
    plan = dict(explicit)
    if fallback is not None:
        for p in [f"stage{i}" for i in range(n_stages)] + ["head"]:
            plan.setdefault(p, fallback)
    return plan


# --- matching -------------------------------------------------------------------------

def _downsample_of(spec: ModelSpec, i: int) -> Optional[DownsampleSpec]:
    if i == 0:
        return spec.stem
    return spec.stages[i].downsample or default_downsample()


def _downsample_sig(ds: Optional[DownsampleSpec]) -> Optional[str]:
    if ds is None:
        return None
    pre = ds.pre_norm.name if ds.pre_norm else None
    post = ds.post_norm.name if ds.post_norm else None
    return f"conv k{ds.kernel} s{ds.stride} p{ds.padding}, pre_norm {pre}, post_norm {post}"


def _block_sig(spec: ModelSpec, i: int, j: int) -> Dict[str, Tuple[Optional[str], str]]:
    """{what: (canonical form compared, label shown)} of block j of stage i."""
    from ..analysis.labels import call_label

    st = spec.stages[i]
    mixer = st.mixer_for_block(j)
    return {"mixer": (call_text(mixer, "mixer"), call_label(mixer)),
            "norm": (st.norm.name, st.norm.name), "mlp act": (st.mlp_act.name, st.mlp_act.name)}


def _sig_difference(mine: Dict[str, Tuple[Optional[str], str]],
                    theirs: Dict[str, Tuple[Optional[str], str]]) -> Optional[str]:
    diffs = [f"{k} {mine[k][1]} (source: {theirs[k][1]})" for k in mine
             if mine[k][0] != theirs[k][0]]
    return "; ".join(diffs) if diffs else None


# --- the report -----------------------------------------------------------------------

@dataclass
class TensorFate:
    key: str  # in the target model
    status: str  # copied | new | mismatch
    source_key: Optional[str] = None
    reason: Optional[str] = None
    shape: Tuple[int, ...] = ()
    source_shape: Optional[Tuple[int, ...]] = None


@dataclass
class PartReport:
    part: str
    source: Optional[str]
    tensors: List[TensorFate] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for t in self.tensors if t.status == status)

    def numel(self, status: str) -> int:
        n = 0
        for t in self.tensors:
            if t.status == status:
                k = 1
                for s in t.shape:
                    k *= s
                n += k
        return n


@dataclass
class InheritReport:
    parts: List[PartReport]
    sources: List[Source]
    depth: str

    def fate(self, key: str) -> TensorFate:
        for p in self.parts:
            for t in p.tensors:
                if t.key == key:
                    return t
        raise KeyError(key)

    def copied(self) -> List[str]:
        return [t.key for p in self.parts for t in p.tensors if t.status == "copied"]

    def table(self) -> str:
        """One line per part: source, tensors (and parameters) copied / new / not fitting."""
        rows = [("part", "source", "copied", "new", "did not fit")]
        for p in self.parts:
            rows.append((p.part, p.source or "-",
                         f"{p.count('copied')} ({_human(p.numel('copied'))})",
                         f"{p.count('new')} ({_human(p.numel('new'))})",
                         str(p.count("mismatch"))))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for p in self.parts:
            for n in p.notes:
                lines.append(f"  {p.part}: {n}")
            # One line per module and reason: a block whose mixer differs is one line.
            grouped: Dict[Tuple[str, str], List[str]] = {}
            for t in p.tensors:
                if t.status == "mismatch":
                    owner = re.sub(r"\.(weight|bias|scale|[a-z_]+)$", "", t.key)
                    owner = re.match(r"^(stages\.\d+\.blocks\.\d+)\.", t.key).group(1) \
                        if re.match(r"^stages\.\d+\.blocks\.\d+\.", t.key) and \
                        not (t.reason or "").startswith("shape") else owner
                    grouped.setdefault((owner, t.reason or ""), []).append(t.key)
            for (owner, why), keys in grouped.items():
                what = owner if len(keys) > 1 else keys[0]
                count = f" ({len(keys)} tensors)" if len(keys) > 1 else ""
                lines.append(f"  {p.part}: {what}{count} not copied: {why}")
        return "\n".join(lines)

    def as_json(self) -> Dict[str, Any]:
        return {
            "depth": self.depth,
            "sources": [s.describe() for s in self.sources],
            "parts": [{
                "part": p.part, "source": p.source, "notes": p.notes,
                "copied": p.count("copied"), "new": p.count("new"),
                "mismatch": p.count("mismatch"),
                "params_copied": p.numel("copied"), "params_new": p.numel("new"),
                "tensors": [{k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in vars(t).items() if v is not None}
                            for t in p.tensors],
            } for p in self.parts],
        }


def _human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


# --- doing it -------------------------------------------------------------------------

def _group_keys(model: nn.Module) -> Dict[str, List[Tuple[str, str, Optional[int]]]]:
    """{part: [(key, role prefix, block index or None)]} from the model's module tree."""
    n = len(model.stages)
    groups: Dict[str, List[Tuple[str, str, Optional[int]]]] = {
        f"stage{i}": [] for i in range(n)}
    groups["head"] = []
    for k in model.stem.state_dict(prefix="stem."):
        groups["stage0"].append((k, "stem.", None))
    for i, stage in enumerate(model.stages):
        pre = f"stages.{i}.downsample."
        for k in stage.downsample.state_dict(prefix=pre):
            groups[f"stage{i}"].append((k, pre, None))
        for j, _ in enumerate(stage.blocks):
            pre = f"stages.{i}.blocks.{j}."
            for k in stage.blocks[j].state_dict(prefix=pre):
                groups[f"stage{i}"].append((k, pre, j))
    for k in model.head.state_dict(prefix="head."):
        groups["head"].append((k, "head.", None))
    return groups


def _source_depth(src: Source, i: int) -> int:
    if src.spec is not None:
        return src.spec.stages[i].depth if i < len(src.spec.stages) else 0
    found = {int(m.group(1)) for k in src.state
             for m in [re.match(rf"^stages\.{i}\.blocks\.(\d+)\.", k)] if m}
    return max(found) + 1 if found else 0


def inherit(model: nn.Module, mappings: Sequence[str], depth: str = "first") -> InheritReport:
    """Copy the tensors of ``mappings``' sources into ``model`` where role, kind and shape
    match; returns the report (nothing is copied if a source cannot be opened)."""
    if depth not in DEPTH_MODES:
        raise InheritError(f"--inherit-depth must be one of {', '.join(DEPTH_MODES)}")
    spec: ModelSpec = model.spec
    n = len(model.stages)
    plan = plan_parts(mappings, n)
    target = model.state_dict()
    sources: Dict[str, Source] = {}
    for arg in dict.fromkeys(plan.values()):  # first-seen order, each opened once
        sources[arg] = open_source(arg, target)
    groups = _group_keys(model)
    updates: Dict[str, torch.Tensor] = {}
    reports: List[PartReport] = []
    for part, entries in groups.items():
        arg = plan.get(part)
        rep = PartReport(part, arg)
        reports.append(rep)
        if arg is None:
            rep.tensors = [TensorFate(k, "new", reason="no source given",
                                      shape=tuple(target[k].shape)) for k, _, _ in entries]
            continue
        src = sources[arg]
        i = int(part[5:]) if part.startswith("stage") else None
        if src.spec is None:
            rep.notes.append("the source has no spec: tensors matched by role and shape "
                             "only (parameter-free mixers such as identity and pooling "
                             "cannot be told apart)")
        src_stages = len(src.spec.stages) if src.spec is not None else None
        block_map: Dict[int, Optional[int]] = {}
        block_why: Dict[int, Optional[str]] = {}
        ds_why: Optional[str] = None
        no_stage = False
        if i is not None:
            if src_stages is not None and i >= src_stages:
                ds_why, no_stage = f"the source has {src_stages} stages", True
            elif src.spec is not None:
                mine, theirs = _downsample_sig(_downsample_of(spec, i)), _downsample_sig(
                    _downsample_of(src.spec, i))
                if mine != theirs:
                    ds_why = f"downsampling {mine} (source: {theirs})"
            d_src = _source_depth(src, i)
            d_tgt = spec.stages[i].depth
            if d_src and d_tgt > d_src:
                rep.notes.append(
                    f"{d_tgt} blocks, the source stage has {d_src}: " +
                    ("blocks repeat the source's cyclically" if depth == "repeat"
                     else f"blocks {d_src}..{d_tgt - 1} are new (--inherit-depth repeat "
                          "reuses the source's)"))
            elif d_tgt < d_src:
                rep.notes.append(f"{d_tgt} blocks, the source stage has {d_src}: the first "
                                 f"{d_tgt} are taken")
            for j in range(d_tgt):
                js = j if j < d_src else (j % d_src if depth == "repeat" and d_src else None)
                block_map[j] = js
                if js is None:
                    block_why[j] = (f"the source stage has {d_src} blocks" if d_src
                                    else ds_why if no_stage else "the source has no such stage")
                elif src.spec is not None:
                    block_why[j] = _sig_difference(_block_sig(spec, i, j),
                                                   _block_sig(src.spec, i, js))
                else:
                    block_why[j] = None
        head_why = None
        if part == "head" and src.spec is not None and src.spec.num_classes != spec.num_classes:
            head_why = f"{spec.num_classes} classes, the source has {src.spec.num_classes}"
        head_kind = None
        if part == "head" and src.spec is not None:
            mine, theirs = call_text(spec.head, "head"), call_text(src.spec.head, "head")
            if mine != theirs:
                head_kind = f"head {mine} (source: {theirs})"
        for key, prefix, j in entries:
            shape = tuple(target[key].shape)
            rel = key[len(prefix):]
            if j is not None:
                js = block_map.get(j)
                skey = None if js is None else f"stages.{i}.blocks.{js}.{rel}"
                why = block_why.get(j)
            elif part == "head":
                skey, why = key, head_kind
                if why is None and head_why is not None and rel.startswith("fc"):
                    why = head_why
            else:
                skey, why = (None if no_stage else key), ds_why
            if why is None and skey is not None and skey not in src.state:
                why = f"the source has no {skey}"
            if why is None and skey is not None:
                v = src.state[skey]
                if tuple(v.shape) != shape:
                    rep.tensors.append(TensorFate(key, "mismatch", skey,
                                                  f"shape {list(shape)}, source {list(v.shape)}",
                                                  shape, tuple(v.shape)))
                    continue
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    rep.tensors.append(TensorFate(key, "mismatch", skey,
                                                  "the source's values are not finite", shape))
                    continue
                updates[key] = v
                rep.tensors.append(TensorFate(key, "copied", skey, shape=shape))
                continue
            status = "new" if skey is None else "mismatch"
            if status == "mismatch" and why and why.startswith("the source has no "):
                status = "new"
            rep.tensors.append(TensorFate(key, status, skey if status == "mismatch" else None,
                                          why, shape))
    # A module is taken whole or not at all: a classifier whose weight does not fit keeps
    # its fresh bias too (a bias trained for other inputs is not a head).
    for rep in reports:
        bad = {t.key.rsplit(".", 1)[0]: t.key for t in rep.tensors if t.status == "mismatch"}
        for t in rep.tensors:
            owner = t.key.rsplit(".", 1)[0]
            if t.status == "copied" and owner in bad:
                t.status, t.reason = "mismatch", f"{bad[owner]} of the same module did not fit"
                updates.pop(t.key, None)
    with torch.no_grad():
        for k, v in updates.items():
            target[k].copy_(v.to(target[k].dtype))
    return InheritReport(reports, list(sources.values()), depth)
