"""Released weights by name: resolve against a spec, download into the Hugging Face cache,
verify, load.

Downloads go through ``huggingface_hub`` into its cache (``HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), read from the environment at call
time. With ``HF_HUB_OFFLINE=1`` only the cache is used. What comes back is verified before
it is used: the file's sha256 against the hub's (the LFS object id that names the cached
blob) and against a pinned one where the table has it, its key layout, and a strict load
into the spec's model (every tensor present, every shape right).
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Optional, Tuple, Union

import torch.nn as nn

from ..checkpoint import (CheckpointError, LoadReport, detect_format, load_checkpoint,
                          read_state_dict)
from ..ir import ModelSpec, with_overrides
from .releases import (DEFAULT_TAG, RELEASES, Release, lookup, releases_for, zoo_model_of)

Which = Union[bool, str, None]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class WeightsError(CheckpointError):
    """Released weights that cannot be named, fetched, verified or used with this spec."""

    label = "weights"


# --- naming ---------------------------------------------------------------------------

def resolve_release(spec: ModelSpec, which: Which = True, *, purpose: str = "eval") -> Release:
    """The release ``which`` names for ``spec``: True/"" (the spec's default), a tag
    (``sail_in22k_ft_in1k``) or a full name (``caformer_s18.sail_in22k_ft_in1k``).

    ``purpose="eval"`` requires the release's image size and classes to be the spec's;
    ``"init"`` (a starting point for training) only its classes.
    """
    if which is None or which is False:
        raise WeightsError("no release named")
    arch = zoo_model_of(spec.name)
    if which is True or which in ("", "default"):
        own = releases_for(spec.name)
        if not own:
            raise WeightsError(
                f"spec '{spec.name}' names no released weights: released ImageNet weights "
                f"exist for the zoo models ({_families()}); name one, e.g. "
                "--pretrained caformer_s18.sail_in1k, or use --inherit to start a new "
                "architecture from one")
        fits = [r for r in own if r.img_size == tuple(spec.img_size)
                and r.num_classes == spec.num_classes]
        fits.sort(key=lambda r: (not r.tag.startswith(DEFAULT_TAG), r.tag))
        if not fits:
            raise WeightsError(
                f"no release of {arch} is for a {spec.img_size[0]}x{spec.img_size[1]}, "
                f"{spec.num_classes}-class model (releases: "
                f"{', '.join(_describe(r) for r in own)})")
        release = fits[0]
    else:
        name = which if "." in which else f"{arch}.{which}"
        try:
            release = lookup(name)
        except KeyError as exc:
            raise WeightsError(f"unknown release {exc.args[0]}; `mfdsl weights list` shows "
                               "them all") from None
    check_fits(release, spec, purpose)
    return release


def check_fits(release: Release, spec: ModelSpec, purpose: str = "eval") -> None:
    """Raise WeightsError when the release's context contradicts the spec's."""
    if release.num_classes != spec.num_classes:
        raise WeightsError(
            f"{release.name} has a {release.num_classes}-class head; spec '{spec.name}' has "
            f"{spec.num_classes} classes (use --inherit {release.name} to start from its "
            "other weights with a new head)")
    if purpose == "eval" and release.img_size != tuple(spec.img_size):
        h, w = release.img_size
        hint = (f"use specs/{release.model}_384.mf" if h == 384
                else f"use specs/{release.model}.mf")
        raise WeightsError(
            f"{release.name} was trained and is evaluated at {h}x{w}; spec '{spec.name}' is "
            f"{spec.img_size[0]}x{spec.img_size[1]} ({hint}, or --init-from it to fine-tune "
            "at another size)")


def apply_release_context(spec: ModelSpec, release: Release) -> Tuple[ModelSpec, list]:
    """The spec with the release's evaluation transform (crop_pct, interpolation,
    mean/std), and a note for each value that changed."""
    ev = spec.eval
    notes = []
    def plain(v):
        return tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else v

    for name in ("crop_pct", "interpolation", "mean", "std"):
        mine, theirs = plain(getattr(ev, name)), plain(getattr(release, name))
        if mine != theirs:
            notes.append(f"{name}: the spec says {mine}, {release.name} was made with {theirs}"
                         " (used)")
    if not notes:
        return spec, notes
    new_eval = with_overrides(ev, crop_pct=release.crop_pct,
                              interpolation=release.interpolation,
                              mean=tuple(release.mean), std=tuple(release.std))
    return with_overrides(spec, eval=new_eval), notes


def _describe(r: Release) -> str:
    return f"{r.name} ({r.img_size[0]}px, {r.num_classes} classes)"


def _families() -> str:
    fams = sorted({r.model.split("_")[0] for r in RELEASES.values()})
    return ", ".join(fams)


# --- the cache ------------------------------------------------------------------------

def _truthy(v: Optional[str]) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> str:
    """huggingface_hub's cache folder, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(os.path.expanduser(xdg), "huggingface", "hub")


