"""What a run folder records besides metrics: the spec, the resolved recipe, the environment."""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from typing import Any, Dict, Optional

import torch

from ..ir import ModelSpec


def spec_text(spec: ModelSpec) -> "tuple[str, str]":
    """(file name, text) of the spec in canonical .mf form; falls back to the source file."""
    try:
        from ..emit.mf import to_mf

        return "spec.mf", to_mf(spec)
    except Exception:  # the emitter is optional here: record what we can
        pass
    if spec.source and os.path.isfile(spec.source):
        ext = os.path.splitext(spec.source)[1] or ".mf"
        with open(spec.source, encoding="utf-8", errors="replace") as f:
            return "spec" + ext, f.read()
    return "spec.repr.txt", repr(spec) + "\n"


def git_sha() -> Optional[str]:
    """The mfdsl checkout's commit, if it is a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(argv: Any, world_size: int, device: torch.device) -> Dict[str, Any]:
    import numpy
    import timm

    from .. import __version__

    env: Dict[str, Any] = {
        "command": list(argv),
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "mfdsl": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "git_sha": git_sha(),
        "world_size": world_size,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
