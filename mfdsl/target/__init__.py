"""A built model made ready for where it runs: device preparation (``prepare``: speed
variants, memory layout, autocast, ``torch.compile``, DDP, through ``compile_for_target``)
and export to a file (``export``: torch.export ``.pt2`` or ONNX, checked against eager)."""
from .prepare import TargetError, TargetModel, compile_for_target

__all__ = ["TargetError", "TargetModel", "compile_for_target"]
