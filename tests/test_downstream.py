"""Detection and segmentation recipes on mfdsl backbones (mfdsl.downstream,
docs/downstream.md): torchvision's RetinaNet / Faster R-CNN / Mask R-CNN and a Semantic
FPN train a few SGD steps on tiny synthetic images, offline, with no pretrained weights;
gradients reach the backbone; bad inputs are refused with a clear error."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mfdsl.api import build_model
from mfdsl.downstream import (DenseFeatures, FPNBackbone, SemanticFPN,
                              build_detector, dense_features)

from conftest import tiny_mf, write

# a two-stage 32x32 pooling model (strides 4 and 8), as a user writes it, and the same
# with a dense line (stage 0 without a norm, as the official RetinaNet backbone)
DENSE_LINE = "  dense outputs (0, 1) stage0 identity\n  head linear"


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return write(tmp_path, "tiny.mf", tiny_mf())


@pytest.fixture
def dense(tmp_path: Path) -> Path:
    return write(tmp_path, "tiny_dense.mf", tiny_mf().replace("  head linear", DENSE_LINE))


def synthetic_detection(n: int, h: int, w: int, classes: int,
                        seed: int = 0) -> Tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]:
    """``n`` random images with 2 random boxes each (labels 1..classes-1) and their masks
    (the box filled)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g))
        x0 = torch.randint(0, w // 2, (2,), generator=g).float()
        y0 = torch.randint(0, h // 2, (2,), generator=g).float()
        bw = torch.randint(12, w // 2, (2,), generator=g).float()
        bh = torch.randint(12, h // 2, (2,), generator=g).float()
        boxes = torch.stack([x0, y0, x0 + bw, y0 + bh], 1)
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for k, (a, b, c, d) in enumerate(boxes.long().tolist()):
            masks[k, b:d, a:c] = 1
        labels = torch.randint(1, classes, (2,), generator=g)
        targets.append(dict(boxes=boxes, labels=labels, masks=masks))
    return images, targets


def backbone_grads(body: DenseFeatures) -> Dict[str, float]:
    """Gradient norm of the stem conv, the last stage's first weight and each normed
    output's weight."""
    named = dict(body.named_parameters())
    picks = ["stem.conv.weight"] + [k for k in named if k.startswith("dense.")]
    picks.append(next(k for k in named if k.startswith(f"stages.{body.outputs[-1]}.")))
    return {k: (named[k].grad.norm().item() if named[k].grad is not None else float("nan"))
            for k in picks}


# --- the backbone adapter --------------------------------------------------------------------

def test_dense_features_is_the_models_backbone(dense: Path):
    model = build_model(dense).eval()
    body = dense_features(model).eval()
    x = torch.randn(2, 3, 97, 131)  # no side a multiple of 32
    out = body(x)
    assert list(out) == ["0", "1"] and body.outputs == [0, 1]
    assert body.out_channels == [16, 32] and body.strides == [4, 8]
    assert [tuple(t.shape) for t in out.values()] == [(2, 16, 24, 33), (2, 32, 12, 17)]
    for got, want in zip(out.values(), model.backbone()(x)):
        assert torch.equal(got, want)
    # same modules, same state-dict names: a detection checkpoint's backbone loads
    sd, full = body.state_dict(), model.state_dict()
    assert set(sd) <= set(full) and "dense.stage1.weight" in sd
    assert all(sd[k].data_ptr() == full[k].data_ptr() for k in sd)
    # stage 0's output has no norm (identity): it is the stage's own map
    assert torch.equal(out["0"], model.forward_feature_maps(x, [0])[0])


def test_dense_features_subset_and_spec_without_dense(dense: Path, plain: Path):
    only1 = dense_features(dense, outputs=[1])
    assert only1.outputs == [1] and list(only1.state_dict()).count("dense.stage1.weight") == 1
    assert not any(k.startswith("dense.stage0") for k in only1.state_dict())
    added = dense_features(plain, outputs=(0, 1))  # the default norm on each
    assert type(added.dense["stage0"]).__name__ == "ModifiedLayerNormGroupNorm"
    first = dense_features(plain, outputs=(0,))  # stops after stage 0: no later stage held
    assert len(first.stages) == 1 and list(first(torch.randn(1, 3, 40, 40))) == ["0"]


@pytest.mark.parametrize("outputs, match", [
    ((1, 2), r"stage 2 is not among the dense outputs of 't(iny)?'.*yields stages 0, 1"),
    ((1, 0), r"outputs must be increasing"),
    ((), r"at least one stage"),
    ((0, -1), r"ints >= 0"),
    ((0, True), r"ints >= 0"),
])
def test_dense_features_refuses_stages_it_does_not_yield(dense: Path, outputs, match):
    with pytest.raises(ValueError, match=match):
        dense_features(dense, outputs=outputs)


def test_dense_features_errors(plain: Path, dense: Path):
    with pytest.raises(ValueError, match=r"has no dense outputs: pass outputs=\(\.\.\.\)"):
        dense_features(plain)
    with pytest.raises(ValueError, match=r"has stages 0 to 1"):
        dense_features(plain, outputs=(0, 3))
    with pytest.raises(ValueError, match=r"has no dense outputs: add a `dense outputs"):
        DenseFeatures(build_model(plain))
    with pytest.raises(TypeError, match=r"built by mfdsl.build_model"):
        DenseFeatures(nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match=r"sequence of stage indices"):
        dense_features(dense, outputs=1)
    with pytest.raises(TypeError, match=r"apply to a spec"):
        dense_features(build_model(dense), check_sizes=False)
    body = dense_features(dense)
    with pytest.raises(ValueError, match=r"takes \(B, 3, H, W\) images, got shape \(1, 1, "):
        body(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"unknown detector 'yolo'"):
        build_detector(body, "yolo", 3)
    with pytest.raises(ValueError, match=r"num_classes counts the background"):
        build_detector(body, "fasterrcnn", 1)
    with pytest.raises(ValueError, match=r"min_size must be an int >= 1"):
        build_detector(body, "retinanet", 3, min_size=0)
    with pytest.raises(TypeError, match=r"takes a DenseFeatures body"):
        build_detector(build_model(dense), "retinanet", 3)
    with pytest.raises(ValueError, match=r"extra must be one of"):
        FPNBackbone(body, 32, extra="p6")
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1"):
        SemanticFPN(body, 0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        SemanticFPN(body, 3, dropout=1.0)


# --- recipes that train ----------------------------------------------------------------------

@pytest.mark.parametrize("kind, size, divisible", [
    ("retinanet", (96, 128), 32),
    ("retinanet", (97, 131), 1),   # unpadded: the backbone sees 97x131
    ("fasterrcnn", (97, 131), 1),
    ("maskrcnn", (96, 128), 32),
])
def test_detector_trains_on_an_mfdsl_backbone(dense: Path, kind: str, size, divisible: int):
    torch.manual_seed(0)
    h, w = size
    body = dense_features(dense)
    extra = {} if kind == "retinanet" else dict(box_batch_size_per_image=64)  # faster
    if kind == "maskrcnn":
        extra["mask_channels"] = 16
    model = build_detector(body, kind, num_classes=3, fpn_channels=32, min_size=h,
                           max_size=w, size_divisible=divisible, **extra)
    levels = model.backbone(torch.randn(1, 3, h, w))
    assert list(levels) == (["0", "1", "p6", "p7"] if kind == "retinanet"
                            else ["0", "1", "pool"])
    images, targets = synthetic_detection(2, h, w, classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = {k: v.detach().clone() for k, v in body.state_dict().items()}
    totals = []
    model.train()
    for step in range(3):
        losses = model(images, targets)
        if kind == "maskrcnn":
            assert "loss_mask" in losses
        total = sum(losses.values())
        assert all(math.isfinite(v.item()) for v in losses.values()), losses
        opt.zero_grad()
        total.backward()
        if step == 0:
            grads = backbone_grads(body)
            assert all(math.isfinite(g) and g > 0 for g in grads.values()), grads
        opt.step()
        totals.append(total.item())
    assert len(set(totals)) == 3, totals  # each step's loss differs
    after = body.state_dict()
    assert not torch.equal(before["stem.conv.weight"], after["stem.conv.weight"])
    model.eval()
    with torch.no_grad():
        det = model(images)
    assert len(det) == 2 and det[0]["boxes"].shape[-1] == 4


@pytest.mark.parametrize("size", [(96, 128), (97, 131)])
def test_semantic_fpn_trains_on_an_mfdsl_backbone(dense: Path, size):
    torch.manual_seed(0)
    h, w = size
    body = dense_features(dense)
    model = SemanticFPN(body, num_classes=4, fpn_channels=32, head_channels=16)
    assert len(model.scale_heads[0].convs) == 1 and len(model.scale_heads[1].convs) == 1
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, h, w, generator=g)
    masks = torch.randint(0, 4, (2, h, w), generator=g)
    masks[:, :5] = 255  # ignored pixels, as mmseg's ignore_index
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    model.train()
    for step in range(3):
        logits = model(images)
        assert logits.shape == (2, 4, h, w)
        loss = F.cross_entropy(logits, masks, ignore_index=255)
        assert math.isfinite(loss.item())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = backbone_grads(body)
            assert all(math.isfinite(v) and v > 0 for v in grads.values()), grads
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_semantic_fpn_upsampling_steps_follow_strides():
    body = dense_features(Path(__file__).resolve().parent.parent / "specs" / "demo_tiny.mf",
                          outputs=(0, 1, 2))
    model = SemanticFPN(body, 2, fpn_channels=8, head_channels=8)
    # strides 4, 8, 16: one conv on level 0, then 1 and 2 conv + 2x upsample steps
    assert [len(h.convs) for h in model.scale_heads] == [1, 1, 2]
    assert [h.upsample for h in model.scale_heads] == [False, True, True]
    assert model.eval()(torch.randn(1, 3, 45, 70)).shape == (1, 2, 45, 70)


# --- Hugging Face transformers' TimmBackbone -------------------------------------------------

def test_transformers_timm_backbone_takes_an_mfdsl_spec(dense: Path):
    pytest.importorskip("transformers", reason="transformers is not installed (optional "
                        "extra mfdsl[hf]); TimmBackbone is not exercised")
    import mfdsl.timm
    from transformers import TimmBackbone, TimmBackboneConfig

    name = mfdsl.timm.register(dense, "mfdsl_tiny_downstream_test")
    config = TimmBackboneConfig(backbone=name, out_indices=(0, 1))
    hf = TimmBackbone(config).eval()
    assert list(hf.channels) == [16, 32]
    x = torch.randn(2, 3, 97, 131)
    maps = hf(x).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 16, 24, 33), (2, 32, 12, 17)]
    # timm's path yields the stages' own maps (forward_intermediates: no dense norm)
    inner = hf._backbone
    ref = build_model(dense).eval()
    ref.load_state_dict(inner.model.state_dict(), strict=False)
    for got, want in zip(maps, ref.forward_feature_maps(x)):
        # tolerance: the same weights and ops through timm's forward_intermediates; only
        # float32 reassociation may differ
        assert torch.allclose(got, want, atol=1e-6)
    maps[1].sum().backward()
    assert inner.model.stem.conv.weight.grad.abs().sum() > 0
