"""Helpers shared by the test files (imported as ``from conftest import ...``).

One copy of each: running the CLI in-process, the ``mfdsl.runner`` subprocess with a clean
environment, writing small specs and image folders, catching a located ``SpecError``.

The inner loop is ``python -m pytest -m "not slow"``: every test that takes more than about
3 s on a 2-core machine is marked ``@pytest.mark.slow``; CI runs them all.
"""
from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import pytest
from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


# --- the CLI, in-process ------------------------------------------------------------------

def cli(*args: Any) -> Result:
    """``mfdsl ARGS`` in-process. Fails the test on a traceback, an exception that escaped
    the CLI's guards, or the last-resort "internal error" message: bad input must be handled."""
    from mfdsl.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    out = res.output
    assert "Traceback" not in out, out
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"escaped exception: {res.exception!r}\n{out}")
    assert "internal error" not in out, out
    return res


def run(*args: Any) -> Tuple[int, str]:
    """``mfdsl ARGS`` in-process, as (exit code, output); see :func:`cli`."""
    res = cli(*args)
    return res.exit_code, res.output


# --- the runner in a subprocess -----------------------------------------------------------

def runner_env(**extra: str) -> Dict[str, str]:
    """The environment for a ``python -m mfdsl.runner`` subprocess: the worktree importable,
    one intra-op thread (stable timings on a busy 2-core machine, reproducible sums), and no
    test fault injection unless asked for in ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for hook in ("MFDSL_TEST_KILL_AFTER_STEP", "MFDSL_TEST_NAN_AT_STEP",
                 "MFDSL_TEST_SIGNAL_AT_STEP"):
        env.pop(hook, None)
    env.update(extra)
    return env


def runner(*args: str, env: Optional[Dict[str, str]] = None,
           timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m mfdsl.runner ARGS`` in a subprocess (for SIGKILL, torchrun and env hooks)."""
    return subprocess.run([sys.executable, "-m", "mfdsl.runner", *args], cwd=ROOT,
                          env=env or runner_env(), capture_output=True, text=True,
                          timeout=timeout)


# --- files ----------------------------------------------------------------------------------

def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp_path/name`` (UTF-8) and return the path."""
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def mf_file(tmp_path: Path, *lines: str, header: str = "input 3x32x32\n  classes 10",
            name: str = "t.mf") -> Path:
    """A ``.mf`` spec ``model t { header; lines }`` written to ``tmp_path/name``."""
    text = "model t {\n  " + header + "\n" + "".join(f"  {ln.strip()}\n" for ln in lines) + "}\n"
    return write(tmp_path, name, text)


def train_spec(name: str = "tiny", **recipe: Any):
    """A two-stage 32x32, 3-class pooling model with a short recipe (``recipe`` overrides)."""
    from mfdsl import ir

    r = dict(epochs=2, batch_size=8, lr=5e-3, lr_batch=8, warmup_epochs=0, amp=False)
    r.update(recipe)
    return ir.ModelSpec(
        name=name, img_size=(32, 32), num_classes=3,
        stages=[ir.StageSpec(depth=1, width=16, mixers=[ir.call("pooling")]),
                ir.StageSpec(depth=1, width=32, downsample=ir.default_downsample(),
                             mixers=[ir.call("pooling")], res_scale=1.0)],
        recipe=ir.RecipeSpec(**r))


def write_spec(path: Path, spec: Any) -> str:
    """``spec`` printed as ``.mf`` to ``path``; returns the path as a string."""
    from mfdsl.emit.mf import to_mf

    path.write_text(to_mf(spec))
    return str(path)


def same_nested(a: Any, b: Any) -> bool:
    """Bitwise equality of nested tensors, dicts, lists and values (optimizer states)."""
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_nested(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_nested(x, y) for x, y in zip(a, b))
    return a == b


def weights(path: Path) -> Dict[str, Any]:
    """The tensors of a ``.safetensors`` file, by name."""
    from safetensors.torch import load_file

    return load_file(str(path))


def solid_images(folder: Path, n: int, colour: int) -> None:
    """``n`` 20x20 PNGs in ``folder`` whose red channel is ``colour`` (one class)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20, 20), (colour, 40 * i % 256, 0)).save(folder / f"{i}.png")


