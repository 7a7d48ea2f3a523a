"""Built-in components. Importing this package registers them in ``mfdsl.registry``.

All block-level modules work on channels-last tensors ``(B, H, W, C)``: pointwise layers
hold ``nn.Linear`` parameters (``Pointwise``: a 1x1 conv on CPU, a GEMM elsewhere) and
spatial ops see a channels-last strided NCHW view, so no layout copies happen between them.
"""
from . import activations, depthwise, heads, mixers, norms  # noqa: F401
