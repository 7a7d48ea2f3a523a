"""Every checkpoint format mfdsl reads, in one low package that imports only
:mod:`mfdsl.errors` and :mod:`mfdsl.fsio`, so the runner, the weights resolvers, eval and
the CLI all read files the same way without importing one another.

* :mod:`.weights` - any weights file a user holds (safetensors or a PyTorch file, read
  without running pickled code) in the official, timm or mfdsl key layout: read, detect,
  convert, load into a model (:func:`load_checkpoint`);
* :mod:`.train_state` - mfdsl's own training checkpoint pair (weights + training state).
"""
from .weights import (CheckpointError, LoadReport, convert_state_dict, detect_format,
                      load_checkpoint, read_state_dict)

__all__ = ["CheckpointError", "LoadReport", "convert_state_dict", "detect_format",
           "load_checkpoint", "read_state_dict"]
