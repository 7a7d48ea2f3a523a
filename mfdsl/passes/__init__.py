"""Model passes: per-target optimisation (``compile_for_target``) and inference folding
(``fold_for_inference`` and its single passes in :mod:`mfdsl.passes.fold`)."""
from .fold import (  # noqa: F401
    fold_for_inference, fold_layer_scale, fold_norm_affine, fold_res_scale, fold_starrelu,
)
from .targets import (  # noqa: F401
    TargetError, TargetModel, compile_for_target,
)