def fetch(release: Union[Release, str], *, offline: Optional[bool] = None) -> str:
    """Path of the release's file in the hub cache, downloaded if needed, verified."""
    if isinstance(release, str):
        try:
            release = lookup(release)
        except KeyError as exc:
            raise WeightsError(f"unknown release {exc.args[0]}") from None
    offline = hub_offline() if offline is None else offline
    cache = hub_cache_dir()
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise WeightsError("released weights need the huggingface_hub package "
                           "(pip install huggingface_hub)") from None
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = hf_hub_download(release.repo_id, release.filename, cache_dir=cache,
                               local_files_only=offline)
    except LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE is set" if offline
               else "the hub could not be reached")
        raise WeightsError(
            f"{release.name}: not in the Hugging Face cache ({cache}) and {why}; run once "
            f"with network access to download {release.url} (or copy a cache that has it)"
        ) from None
    except Exception as exc:  # HTTP errors, a repository or file that does not exist
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{release.name}: download of {release.url} failed: "
                           f"{type(exc).__name__}: {text[:300]}") from None
    verify_file(path, release)
    return path


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str, release: Release) -> None:
    """The file's bytes against the hub's sha256 (the cached blob's name, for LFS files)
    and the table's pinned sha256 if any."""
    blob = os.path.basename(os.path.realpath(path))
    expected = [s for s in (blob if _SHA256.match(blob) else None, release.sha256) if s]
    if not expected:
        return
    got = _sha256(path)
    for want in expected:
        if got != want:
            raise WeightsError(
                f"{release.name}: the cached file {os.path.realpath(path)} is corrupt: its "
                f"sha256 is {got}, the hub says {want}; delete it and download again")


# --- loading --------------------------------------------------------------------------

def load_release(model: nn.Module, release: Release, *, strict: bool = True) -> LoadReport:
    """Fetch, verify and load a release into ``model`` (strict: every key, every shape)."""
    path = fetch(release)
    sd, _, _ = read_state_dict(path)
    fmt = detect_format(sd)
    if fmt != release.layout:
        raise WeightsError(f"{release.name}: {path} has the {fmt} key layout, the release is "
                           f"published in the {release.layout} layout; the file is not the "
                           "release")
    head = sd.get("head.fc.fc2.weight", sd.get("head.fc2.weight",
                  sd.get("head.fc.weight", sd.get("head.weight"))))
    if head is not None and head.shape[0] != release.num_classes:
        raise WeightsError(f"{release.name}: the file's classifier has {head.shape[0]} "
                           f"classes, the release {release.num_classes}; the file is not "
                           "the release")
    try:
        report = load_checkpoint(model, sd, strict=strict)
    except CheckpointError as exc:
        raise WeightsError(f"{release.name} does not fit this model:\n{exc}") from None
    report.source = f"{release.name} ({path})"
    return report
