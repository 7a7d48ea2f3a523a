"""Detection and segmentation on mfdsl backbones (docs/downstream.md).

* :mod:`.backbone`: :class:`DenseFeatures`, a spec's dense outputs as an ``OrderedDict``
  of (B, C, H, W) maps with ``out_channels`` and ``strides`` (torchvision's backbone form).
* :mod:`.fpn`: :class:`FPNBackbone`, those maps through torchvision's
  ``FeaturePyramidNetwork`` (torchvision's ``BackboneWithFPN`` for an mfdsl body).
* :mod:`.detection`: :func:`build_detector`, a torchvision RetinaNet, Faster R-CNN or
  Mask R-CNN on it, anchors sized from the backbone's strides.
* :mod:`.segmentation`: :class:`SemanticFPN`, the Semantic FPN of the official PoolFormer
  mmsegmentation config (FPN, mmseg's ``FPNHead``, a 1x1 classifier).
"""
from .backbone import DenseFeatures, dense_features
from .detection import DETECTORS, build_detector
from .fpn import FPNBackbone
from .segmentation import SemanticFPN

__all__ = ["DETECTORS", "DenseFeatures", "FPNBackbone", "SemanticFPN", "build_detector",
           "dense_features"]
