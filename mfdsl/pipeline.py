"""The pipeline without released weights: source file -> IR -> checks -> nn.Module.

:mod:`mfdsl.api` adds released weights on top; modules below the API (weight inheritance)
use this one, so nothing imports the API from below."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import torch.nn as nn

from .checks import check
from .errors import SpecError
from .ir import ModelSpec, with_overrides
from .plugins import load_plugins
from .size_limits import check_size_limits

SpecLike = Union[str, "os.PathLike[str]", ModelSpec]

# The largest spec file read: the zoo's biggest spec is a few KiB; a bound keeps a huge or
# endless file (/dev/zero) from exhausting memory.
MAX_SPEC_BYTES = 4 * 1024 * 1024


def load_spec(path: Union[str, "os.PathLike[str]"]) -> ModelSpec:
    """Parse a ``.mf`` or ``.yaml``/``.yml`` file into the IR (syntax and schema only)."""
    path = os.fspath(path)
    text, ext = read_spec_text(path)
    if ext == ".mf":
        from .frontend.mf import parse_mf

        spec = parse_mf(text, path)
    else:
        from .frontend.yaml_spec import parse_yaml

        spec = parse_yaml(text, path)
    spec.source = path
    return spec


def read_spec_text(path: str) -> Tuple[str, str]:
    """The text of a ``.mf`` or ``.yaml``/``.yml`` file and its extension; SpecError if it
    cannot be read as one."""
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        raise SpecError("is a folder, not a spec file", path=path,
                        hint="name a .mf or .yaml file in it")
    if ext not in (".mf", ".yaml", ".yml"):
        raise SpecError(f"unknown spec file type '{ext or path}'", path=path,
                        hint="use a .mf or .yaml file")
    from .fsio import UnsafePathError, read_regular

    try:
        raw = read_regular(path, MAX_SPEC_BYTES, "spec file")
    except UnsafePathError as exc:
        raise SpecError(str(exc), path=path) from None
    except FileNotFoundError:
        raise SpecError("no such spec file", path=path) from None
    except IsADirectoryError:
        raise SpecError("is a directory, not a spec file", path=path) from None
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror}", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        from .errors import Loc

        raise SpecError("the file is not valid UTF-8 text", Loc(path, line, col)) from None
    # Editors on Windows start UTF-8 files with a byte-order mark; it is not content.
    return (text[1:] if text.startswith("\ufeff") else text), ext


def check_spec(spec: SpecLike, *, size_limits: bool = True) -> ModelSpec:
    """Load (if a path), run every semantic check, then the size limits (unless
    ``size_limits=False``); raises SpecError."""
    load_plugins()
    if not isinstance(spec, ModelSpec):
        spec = load_spec(spec)
    check(spec)
    if size_limits:
        check_size_limits(spec)
    return spec


def check_at_img_size(spec: ModelSpec, img_size: Optional[Tuple[int, int]],
                      option: Optional[str] = None) -> ModelSpec:
    """Check ``spec``, at ``img_size`` if one was given on the command line (``--img-size``).

    An error the size causes is the option's, not the file's: one located at the file's
    `input` line, or any error of a spec that is valid at its own size (a kernel larger than
    a feature map the new size makes), is re-attributed to --img-size (with no source
    line), since pointing into a file that is right would mislead. ``option`` is how the
    size was given (default ``--img-size HxW``).
    """
    if img_size is None:
        return check_spec(spec)
    written = spec.loc("img_size")
    try:
        return check_spec(with_overrides(spec, img_size=img_size))
    except SpecError as err:
        blame = err.loc is not None and err.loc == written
        if not blame:
            try:
                check_spec(spec)
                blame = True  # valid as written: the new size is the cause
            except SpecError:
                pass  # the file's own error: reported where it is
        if blame:
            option = option or f"--img-size {img_size[0]}x{img_size[1]}"
            raise SpecError(f"{option}: {err.message}",
                            path=err.path, hint=err.hint) from None
        raise


def lower_checked(spec: SpecLike, target: str = "cpu", *, check_sizes: bool = True,
                  variants: Optional[Sequence[str]] = None) -> nn.Module:
    """Check a spec (or spec file) and lower it to a MetaFormer ``nn.Module``
    (``variants``: see :func:`mfdsl.lower.lower`)."""
    from .lower import lower

    return lower(check_spec(spec, size_limits=check_sizes), target=target, variants=variants)
