"""What a weights argument names: a file, a run folder, or a released checkpoint.

One resolver for every option that takes trained weights (``--init-from``,
``finetune_from``, ``--inherit``, ``--checkpoint``), so each reads a name the same way:

1. an existing folder is a run folder (or its ``checkpoints/``), meaning its checkpoint of
   the first of ``run_stems`` present (``last``, or ``best`` before ``last``);
2. an existing file is itself;
3. otherwise a release name ``<model>.<tag>``; with a spec, a bare tag of the spec's zoo
   model; with ``default_tag``, a zoo model name meaning that tag.

Callers word their own refusals (each names its option), from what this returns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

from .. import runs
from ..ir import ModelSpec
from .releases import DEFAULT_TAG, RELEASES, Release, zoo_model_of

FILE, RUN, RELEASE = "file", "run", "release"
__all__ = ["DEFAULT_TAG", "FILE", "RUN", "RELEASE", "WeightsSource", "cache_note", "refusal",
           "require_weights", "resolve_weights", "spec_relative"]


@dataclass(frozen=True)
class WeightsSource:
    arg: str  # as the user wrote it
    kind: str  # FILE | RUN | RELEASE
    path: Optional[str] = None  # the weights file; None for a run folder without one
    run: Optional[str] = None  # the run folder it belongs to, when it is a run's
    release: Optional[Release] = None

    @property
    def ref(self) -> str:
        """What loading takes: the weights file, or the release's full name."""
        return self.release.name if self.release is not None else (self.path or self.arg)


def resolve_weights(arg: str, *, run_stems: Sequence[str] = (runs.LAST,),
                    spec: Optional[ModelSpec] = None,
                    default_tag: Optional[str] = None) -> Optional[WeightsSource]:
    """What ``arg`` names (see the module doc); None when it names nothing."""
    if os.path.isdir(arg):
        folder = runs.run_folder_of_path(arg)
        for stem in run_stems:
            # A run folder, its checkpoints/, or any folder holding the stem's file.
            for path in (runs.weights_file(folder, stem),
                         os.path.join(arg, stem + runs.WEIGHTS_EXT)):
                if os.path.isfile(path):
                    return WeightsSource(arg, RUN, path, folder)
        return WeightsSource(arg, RUN, None, folder)
    if os.path.exists(arg):
        run = runs.run_folder_of_path(arg) if runs.in_checkpoints_dir(arg) else None
        return WeightsSource(arg, FILE, arg, run)
    names = [arg]
    if spec is not None and "." not in arg:
        names.append(f"{zoo_model_of(spec.name)}.{arg}")
    if default_tag is not None:
        names.append(f"{arg}.{default_tag}")
    for name in names:
        if name in RELEASES:
            return WeightsSource(arg, RELEASE, release=RELEASES[name])
    return None


def refusal(option: str, arg: str, found: Optional[WeightsSource],
            run_stems: Sequence[str] = (runs.LAST,), releases: bool = True) -> str:
    """What ``option ARG`` says when ``arg`` names no weights (``found``: what
    :func:`resolve_weights` returned for it)."""
    if found is not None and found.kind == RUN and found.path is None:
        want = " or ".join(f"{runs.CHECKPOINTS_DIR}/{s}{runs.WEIGHTS_EXT}" for s in run_stems)
        return f"{option} {arg}: a folder without {want} (a run folder is expected)"
    where = ""
    if not os.path.isabs(arg) and (os.sep in arg or "/" in arg or arg.startswith(".")):
        where = f" in {os.getcwd()} (the working directory)"
    if releases:
        return (f"{option} {arg}: no such file or folder{where}, and not a known release name "
                "(expected a weights file, a run folder, or a release from `mfdsl weights "
                "list`)")
    return (f"{option} {arg}: no such file or folder{where} (expected a weights file or a run "
            "folder)")


def require_weights(arg: str, option: str, error: Callable[[str], Exception], *,
                    run_stems: Sequence[str] = (runs.LAST,), spec: Optional[ModelSpec] = None,
                    default_tag: Optional[str] = None, releases: bool = True,
                    hint: str = "") -> WeightsSource:
    """What ``arg`` names, or ``error`` raised with :func:`refusal`'s message (and
    ``hint`` after it) when it names no weights file and no release."""
    found = resolve_weights(arg, run_stems=run_stems, spec=spec, default_tag=default_tag)
    if found is None or (found.path is None and found.release is None):
        raise error(refusal(option, arg, found, run_stems, releases) + hint)
    return found


def cache_note(arg: str, default_tag: Optional[str] = DEFAULT_TAG) -> Dict[str, str]:
    """``{"note": ...}`` when ``arg`` names a release (as :func:`resolve_weights` reads it;
    a zoo model's name means its ``default_tag`` release) whose file is not in the Hugging
    Face cache: the run will download it, or, offline, stop when it loads it. Else ``{}``.
    Asks nothing online: a dry run can say it before the run finds out."""
    found = resolve_weights(arg, default_tag=default_tag)
    release = found.release if found is not None else None
    if release is None:
        return {}
    from .hub import cached_path, hub_cache_dir, hub_offline

    if cached_path(release) is not None:
        return {}
    if hub_offline():
        return {"note": f"{release.name} is not in the Hugging Face cache ({hub_cache_dir()}) "
                        "and HF_HUB_OFFLINE is set: the run will stop when it loads the "
                        f"weights; run once with network access to download {release.url}"}
    return {"note": f"{release.name} is not in the Hugging Face cache ({hub_cache_dir()}): "
                    f"the run downloads it first ({release.url})"}


def spec_relative(arg: str, spec_source: Optional[str]) -> Tuple[str, Optional[str]]:
    """``finetune_from ARG`` written in the spec file ``spec_source``: a relative path that
    exists in the spec file's folder means that file or folder, as an include would (the
    folder comes first, then the working directory). Returns (the path to use, the folder
    it was resolved against, or None when ``arg`` is used as written)."""
    if not spec_source or os.path.isabs(arg) or arg in RELEASES:
        return arg, None
    folder = os.path.dirname(os.path.abspath(spec_source))
    candidate = os.path.normpath(os.path.join(folder, arg))
    if os.path.exists(candidate) and os.path.abspath(arg) != candidate:
        return candidate, folder
    return arg, None
