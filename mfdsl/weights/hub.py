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

from ..ckptformats.weights import (CheckpointError, LoadReport, detect_format,
                                   load_checkpoint, read_state_dict)
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
    """Raise WeightsError when the release's context contradicts the spec's. To start a
    fine-tune (``purpose="init"``), an ImageNet-21K head fits a 1000-class spec (loaded
    through the official class map, :mod:`mfdsl.ckptformats.in21k`)."""
    from ..ckptformats.in21k import IN1K_CLASSES, IN21K_CLASSES

    remapped = purpose == "init" and (release.num_classes, spec.num_classes) == (IN21K_CLASSES, IN1K_CLASSES)
    if release.num_classes != spec.num_classes and not remapped:
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


def cached_path(release: Release) -> Optional[str]:
    """The release's file in the hub cache, or None when it is not there (nothing is
    downloaded or asked online)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    found = try_to_load_from_cache(release.repo_id, release.filename, cache_dir=hub_cache_dir())
    return found if isinstance(found, str) and os.path.isfile(found) else None


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
    verify_file(path, release, offline=offline)
    return path


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_blob_digests(path: str) -> Optional[list]:
    """sha256 names of the blobs in ``path``'s hub-cache repository whose size is the
    file's (None when ``path`` is not inside a hub cache's snapshots/ folder)."""
    parts = os.path.abspath(path).split(os.sep)
    if "snapshots" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("snapshots")
    blobs = os.sep.join(parts[:i] + ["blobs"])
    if not os.path.isdir(blobs):
        return None
    size = os.path.getsize(path)
    out = []
    for name in os.listdir(blobs):
        p = os.path.join(blobs, name)
        if _SHA256.match(name) and os.path.isfile(p) and os.path.getsize(p) == size:
            out.append(name)
    return out


def _hub_etag(release: Release) -> Optional[str]:
    """The hub's sha256 of the release's file (its LFS etag), asked online; None if unknown."""
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        meta = get_hf_file_metadata(hf_hub_url(release.repo_id, release.filename), timeout=10)
    except Exception:  # offline, or the hub does not answer: other sources decide
        return None
    etag = (meta.etag or "").strip('"').lower()
    return etag if _SHA256.match(etag) else None


def verify_file(path: str, release: Release, *, offline: Optional[bool] = None) -> str:
    """Check the file's content (its sha256, computed on the bytes read) against what is
    known of the release, whatever the cache layout; returns the sha256.

    Known digests: the cached blob's name (the hub's LFS object id) when ``path`` links to
    one; otherwise the sha256-named blobs of the cache with the file's size (a cache copied
    with ``cp -L``/``rsync -L``); otherwise, online, the hub's etag; and the table's pinned
    sha256 always. A file none of these covers is used with a note saying so.
    """
    got = _sha256(path)
    real = os.path.realpath(path)
    blob = os.path.basename(real)
    offline = hub_offline() if offline is None else offline
    checks = []  # (digest wanted, where it comes from)
    if _SHA256.match(blob):
        checks.append(([blob], "the hub says"))
    else:
        cands = _cache_blob_digests(path)
        if cands:
            checks.append((cands, "the hub's objects of that size in the cache are"))
        elif not offline:
            etag = _hub_etag(release)
            if etag:
                checks.append(([etag], "the hub says"))
    if release.sha256:
        checks.append(([release.sha256], "the pinned sha256 of the release is"))
    for wants, where in checks:
        if got not in wants:
            raise WeightsError(
                f"{release.name}: the cached file {real} is corrupt: its sha256 is {got}, "
                f"{where} {', '.join(wants)}; delete it and download again")
    if not checks:
        import sys

        print(f"note: {release.name}: {real} could not be checked against the hub (a plain "
              f"file in the cache, offline, no pinned digest); its sha256 is {got}",
              file=sys.stderr)
    return got


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
