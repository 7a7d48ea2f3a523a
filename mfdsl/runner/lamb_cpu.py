"""The CPU LAMB kernel (``lamb_cpu.c``): built with the system's C compiler on first use.

torch's CPU kernels make a LAMB step cost 16 passes over the model's size (see
``runner/lamb.py``); this kernel makes 11 (the gradient norm; moments, update and both
norms in one pass, the update written over the gradient; ``p += size * u``), on float32
and float64 tensors laid out densely.
It is plain C with no torch headers, so building takes about a second: ``$CC`` (else
``cc`` or ``gcc``) with ``-O3``, AVX2 where torch's own CPU kernels use it, cached under
``default_cache_dir()/kernels`` by a digest of the source, the flags and the compiler, and
written atomically (two processes building at once each rename a whole file into place).
Where no compiler is found or the build fails, :func:`kernel` returns None with the reason
in :func:`unavailable_reason`, and ``FusedLamb`` takes the multi-tensor path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch.profiler import record_function

from ..fsio import INTERNAL, write_atomic_with
from ..resources import default_cache_dir

SOURCE = Path(__file__).with_name("lamb_cpu.c")
DTYPES = {torch.float32: "f32", torch.float64: "f64"}

_loaded: Optional[ctypes.CDLL] = None
_failure: Optional[str] = None


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


def _flags() -> List[str]:
    flags = ["-O3", "-std=c11", "-shared", "-fPIC", "-pthread", "-fopenmp-simd",
             "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
    # As torch's dispatch does: wide vectors only where this CPU has them. The digest holds
    # the flags, so a cache shared by machines of different kinds keeps one build for each.
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags.append("-mavx2")
    return flags


def _compiler_identity(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.splitlines()[0] if out.stdout else cc
    except (OSError, subprocess.SubprocessError):
        return cc


def library_path(cc: str) -> Path:
    """Where the build for this source, these flags and this compiler is cached."""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(_flags()).encode(),
                 _compiler_identity(cc).encode(), sys.platform.encode(),
                 os.uname().machine.encode()):
        digest.update(part)
        digest.update(b"\0")
    return default_cache_dir() / "kernels" / f"lamb_cpu-{digest.hexdigest()[:16]}.so"


def _build(cc: str, target: Path) -> None:
    def compile_to(tmp: str) -> None:
        out = subprocess.run([cc, *_flags(), str(SOURCE), "-o", tmp, "-lm"],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{os.path.basename(cc)} failed: "
                               + (out.stderr.strip().splitlines() or ["no message"])[-1])

    os.makedirs(target.parent, exist_ok=True)
    write_atomic_with(str(target), compile_to, links=INTERNAL)


def _declare(lib: ctypes.CDLL) -> None:
    table, dbl = ctypes.POINTER(ctypes.c_int64), ctypes.c_double
    scalar = ctypes.c_void_p  # a float32 tensor's value, or NULL
    for suffix in DTYPES.values():
        sumsq = getattr(lib, f"mfdsl_sumsq_{suffix}")
        sumsq.argtypes = [ctypes.c_int64, table, table, ctypes.c_int, ctypes.POINTER(dbl)]
        sumsq.restype = ctypes.c_int
        group = getattr(lib, f"mfdsl_lamb_group_{suffix}")
        group.argtypes = ([ctypes.c_int64] + [table] * 5 + [scalar] * 3 + [dbl] * 4
                          + [ctypes.c_int] + [dbl] * 3 + [ctypes.c_int] * 3
                          + [ctypes.POINTER(dbl)])
        group.restype = ctypes.c_int


def kernel() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, built on first use; None where it cannot be built."""
    global _loaded, _failure
    if _loaded is not None or _failure is not None:
        return _loaded
    cc = _compiler()
    if cc is None:
        _failure = "no C compiler found (set CC, or install cc/gcc)"
        return None
    failures = (OSError, RuntimeError, subprocess.SubprocessError, AttributeError)
    try:
        target = library_path(cc)
        if not target.is_file():
            _build(cc, target)
        try:
            lib = _load(target)
        except failures:  # a cached file that does not load (damaged, not ours): again,
            target.unlink()  # as a new file (an atomic write would keep its mode)
            _build(cc, target)
            lib = _load(target)
    except failures as exc:
        _failure = f"the CPU LAMB kernel could not be built or loaded: {exc}"
        return None
    _loaded = lib
    return lib


