"""Choosing between the CUDA kernel and the pure-torch reference, and loading the kernel lazily.

The CUDA extension (``csrc/``: one warp per row, values in registers, safeguarded Newton on the piecewise-linear
budget equation of Held, Wolfe & Crowder 1974, sort-free unlike the methods surveyed by Condat 2016; see
``csrc/projection.cuh`` and DESIGN.md "Kernel facts") is compiled on first CUDA use (never at import) with
``torch.utils.cpp_extension.load`` (ninja, cached by torch across processes). Any failure (no CUDA, no compiler, no
sources, a build error) makes :func:`load_kernel` return ``None``, records the reason, and emits one warning naming
the fallback, unless ``cuda`` was forced, which raises instead.
``ARR_COC_KERNEL=reference|cuda|auto`` or :data:`_override_impl` force a path.

The ``cuda_*`` functions below are the only callers of the extension: they flatten rows to ``(R, K)``, cast bounds and
budgets to the accumulation dtype and pass bounds as strided views (a scalar bound stays a 0-stride view, no copy).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from arr_coc.kernels.reference import _acc_dtype, bounds_as_stored, round_largest_remainder

__all__ = ["HAS_CUDA_KERNEL", "load_kernel", "use_cuda_kernel", "kernel_status", "cuda_kernel_or_none",
           "ints_exact_flag", "ints_exact_in"]

# None: not tried yet; True/False after the first attempt.
HAS_CUDA_KERNEL: bool | None = None
# Tests set this to "reference" or "cuda" to force a path; None defers to the environment.
_override_impl: str | None = None
_ext = None
_reason: str | None = None
_warned = False  # the fallback warning has gone out (once per process)
_CSRC = Path(__file__).parent / "csrc"
_VALID = ("reference", "cuda", "auto")
# Rows longer than this take the block-per-row path, whose rounding is the reference's (see csrc/projection.cu).
WARP_MAX_K = 1024


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


def _cuda_home() -> str:
    """The CUDA toolkit root, checked for headers (torch infers ``/usr/local`` from a ``/usr/local/bin/nvcc`` shim)."""
    from torch.utils import cpp_extension

    for home in (cpp_extension.CUDA_HOME, os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_runtime.h").is_file() and (Path(home) / "bin" / "nvcc").exists():
            # cpp_extension reads this module global when it builds include paths and the nvcc command.
            cpp_extension.CUDA_HOME = home
            return home
    raise RuntimeError(f"no CUDA toolkit found (CUDA_HOME={cpp_extension.CUDA_HOME!r} has no include/cuda_runtime.h)")


def _sources() -> list[str]:
    return sorted(str(p) for p in _CSRC.iterdir() if p.suffix in (".cu", ".cpp"))


def _build(*, require_gpu: bool = True, build_directory: str | None = None, verbose: bool | None = None):
    """Compile and import the extension. ``require_gpu=False`` only compiles (the test that the sources build)."""
    from torch.utils import cpp_extension

    if require_gpu and not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False")
    if torch.version.cuda is None:
        raise RuntimeError(f"torch {torch.__version__} is built without CUDA")
    _cuda_home()
    sources = _sources()
    if not sources:
        raise RuntimeError(f"no CUDA sources in {_CSRC}")
    if verbose is None:
        verbose = os.environ.get("ARR_COC_KERNEL_VERBOSE", "0") == "1"
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    with _arch_env(capability):
        # No --use_fast_math: flush-to-zero and approximate division would break bit-exact rounding parity.
        return cpp_extension.load(
            name="arr_coc_cuda",
            sources=sources,
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            extra_include_paths=[str(_CSRC)],
            build_directory=build_directory,
            verbose=verbose,
        )


def _arch_list(capability: tuple[int, int] | None) -> str:
    """``TORCH_CUDA_ARCH_LIST`` for the build: sm_90 (H100/H200) and the current GPU's arch as SASS, plus PTX of the
    newest so later GPUs JIT it. PTX only runs on GPUs at or above its arch, so a pre-sm_90 GPU (an A100's sm_80) needs
    its own SASS: ``9.0+PTX`` alone would build, then fail every launch with "no kernel image"."""
    archs = {(9, 0)} if capability is None else {(9, 0), tuple(capability)}
    names = [f"{major}.{minor}" for major, minor in sorted(archs)]
    return ";".join(names[:-1] + [names[-1] + "+PTX"])


@contextlib.contextmanager
def _arch_env(capability: tuple[int, int] | None):
    """Set ``TORCH_CUDA_ARCH_LIST`` to :func:`_arch_list` for the build only (a user's own setting wins), and put the
    environment back after, so extensions the user builds later are not built for our arch list."""
    if "TORCH_CUDA_ARCH_LIST" in os.environ:
        yield os.environ["TORCH_CUDA_ARCH_LIST"]
        return
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch = _arch_list(capability)
    try:
        yield arch
    finally:
        os.environ.pop("TORCH_CUDA_ARCH_LIST", None)


def _forced_msg() -> str:
    return f"arr_coc: ARR_COC_KERNEL=cuda (or _override_impl='cuda') but the CUDA kernel is unavailable ({_reason})"


def load_kernel():
    """Build (once) and return the CUDA extension, or ``None`` with a single warning if it cannot be had.

    Raises:
        RuntimeError: the kernel cannot be had and ``cuda`` is forced (``ARR_COC_KERNEL`` or ``_override_impl``).
    """
    global HAS_CUDA_KERNEL, _ext, _reason, _warned
    if HAS_CUDA_KERNEL is None:
        try:
            _ext = _build()
            HAS_CUDA_KERNEL = True
        except Exception as exc:  # any failure means: use the reference
            _ext, HAS_CUDA_KERNEL, _reason = None, False, f"{type(exc).__name__}: {exc}"
            if _requested() == "cuda":
                raise RuntimeError(_forced_msg()) from exc
    if not HAS_CUDA_KERNEL:
        if _requested() == "cuda":
            raise RuntimeError(_forced_msg())
        # The one warning goes out on the first fallback, also when the failure was first met (and raised) under a
        # forced "cuda" and the caller then went back to "auto": the reference must never replace the kernel silently.
        if not _warned:
            _warned = True
            msg = f"arr_coc: CUDA kernel unavailable ({_reason}); using the pure-torch reference"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return _ext


def cuda_kernel_or_none():
    """The extension if CUDA tensors should use it now (per the override/env var and the build), else ``None``."""
    return load_kernel() if use_cuda_kernel() else None


# ----------------------------------------------------------------------------------------------------------------------
# Call-through to the extension. Callers (ops.py) have validated shapes and values; these only reshape and cast.


def _broadcast_rows(t: Tensor, shape: torch.Size, rows: tuple[int, ...]) -> Tensor:
    """``t`` broadcast to ``shape`` and viewed as ``rows``, skipping each step where ``t`` has that shape already
    (a view costs no launch, but it is a dispatch of its own: host time on every call)."""
    if t.shape != shape:
        t = t.expand(shape)
    return t if t.shape == rows else t.reshape(rows)


def _rows(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor, budget_dtype: torch.dtype):
    k = y.shape[-1]
    y2 = y if y.dim() == 2 else y.reshape(-1, k)  # (R, K)
    r, acc = y2.shape[0], _acc_dtype(y.dtype)
    b = _broadcast_rows(budget.to(budget_dtype), y.shape[:-1], (r,))  # (R,), 0-stride when the budget is a scalar
    lo2 = _broadcast_rows(lo.to(acc), y.shape, (r, k))  # (R, K) view: strides (0, 0) for a scalar bound
    hi2 = _broadcast_rows(hi.to(acc), y.shape, (r, k))
    return y2, b, lo2, hi2


def ints_exact_flag(acc: torch.dtype, *tensors: Tensor) -> Tensor:
    """:func:`ints_exact_in` as a 0-d bool tensor on the tensors' device, for a caller that reads it with others."""
    limit = 2 ** (53 if acc == torch.float64 else 24)  # every integer up to 2^(mantissa bits + 1) is exact
    maxima = [t.abs().max().to(torch.int64) for t in tensors if t.numel()]
    if not maxima:  # nothing to round (no rows): vacuously exact; torch.stack would refuse an empty list
        return torch.ones((), dtype=torch.bool, device=tensors[0].device)
    return (torch.stack(maxima) <= limit).all()


def ints_exact_in(acc: torch.dtype, *tensors: Tensor) -> bool:
    """Whether every integer in ``tensors`` is exactly a value of the float dtype ``acc`` (|v| <= 2^24 for float32).

    The kernel's rounding compares its floors with the bounds in ``acc``: past 2^24 a float32 ``hi = 16,777,217``
    reads as 16,777,216 and an entry that may still go up is passed over (the integers would differ from the
    reference's, summing to the budget all the same). Such rows take the reference rounding. One host sync.
    """
    return bool(ints_exact_flag(acc, *tensors))


def cuda_projection_forward(ext, y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor, *, path: int = 0) -> Tensor:
    """The projection on the GPU: the warp kernel for K <= 1024, the block kernel beyond (``path`` forces one)."""
    y2, b, lo2, hi2 = _rows(y, budget, lo, hi, _acc_dtype(y.dtype))
    x, _ = ext.forward(y2, b, None, lo2, hi2, 0, path)
    return x if y.dim() == 2 else x.reshape(y.shape)


def cuda_project_and_round(ext, y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor, *, path: int = 0,
                           exact: bool | None = None):
    """Projection and largest-remainder rounding in one pass (K <= 1024); beyond, the reference rounds the kernel's x.

    ``budget``, ``lo`` and ``hi`` hold integers (any dtype). ``exact``: :func:`ints_exact_in` for them if the caller
    has it (read with its checks), else computed here (one host sync). Returns ``(x, t)`` with ``t`` int64.
    """
    k = y.shape[-1]
    if exact is None and k <= WARP_MAX_K and path != 2:
        exact = ints_exact_in(_acc_dtype(y.dtype), budget, lo, hi)
    if k > WARP_MAX_K or path == 2 or not exact:
        x = cuda_projection_forward(ext, y, budget, lo, hi, path=path)
        return x, round_largest_remainder(x, budget.long(), lo.long(), hi.long())
    y2, b, lo2, hi2 = _rows(y, budget, lo, hi, _acc_dtype(y.dtype))
    bi = _broadcast_rows(budget.long(), y.shape[:-1], b.shape)
    x, t = ext.forward(y2, b, bi, lo2, hi2, 1, path)
    return (x, t) if y.dim() == 2 else (x.reshape(y.shape), t.reshape(y.shape))


def cuda_round(ext, x: Tensor, budget: Tensor, lo: Tensor, hi: Tensor, *, exact: bool | None = None,
               floored: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Largest-remainder rounding of a given ``x`` (K <= 1024; beyond, the reference). ``exact`` and ``floored``:
    :func:`ints_exact_in` and ``floor_deficit`` if the caller has them, for the reference path."""
    if x.shape[-1] > WARP_MAX_K:
        return round_largest_remainder(x, budget, lo, hi, floored)
    if exact is None:
        exact = ints_exact_in(_acc_dtype(x.dtype), budget, lo, hi)
    if not exact:
        return round_largest_remainder(x, budget, lo, hi, floored)
    x2, b, lo2, hi2 = _rows(x, budget, lo, hi, _acc_dtype(x.dtype))
    bi = _broadcast_rows(budget.long(), x.shape[:-1], b.shape)
    _, t = ext.forward(x2, b, bi, lo2, hi2, 2, 0)
    return t if x.dim() == 2 else t.reshape(x.shape)


def cuda_projection_backward(ext, x: Tensor, lo: Tensor, hi: Tensor, grad: Tensor, *, path: int = 0):
    """VJP from the saved output: ``(g_y, g_budget)`` in ``grad``'s dtype."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    r, acc = x2.shape[0], _acc_dtype(x.dtype)
    g2 = grad.to(x.dtype).expand(x.shape).reshape(r, k)
    # The kernel's free mask compares x with the bounds as x's dtype stores them (see bounds_as_stored).
    lo_x, hi_x = bounds_as_stored(lo, hi, x.dtype)
    lo2 = lo_x.expand(x.shape).reshape(r, k)
    hi2 = hi_x.expand(x.shape).reshape(r, k)
    gy, gb = ext.backward(x2, lo2, hi2, g2, path)
    return gy.reshape(x.shape).to(grad.dtype), gb.reshape(x.shape[:-1]).to(grad.dtype)
