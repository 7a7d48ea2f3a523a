"""mfdsl models in timm's registry: ``import mfdsl.timm`` and every zoo spec is a timm model.

    import timm, mfdsl.timm
    model = timm.create_model("mfdsl_caformer_s18", pretrained=True)
    backbone = timm.create_model("mfdsl_hybrid_gfnet_caformer", features_only=True,
                                 out_indices=(1, 2, 3))
    mfdsl.timm.register("my_hybrid.mf")          # -> "mfdsl_my_hybrid"

Entry points go through timm's ``register_model`` and ``build_model_with_cfg``, so
``features_only`` gives timm's ``FeatureGetterNet`` (over ``forward_intermediates``, which
returns NCHW maps; the stage modules themselves run channels-last, so timm's module-walking
``FeatureListNet`` does not fit them). ``pretrained=True`` (or a tag, ``mfdsl_caformer_s18
.sail_in22k_ft_in1k``) loads the release from mfdsl's table (:mod:`mfdsl.weights`), verified,
through the local Hugging Face cache; it never uses timm's downloader.

Keyword arguments a timm model takes: ``num_classes`` (0: no classifier; with pretrained
weights a different count gets a new, untrained head, as in timm), ``global_pool``,
``drop_path_rate`` and ``drop_rate`` (default 0 like a timm model, not the spec's recipe:
timm's train.py passes its own), ``in_chans`` (not with pretrained weights), ``device``,
``dtype``.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn

from .ir import ModelSpec, RecipeSpec, with_overrides
from .pipeline import SpecLike, check_spec, load_spec
from .resources import zoo_dir

PREFIX = "mfdsl_"

__all__ = ["PREFIX", "register", "register_zoo", "create"]

# model name -> the spec source it builds (a path or a ModelSpec)
_SOURCES: Dict[str, SpecLike] = {}


def _spec_for_timm(spec: ModelSpec, in_chans: Optional[int], drop_path_rate: Optional[float],
                   drop_rate: Optional[float]) -> ModelSpec:
    recipe = spec.recipe if spec.recipe is not None else RecipeSpec()
    recipe = with_overrides(recipe, drop_path=float(drop_path_rate or 0.0),
                            head_dropout=float(drop_rate or 0.0))
    changes: Dict[str, Any] = dict(recipe=recipe)
    if in_chans is not None:
        changes["in_chans"] = int(in_chans)
    return with_overrides(spec, **changes)


def _build(spec: ModelSpec, which: Union[bool, str], *, num_classes: Optional[int] = None,
           in_chans: Optional[int] = None, global_pool: Optional[str] = None,
           drop_path_rate: Optional[float] = None, drop_rate: Optional[float] = None,
           device: Any = None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The model timm's build_model_with_cfg instantiates (its ``model_cls``)."""
    from .api import build_model
    from .layers.contract import check_global_pool

    if which and in_chans is not None and in_chans != spec.in_chans:
        raise ValueError(f"in_chans={in_chans}: released weights take {spec.in_chans}-channel "
                         "images; build without pretrained weights for another count")
    spec = _spec_for_timm(spec, in_chans, drop_path_rate, drop_rate)
    if not which and num_classes:
        spec = with_overrides(spec, num_classes=int(num_classes))
    model = build_model(spec, pretrained=which or None)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(int(num_classes))
    if global_pool is not None:
        model.head.global_pool = check_global_pool(global_pool)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def create(name: str, pretrained: bool = False,
           pretrained_cfg: Union[str, Dict[str, Any], None] = None,
           pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
           **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` as timm's entry point does (timm.create_model
    calls this); ``pretrained_cfg`` a str is a release tag (``name.tag`` in create_model)."""
    from timm.models import PretrainedCfg, build_model_with_cfg

    from .weights import WeightsError, fetch, resolve_release

    kwargs.pop("cache_dir", None)  # mfdsl reads the Hugging Face cache itself (HF_HOME)
    source = _SOURCES[name]
    spec = check_spec(source if isinstance(source, ModelSpec) else load_spec(source))
    tag = pretrained_cfg if isinstance(pretrained_cfg, str) else None
    which: Union[bool, str] = (tag or True) if pretrained else False
    release = None
    n = kwargs.get("num_classes")
    if which and n and n != spec.num_classes:
        # A release with the asked-for head (sail_in22k with num_classes=21841) loads whole;
        # otherwise the backbone loads and the classifier is new, as in timm.
        try:
            wide = with_overrides(spec, num_classes=int(n))
            release, spec = resolve_release(wide, which, purpose="eval"), wide
        except WeightsError:
            pass
    if which and release is None:
        release = resolve_release(spec, which, purpose="eval")
    if release is not None:
        fetch(release)  # a missing or corrupt file is reported before anything is built
    if isinstance(pretrained_cfg, PretrainedCfg):
        pretrained_cfg = pretrained_cfg.to_dict()
    user_cfg = pretrained_cfg if isinstance(pretrained_cfg, dict) else None

    if kwargs.get("features_only"):
        fc = kwargs.get("feature_cls", "getter")
        if not (fc == "getter" or (isinstance(fc, type) and fc.__name__ == "FeatureGetterNet")):
            raise ValueError(
                f"feature_cls={fc!r}: mfdsl models give features through "
                "forward_intermediates (feature_cls='getter', the default here); their stage "
                "modules run channels-last, which timm's module-walking extractors would "
                "return as is")
        kwargs["feature_cls"] = "getter"
    n_stages = len(spec.stages)

    def model_cls(**kw: Any) -> nn.Module:
        return _build(spec, release.name if release is not None else False, **kw)

    # The cfg describes the model before timm's wrapper: build it from the spec's eval
    # settings and the release (build_model_with_cfg reads num_classes / in_chans from it).
    probe_cfg: Dict[str, Any] = dict(
        architecture=name, input_size=(spec.in_chans, *spec.img_size),
        crop_pct=spec.eval.crop_pct, interpolation=spec.eval.interpolation,
        mean=tuple(spec.eval.mean), std=tuple(spec.eval.std), num_classes=spec.num_classes,
        pool_size=tuple(spec.stage_resolutions()[-1]), first_conv="stem.conv",
        classifier="head.fc")
    if release is not None:
        probe_cfg.update(release.pretrained_cfg(), tag=release.tag, hf_hub_id=release.repo_id,
                         hf_hub_filename=release.filename)
    cfg = dict(probe_cfg, **(user_cfg or {}))
    return build_model_with_cfg(
        model_cls, name, pretrained=False,  # weights: loaded by _build from mfdsl's table
        pretrained_cfg=cfg, pretrained_cfg_overlay=pretrained_cfg_overlay,
        feature_cfg=dict(out_indices=tuple(range(n_stages))), **kwargs)


def _entry_point(name: str) -> Callable[..., nn.Module]:
    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"timm entry point of the mfdsl model {name}."
    return entry


def register(spec: SpecLike, name: Optional[str] = None) -> str:
    """Register a spec (a ``.mf``/``.yaml`` path or a ModelSpec) with timm as ``name``
    (default ``mfdsl_<spec name>``); returns the name for ``timm.create_model``.

    The spec is checked now (a SpecError here, not at create time); a file is read again at
    each create, so edits to it take effect. Registering a name again replaces it."""
    from timm.models import register_model

    checked = check_spec(spec if isinstance(spec, ModelSpec) else load_spec(spec))
    name = name or PREFIX + checked.name
    if not name.isidentifier():
        raise ValueError(f"model name {name!r} must be a Python identifier (timm registers "
                         "entry points by function name)")
    source: SpecLike = spec if isinstance(spec, ModelSpec) else os.fspath(spec)
    if name in _SOURCES and _SOURCES[name] == source:
        return name
    _SOURCES[name] = source
    entry = _entry_point(name)
    setattr(sys.modules[__name__], name, entry)
    register_model(entry)
    return name


def register_zoo() -> List[str]:
    """Register every spec of the zoo as ``mfdsl_<file stem>``; returns the names."""
    from timm.models import register_model

    names = []
    for path in sorted(zoo_dir().glob("*.mf")):
        name = PREFIX + path.stem
        if name not in _SOURCES:
            # the zoo's files are checked by its own tests; reading them all here would
            # make the import slow, so each is checked when it is created
            _SOURCES[name] = str(path)
            entry = _entry_point(name)
            setattr(sys.modules[__name__], name, entry)
            register_model(entry)
        names.append(name)
    return names


try:
    import timm as _timm  # noqa: F401  (the package, not this module)
except ImportError as exc:  # pragma: no cover - timm is a dependency of this module only
    raise ImportError("mfdsl.timm needs timm (pip install timm)") from exc

register_zoo()
