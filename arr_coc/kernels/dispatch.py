"""Choosing between the CUDA kernel and the pure-torch reference, and loading the kernel lazily.

The CUDA extension is compiled on first CUDA use (never at import) with ``torch.utils.cpp_extension.load``; any
failure (no CUDA, no compiler, no sources, a build error) makes :func:`load_kernel` return ``None``, records the reason,
and emits one warning naming the fallback. ``ARR_COC_KERNEL=reference|cuda`` or :data:`_override_impl` force a path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["HAS_CUDA_KERNEL", "load_kernel", "use_cuda_kernel", "kernel_status"]

# None: not tried yet; True/False after the first attempt.
HAS_CUDA_KERNEL: bool | None = None
# Tests set this to "reference" or "cuda" to force a path; None defers to the environment.
_override_impl: str | None = None
_ext = None
_reason: str | None = None
_CSRC = Path(__file__).parent / "csrc"
_VALID = ("reference", "cuda", "auto")


def _requested() -> str:
    impl = _override_impl if _override_impl is not None else os.environ.get("ARR_COC_KERNEL", "auto")
    if impl not in _VALID:
        raise ValueError(f"ARR_COC_KERNEL / _override_impl must be one of {_VALID}, got {impl!r}")
    return impl


def use_cuda_kernel() -> bool:
    """Whether CUDA tensors should go to the CUDA kernel (``auto`` and ``cuda``) rather than the reference."""
    return _requested() != "reference"


def kernel_status() -> str:
    """A one-line description of which implementation CUDA tensors get, and why."""
    if HAS_CUDA_KERNEL is None:
        return "CUDA kernel not loaded yet (loads on first CUDA call)"
    return "CUDA kernel loaded" if HAS_CUDA_KERNEL else f"reference fallback: {_reason}"


def _build():
    from torch.utils import cpp_extension

    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    if cpp_extension.CUDA_HOME is None:
        raise RuntimeError("CUDA_HOME not found (no nvcc)")
    sources = sorted(str(p) for p in _CSRC.glob("*.c*") if p.suffix in (".cu", ".cpp"))
    if not sources:
        raise RuntimeError(f"no CUDA sources in {_CSRC}")
    # sm_90 SASS for H100/H200 plus PTX so other GPUs JIT it; an explicit user setting wins.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")
    return cpp_extension.load(
        name="arr_coc_cuda",
        sources=sources,
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "--use_fast_math", "-lineinfo"],
        verbose=os.environ.get("ARR_COC_KERNEL_VERBOSE", "0") == "1",
    )


def load_kernel():
    """Build (once) and return the CUDA extension, or ``None`` with a single warning if it cannot be had."""
    global HAS_CUDA_KERNEL, _ext, _reason
    if HAS_CUDA_KERNEL is None:
        try:
            _ext = _build()
            HAS_CUDA_KERNEL = True
        except Exception as exc:  # any failure means: use the reference
            _ext, HAS_CUDA_KERNEL, _reason = None, False, f"{type(exc).__name__}: {exc}"
            msg = f"arr_coc: CUDA kernel unavailable ({_reason}); using the pure-torch reference"
            if _requested() == "cuda":
                raise RuntimeError(msg) from exc
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return _ext


def cuda_projection_forward(ext, y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Call the extension's forward; the argument layout is the extension's contract."""
    return ext.projection_forward(y, budget, lo, hi)


def cuda_projection_backward(ext, x: Tensor, lo: Tensor, hi: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    return tuple(ext.projection_backward(x, lo, hi, grad))
