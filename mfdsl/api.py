"""The public pipeline: source file -> IR -> checks -> nn.Module, with released weights."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch.nn as nn

from .pipeline import MAX_SPEC_BYTES, SpecLike, check_spec, load_spec, lower_checked

__all__ = ["MAX_SPEC_BYTES", "SpecLike", "build_model", "check_spec", "load_spec"]


def build_model(spec: SpecLike, target: str = "cpu", *, check_sizes: bool = True,
                pretrained: Union[bool, str, None] = None,
                variants: Optional[Sequence[str]] = None) -> nn.Module:
    """Check and lower a spec (or spec file) to a MetaFormer ``nn.Module`` on the CPU.

    ``pretrained``: True (the spec's released ImageNet weights), a tag
    (``"sail_in22k_ft_in1k"``) or a release name (``"caformer_s18.sail_in1k"``): fetched
    through the Hugging Face cache, verified, loaded strictly; the model's
    ``pretrained_cfg`` becomes the release's. Raises ``mfdsl.weights.WeightsError``.
    ``variants``: the speed variants to lower with, instead of ``target``'s eager set
    (:func:`mfdsl.lower.lower`).
    """
    if pretrained is None or pretrained is False:
        return lower_checked(spec, target=target, check_sizes=check_sizes, variants=variants)
    from .lower import lower

    spec = check_spec(spec, size_limits=check_sizes)
    from .weights import apply_release_context, load_release, resolve_release

    release = resolve_release(spec, pretrained, purpose="eval")
    spec, _ = apply_release_context(spec, release)
    model = lower(spec, target=target, variants=variants)
    load_release(model, release)
    model.pretrained_cfg = dict(model.pretrained_cfg, release=release.name,
                                hf_hub_id=release.repo_id, file=release.filename)
    return model
