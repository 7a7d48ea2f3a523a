"""Model passes: inference folding (``fold_for_inference`` and its single passes in
:mod:`mfdsl.passes.fold`). Device preparation is :mod:`mfdsl.target`."""
from .fold import (  # noqa: F401
    fold_for_inference, fold_layer_scale, fold_norm_affine, fold_res_scale, fold_starrelu,
)