def _load(path: Path) -> ctypes.CDLL:
    # Loading runs the file's code: only a file this user owns and nobody else may change
    # (a cache under a shared MFDSL_CACHE could hold someone else's).
    st = path.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise RuntimeError(f"{path} is not this user's own file (owner uid {st.st_uid}, "
                           f"mode {oct(st.st_mode & 0o777)}); not loaded")
    lib = ctypes.CDLL(str(path))
    _declare(lib)
    return lib


def unavailable_reason() -> Optional[str]:
    """Why :func:`kernel` returned None (None before the first try and after a success)."""
    return _failure


def dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory with no gaps or overlaps, in
    whatever order (contiguous, channels-last, ...): the kernel walks that block."""
    size = 1
    for stride, length in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if stride != size:
            return False
        size *= length
    return True


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether element k of ``a`` and of ``b`` lie at the same offset (strides of size-1
    dimensions do not matter: a 1x1 kernel is both contiguous and channels-last)."""
    return a.shape == b.shape and all(
        sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n != 1)


def _int64s(values: Sequence[int]) -> "ctypes.Array[ctypes.c_int64]":
    # ctypes arrays, not tensors: building them issues no torch operation.
    return (ctypes.c_int64 * len(values))(*values)


def threads_for(numel: int) -> int:
    """torch's intra-op thread count, fewer where a thread would get little work."""
    return max(1, min(torch.get_num_threads(), numel // (1 << 18)))


def sum_of_squares(tensors: Sequence[torch.Tensor]) -> float:
    """``sum(t.square().sum() for t in tensors)`` in float64, over tensors of one dtype."""
    lib = kernel()
    assert lib is not None and tensors
    numel = [t.numel() for t in tensors]
    out = ctypes.c_double()
    with record_function("mfdsl::lamb_cpu_sumsq"):  # seen by torch.profiler as one op
        rc = getattr(lib, f"mfdsl_sumsq_{DTYPES[tensors[0].dtype]}")(
            len(tensors), _int64s([t.data_ptr() for t in tensors]), _int64s(numel),
            threads_for(sum(numel)), ctypes.byref(out))
    if rc != 0:
        raise MemoryError("the CPU LAMB kernel could not allocate its work table")
    return out.value


def _scalar_pointer(t: Optional[torch.Tensor]) -> Optional[ctypes.c_void_p]:
    if t is None:
        return None
    assert t.dtype == torch.float32 and t.device.type == "cpu" and t.numel() == 1
    return ctypes.c_void_p(t.data_ptr())


def lamb_group(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
               exp_avgs: Sequence[torch.Tensor], exp_avg_sqs: Sequence[torch.Tensor],
               *, step: torch.Tensor, found_inf: Optional[torch.Tensor],
               grad_scale: Optional[torch.Tensor], sumsq: float, max_grad_norm: Optional[float],
               beta1: float, beta2: float, bias_correction: bool, eps: float,
               weight_decay: float, lr: float, adapt: bool,
               trust_clip: bool) -> Optional[List[float]]:
    """One group's update in place (``grads`` then hold the update direction ``u``): the
    tensors as :func:`dense`, of one dtype and laid out alike; ``step`` (the group's count,
    already advanced), ``found_inf`` and ``grad_scale`` float32 CPU scalars, read by the
    kernel; ``sumsq`` the squared global gradient norm (:func:`sum_of_squares`). Returns
    the trust ratios (1 where the group does not adapt), or None where ``found_inf``
    skipped the step."""
    lib = kernel()
    assert lib is not None and params
    numel = [p.numel() for p in params]
    ratios = (ctypes.c_double * len(params))()
    tables = [_int64s([t.data_ptr() for t in ts])
              for ts in (params, grads, exp_avgs, exp_avg_sqs)]
    with record_function("mfdsl::lamb_cpu_group"):
        rc = getattr(lib, f"mfdsl_lamb_group_{DTYPES[params[0].dtype]}")(
            len(params), *tables, _int64s(numel), _scalar_pointer(step),
            _scalar_pointer(found_inf), _scalar_pointer(grad_scale), sumsq,
            -1.0 if max_grad_norm is None else max_grad_norm, beta1, beta2,
            int(bias_correction), eps, weight_decay, lr, int(adapt), int(trust_clip),
            threads_for(sum(numel)), ratios)
    if rc < 0:
        raise MemoryError("the CPU LAMB kernel could not allocate its work table")
    return None if rc == 1 else list(ratios)