def solid_folder(root: Path, n: int, colours: Dict[str, int]) -> Path:
    """train/ and val/ with one folder per class ``name -> red level`` (solid images),
    ``n`` images each."""
    for split in ("train", "val"):
        for name, colour in colours.items():
            solid_images(root / split / name, n, colour)
    return root


def two_class_folder(root: Path, n: int) -> Path:
    """train/ and val/ of two solid-colour classes, ``a`` (dark) and ``b`` (bright)."""
    return solid_folder(root, n, {"a": 30, "b": 220})


def tiny_mf(mixer: str = "pooling", epochs: int = 1) -> str:
    """The ``.mf`` text, as a user writes it, of a two-stage 32x32 3-class model of
    ``mixer`` blocks with a plain short recipe (no augmentation, fp32)."""
    return f"""\
model tiny {{
  input 3x32x32
  classes 3
  stage {mixer} x1 @16
  stage {mixer} x1 @32
  head linear
  train {{
    epochs {epochs}
    batch_size 4
    lr_batch 4
    warmup_epochs 0
    randaugment none
    mixup 0.0
    cutmix 0.0
    random_erasing 0.0
    amp false
  }}
}}
"""


def write_colour_folder(root: Path, n_train: int, n_val: int, size: int = 32,
                        seed: int = 0) -> Path:
    """Three classes told apart by dominant colour channel, with random shapes on top;
    PNG for train, JPEG for val."""
    from PIL import Image

    rng = random.Random(seed)
    for split, n, ext in (("train", n_train, "png"), ("val", n_val, "jpg")):
        for c, name in enumerate(("c0_red", "c1_green", "c2_blue")):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = [rng.randint(0, 90) for _ in range(3)]
                base[c] = rng.randint(150, 255)
                img = Image.new("RGB", (size, size), tuple(base))
                px = img.load()
                for _ in range(size * 4):
                    x, y = rng.randrange(size), rng.randrange(size)
                    px[x, y] = tuple(rng.randrange(256) for _ in range(3))
                img.save(d / f"{i:03d}.{ext}", quality=95)
    return root


# --- errors ---------------------------------------------------------------------------------

def error_of(fn: Callable[..., Any], *args: Any, **kwargs: Any):
    """The ``SpecError`` that ``fn(*args, **kwargs)`` raises (the test fails if none)."""
    from mfdsl.errors import SpecError

    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    return info.value


# --- a local hub cache ------------------------------------------------------------------

def put_in_cache(hf_home: Path, repo_id: str, filename: str, data: bytes,
                 commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Lay ``data`` out the way huggingface_hub caches a download: the blob named by its
    sha256 (the LFS object id), a snapshot symlink, refs/main."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    sha = hashlib.sha256(data).hexdigest()
    blob = repo / "blobs" / sha
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snap = repo / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    if snap.exists() or snap.is_symlink():
        snap.unlink()
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return blob


@pytest.fixture
def hub(tmp_path: Path, monkeypatch) -> Path:
    """An empty, offline Hugging Face home under tmp_path."""
    home = tmp_path / "hf"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def safetensors_bytes(sd: "Dict[str, Any]", tmp: Path) -> bytes:
    """``sd`` as the bytes of a safetensors file (written under ``tmp``)."""
    from safetensors.torch import save_file

    p = tmp / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    return p.read_bytes()


# --- an independent reference for the smooth per-step schedule ------------------------------

def smooth_cosine_lr(step: int, base_lr: float, total_steps: int, warmup_steps: int,
                     warmup_lr: float, min_lr: float) -> float:
    """Linear warmup warmup_lr -> base_lr, then a cosine base_lr -> min_lr over the
    remaining optimizer steps (``sched_unit step``, ``warmup_mode prefix``), written out."""
    import math

    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t))
