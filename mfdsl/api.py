"""The public pipeline: source file -> IR -> checks -> nn.Module."""
from __future__ import annotations

import os
from typing import Union

import torch.nn as nn

from .checks import check
from .errors import SpecError
from .ir import ModelSpec

SpecLike = Union[str, "os.PathLike[str]", ModelSpec]

# The largest spec file read: the zoo's biggest spec is a few KiB; a bound keeps a huge or
# endless file (/dev/zero) from exhausting memory.
MAX_SPEC_BYTES = 4 * 1024 * 1024


def load_spec(path: Union[str, "os.PathLike[str]"]) -> ModelSpec:
    """Parse a ``.mf`` or ``.yaml``/``.yml`` file into the IR (syntax and schema only)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
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
    text = text[1:] if text.startswith("\ufeff") else text
    if ext == ".mf":
        from .frontend.mf import parse_mf

        spec = parse_mf(text, path)
    else:
        from .frontend.yaml_spec import parse_yaml

        spec = parse_yaml(text, path)
    spec.source = path
    return spec


def check_spec(spec: SpecLike, **kw) -> ModelSpec:
    """Load (if a path) and run every semantic check; raises SpecError."""
    if not isinstance(spec, ModelSpec):
        spec = load_spec(spec)
    return check(spec, **kw)


def build_model(spec: SpecLike, target: str = "cpu", *, check_sizes: bool = True,
                pretrained: Union[bool, str, None] = None) -> nn.Module:
    """Check and lower a spec (or spec file) to a MetaFormer ``nn.Module`` on the CPU.

    ``pretrained``: True (the spec's released ImageNet weights), a tag
    (``"sail_in22k_ft_in1k"``) or a release name (``"caformer_s18.sail_in1k"``): fetched
    through the Hugging Face cache, verified, loaded strictly; the model's
    ``pretrained_cfg`` becomes the release's. Raises ``mfdsl.weights.WeightsError``.
    """
    from .lower import lower

    spec = check_spec(spec, size_limits=check_sizes)
    if pretrained is None or pretrained is False:
        return lower(spec, target=target)
    from .weights import apply_release_context, load_release, resolve_release

    release = resolve_release(spec, pretrained, purpose="eval")
    spec, _ = apply_release_context(spec, release)
    model = lower(spec, target=target)
    load_release(model, release)
    model.pretrained_cfg = dict(model.pretrained_cfg, release=release.name,
                                hf_hub_id=release.repo_id, file=release.filename)
    return model
