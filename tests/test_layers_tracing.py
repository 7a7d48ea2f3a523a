"""Every built-in component, speed variant and zoo spec through the graph tools that take a
timm backbone: ``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor`` and
``torch.jit.script`` (timm's caformer_s18 goes through all three), each against eager.

The cases come from the registry, the variant table and the zoo folder, so a new
component, variant or spec is covered without editing this file."""
from __future__ import annotations

import io
from typing import List

import pytest
import torch
import torch.fx
import torch.nn as nn

from mfdsl.api import build_model
from mfdsl.ir import ModelSpec, RecipeSpec, StageSpec, call, default_downsample, with_overrides
from mfdsl.layers.variants import VARIANTS, select_variants
from mfdsl.pipeline import load_spec
from mfdsl.registry import registry
from mfdsl.resources import zoo_dir

feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")

KINDS = ("mixer", "norm", "head", "activation")
COMPONENTS = [(kind, name) for kind in KINDS for name in registry.builtin_names(kind)]
# The ImageNet-21K specs build their model's architecture (tests/test_zoo_in21k.py): left out.
ZOO = sorted(p.name for p in zoo_dir().glob("*.mf") if "_in21" not in p.name)


def tiny_spec(kind: str = "", name: str = "", norm: str = "layernorm") -> ModelSpec:
    """Two stages at 64x64 with ``name`` in the place of its ``kind``; scales and drop path
    on, so every branch of a block runs."""
    parts = dict(mixer="attention", norm=norm, head="mlp", activation="starrelu")
    if kind:
        parts[kind] = name

    def stage(width: int, downsample=None) -> StageSpec:
        return StageSpec(depth=1, width=width, mixers=[call(parts["mixer"])],
                         norm=call(parts["norm"]), mlp_act=call(parts["activation"]),
                         layer_scale=0.5, res_scale=1.5, downsample=downsample)

    return ModelSpec(name="tiny", img_size=(64, 64), num_classes=5,
                     stages=[stage(32), stage(64, default_downsample())],
                     head=call(parts["head"]), recipe=RecipeSpec(drop_path=0.2))


@torch.no_grad()
def perturb_(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.1)


def seeded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(7)  # the same drop-path masks in every run
    return module(x)


def check_graph_tools(model: nn.Module, x: torch.Tensor) -> None:
    """symbolic_trace (train and eval), create_feature_extractor, torch.jit.script (and
    its save) give eager's outputs."""
    perturb_(model)
    stages = [f"stages.{i}" for i in range(len(model.stages))]
    scripted = torch.jit.script(model)
    for training in (True, False):
        model.train(training)
        want = seeded(model, x)
        traced = torch.fx.symbolic_trace(model)  # traced in one mode, for that mode
        torch.testing.assert_close(seeded(traced, x), want)
        torch.testing.assert_close(seeded(scripted.train(training), x), want)
    torch.jit.save(scripted, io.BytesIO())

    model.eval()  # feature maps: the stages' own (B, H, W, C) outputs
    extractor = feature_extraction.create_feature_extractor(model, stages)
    with torch.no_grad():
        got = extractor(x)
        want_maps: List[torch.Tensor] = model.forward_intermediates(
            x, output_fmt="NHWC", intermediates_only=True)
    assert list(got) == stages
    for g, w in zip(got.values(), want_maps):
        torch.testing.assert_close(g, w)


def image(spec: ModelSpec, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, spec.in_chans, *spec.img_size,
                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind,name", COMPONENTS, ids=[f"{k}-{n}" for k, n in COMPONENTS])
def test_every_builtin_component_traces_and_scripts(kind: str, name: str) -> None:
    spec = tiny_spec(kind, name)
    check_graph_tools(build_model(spec, target="reference"), image(spec))


def _model_using(variant: str) -> nn.Module:
    """A tiny model in which ``variant`` replaces at least one layer."""
    for spec in (tiny_spec(), tiny_spec("mixer", "sepconv", norm="modified_layernorm"),
                 tiny_spec("mixer", "pooling"), tiny_spec("mixer", "dwconv")):
        model = build_model(spec, target="reference")
        if select_variants(model, [variant]):
            return model
    raise AssertionError(f"no tiny model has a layer that {variant} applies to")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_speed_variant_traces_and_scripts(variant: str) -> None:
    check_graph_tools(_model_using(variant), image(tiny_spec()))


@pytest.mark.slow
@pytest.mark.parametrize("file", ZOO)
def test_every_zoo_spec_traces_and_scripts(file: str) -> None:
    """Each zoo spec at one block per listed mixer (the components and their arguments as
    written; depth changes no layer), with the CPU target's speed variants."""
    spec = load_spec(zoo_dir() / file)
    spec = with_overrides(spec, stages=[with_overrides(s, depth=len(s.mixers))
                                        for s in spec.stages])
    check_graph_tools(build_model(spec, target="cpu"), image(spec, batch=1))
