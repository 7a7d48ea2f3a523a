"""torchvision detectors (RetinaNet, Faster R-CNN, Mask R-CNN) on an mfdsl backbone."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch.nn as nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from .backbone import DenseFeatures
from .fpn import FPNBackbone

DETECTORS = ("retinanet", "fasterrcnn", "maskrcnn")


def anchor_sizes(kind: str, strides: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """Anchor sizes per level, scaled with the level's stride as torchvision's ResNet-50
    detectors (and mmdet's configs) have them: RetinaNet ``4 s * 2^(k/3)``, k = 0, 1, 2
    (32 to 512 at strides 8 to 128); the R-CNN RPN ``8 s`` (32 to 512 at strides 4 to 64)."""
    if kind == "retinanet":
        return tuple(tuple(int(4 * s * 2 ** (k / 3)) for k in range(3)) for s in strides)
    return tuple((8 * s,) for s in strides)


def build_detector(body: DenseFeatures, kind: str, num_classes: int, *,
                   fpn_channels: int = 256, min_size: int = 800, max_size: int = 1333,
                   size_divisible: int = 32, mask_channels: int = 256,
                   anchor_generator: Optional[AnchorGenerator] = None,
                   **kwargs: Any) -> nn.Module:
    """A torchvision ``kind`` detector ("retinanet", "fasterrcnn", "maskrcnn") on ``body``
    with an FPN of ``fpn_channels``: RetinaNet gets two extra levels (P6, P7 from the last
    map), the R-CNNs one (max pooling), as torchvision's ResNet-50 FPN models.

    ``num_classes`` counts the background (class 0), as torchvision's do. Anchors follow
    the levels' strides (:func:`anchor_sizes`, aspect ratios 0.5, 1, 2) unless
    ``anchor_generator`` is given; the R-CNNs pool RoIs from the body's levels (not the
    extra one); Mask R-CNN's mask head is torchvision's (four 3x3 convs and a 2x
    deconvolution, ``mask_channels`` wide). The transform normalises with the backbone
    model's mean and std and resizes to ``min_size`` / ``max_size``; ``size_divisible``
    pads the batch (1: no padding). Other ``kwargs`` go to the torchvision class
    (``box_detections_per_img``, ...). The model is untrained past the backbone; no
    weights are downloaded."""
    if not isinstance(body, DenseFeatures):
        raise TypeError(f"build_detector takes a DenseFeatures body (mfdsl.downstream."
                        f"dense_features), got {type(body).__name__}")
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}: one of {', '.join(DETECTORS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes counts the background class 0 as torchvision's "
                         f"detectors do: an int >= 2, got {num_classes!r}")
    for what, v in (("min_size", min_size), ("max_size", max_size),
                    ("size_divisible", size_divisible), ("fpn_channels", fpn_channels),
                    ("mask_channels", mask_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be an int >= 1, got {v!r}")
    backbone = FPNBackbone(body, fpn_channels, extra="p6p7" if kind == "retinanet" else "maxpool")
    if anchor_generator is None:
        sizes = anchor_sizes(kind, backbone.strides)
        anchor_generator = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    elif len(anchor_generator.sizes) != len(backbone.strides):
        raise ValueError(f"anchor_generator has {len(anchor_generator.sizes)} levels, the "
                         f"backbone's FPN {len(backbone.strides)}")
    box_predictor = kwargs.pop("box_predictor", None)
    common = dict(min_size=min_size, max_size=max_size, image_mean=body.mean,
                  image_std=body.std, size_divisible=size_divisible, **kwargs)
    if kind == "retinanet":
        return RetinaNet(backbone, num_classes, anchor_generator=anchor_generator, **common)
    box_pool = MultiScaleRoIAlign(backbone.names, output_size=7, sampling_ratio=2)
    if kind == "fasterrcnn":
        return FasterRCNN(backbone, None if box_predictor else num_classes,
                          rpn_anchor_generator=anchor_generator, box_roi_pool=box_pool,
                          box_predictor=box_predictor, **common)
    mask_pool = MultiScaleRoIAlign(backbone.names, output_size=14, sampling_ratio=2)
    mask_head = MaskRCNNHeads(fpn_channels, (mask_channels,) * 4, dilation=1)
    mask_predictor = MaskRCNNPredictor(mask_channels, mask_channels, num_classes)
    # torchvision takes num_classes only when it builds both predictors: the box one here
    # is its own default (TwoMLPHead's width 1024); with another box_head pass its predictor
    box_predictor = box_predictor or FastRCNNPredictor(1024, num_classes)
    return MaskRCNN(backbone, None, rpn_anchor_generator=anchor_generator,
                    box_roi_pool=box_pool, box_predictor=box_predictor,
                    mask_roi_pool=mask_pool, mask_head=mask_head,
                    mask_predictor=mask_predictor, **common)
