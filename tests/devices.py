"""The devices a device-dependent test runs on: the CPU always, CUDA where a GPU is present.

CI has no GPU, so there these tests run on the CPU alone; the same suite run on a GPU
machine (see docs/benchmarks.md, "GPU session") exercises the CUDA branches with the same
assertions.
"""
from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", "cuda"] if CUDA else ["cpu"]
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
