"""Public projection and rounding functions, registered as ``torch.library`` custom ops.

``capped_simplex_projection`` and ``round_to_budget`` validate their inputs eagerly (shapes, dtypes, devices) and then
call ``torch.ops.arr_coc.*``. Registering the ops (schema, fake impl, autograd) lets ``torch.compile(fullgraph=True)``
and FSDP trace through them, and lets a CUDA kernel replace the reference for CUDA tensors with no change to callers.
Value checks that need the data (NaN/inf, feasibility) run inside the op implementations, so they stay eager under
``torch.compile`` without graph breaks.

Each op's default implementation (CPU, and any device without its own) is the pure-torch reference; a
``register_kernel("cuda")`` implementation sends CUDA tensors to the extension in ``csrc/`` when
:func:`arr_coc.kernels.dispatch.cuda_kernel_or_none` yields it: the ``ARR_COC_KERNEL=reference|cuda`` environment
variable or the ``_override_impl`` test hook force either path, and a failed build falls back with one warning.
``project_and_round`` fuses the projection with the largest-remainder rounding (one kernel pass on CUDA).
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from arr_coc._utils import _check_finite, _check_tensor
from arr_coc.kernels import dispatch
from arr_coc.kernels.reference import (_acc_dtype, floor_deficit, free_mask, projection_backward, projection_forward,
                                      round_largest_remainder)

__all__ = ["capped_simplex_projection", "project_and_round", "round_to_budget"]

_Number = int | float


# ----------------------------------------------------------------------------------------------------------------------
# Value checks shared by every implementation (they read the data, so they live inside the ops).


def _row_sum(t: Tensor, shape: torch.Size, *, absolute: bool = False) -> Tensor:
    """float64 sum over the last dim of ``t`` broadcast to ``shape``, shaped ``shape[:-1]``.

    A bound that is constant along the last dim (a scalar, or size 1 there) sums to ``K * t`` exactly as a caller
    computing ``budget = K * lo`` would, without materialising ``R * K`` doubles; only per-element bounds are summed.
    """
    t = t.double()
    if absolute:
        t = t.abs()
    if t.dim() == 0 or t.shape[-1] == 1:
        return (t.squeeze(-1) * shape[-1]).expand(shape[:-1])  # squeeze(-1) leaves a 0-d tensor as it is
    return t.expand(shape).sum(-1)


def _slack(y: Tensor, mag, k: int):
    """Feasibility slack for float budgets: a few ulps of the working precision times ``mag`` = max(sum|lo|,
    sum|hi|) (budget = K·lo computed in floats must not be "infeasible"), plus the absolute resolution of subnormals:
    each of the K bounds and the budget may have been rounded to the working dtype's subnormal grid (budget = K·lo
    with lo ~ 1e-44 in float32 is feasible). ``mag`` is a tensor (per row) or a float."""
    # The working precision is the accumulation dtype (float32 for half inputs): the budget and bounds are numbers or
    # float32, so a bf16 y's 2^-8 would let a budget thousands of tokens outside [sum(lo), sum(hi)] through.
    fi = torch.finfo(_acc_dtype(y.dtype) if y.is_floating_point() else torch.float64)
    return 4 * fi.eps * mag + (k + 1) * fi.smallest_normal * fi.eps


def _feasibility(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(too_low, too_high, sum(lo), sum(hi))`` per row: the budget outside ``[sum(lo), sum(hi)]`` beyond the slack."""
    # Feasibility in float64 so that the check itself adds no rounding: sum(lo) <= B <= sum(hi).
    lo_sum, hi_sum = _row_sum(lo, y.shape), _row_sum(hi, y.shape)
    b = budget.double().expand(y.shape[:-1])
    if budget.is_floating_point():
        mag = torch.maximum(_row_sum(lo, y.shape, absolute=True), _row_sum(hi, y.shape, absolute=True))
        slack = _slack(y, mag, y.shape[-1])
        return b < lo_sum - slack, b > hi_sum + slack, lo_sum, hi_sum
    return b < lo_sum, b > hi_sum, lo_sum, hi_sum


def _constant_value(t: Tensor) -> Tensor | None:
    """A 0-d view of ``t``'s single value when every element is that value by layout (0-d, or all strides 0)."""
    if t.dim() == 0:
        return t
    if t.numel() > 0 and all(st == 0 for st in t.stride()):
        return t.as_strided((), ())
    return None


def _half_acc(t: Tensor) -> torch.dtype | None:
    """The dtype a finiteness sum of ``t`` runs in: float32 for half types (no overflow at 65,504), else its own."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None


class _Fetched(NamedTuple):
    ok: bool  # every value check passed (False: run the detailed checks, which name the problem)
    flags: list[bool]  # the caller's extra device flags, in order
    exact: bool | None  # dispatch.ints_exact_in(exact_in, budget, lo, hi) when exact_in was given


def _bounds_look_ok(y: Tensor, vals: list[float], budget_is_float: bool) -> bool:
    """The value checks on ``[sum(y), min(budget), max(budget), lo, hi]`` for a constant lo and hi: a per-row budget
    is feasible in every row iff its smallest and largest are (the slack is the same for every row)."""
    _, b_min, b_max, lov, hiv = vals
    if not all(math.isfinite(v) for v in vals) or lov > hiv:  # min/max propagate NaN, so this sees any non-finite
        return False
    k = y.shape[-1]
    lo_sum, hi_sum = lov * k, hiv * k  # what _row_sum gives for a constant bound
    slack = _slack(y, max(abs(lov) * k, abs(hiv) * k), k) if budget_is_float else 0.0
    return not (b_min < lo_sum - slack or b_max > hi_sum + slack)


def _ints_exact_host(acc: torch.dtype, vals: list[float]) -> bool | None:
    """:func:`dispatch.ints_exact_in` on integers read back as float64 (exact up to 2^53): None where that reading is
    ambiguous (a value that reads as 2^53 against float64's limit may be 2^53 + 1)."""
    limit = 2 ** (53 if acc == torch.float64 else 24)
    m = max(abs(v) for v in vals)
    return None if m == limit == 2 ** 53 else m <= limit


def _fetch_checks(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor, extra: Sequence[Tensor] = (),
                  exact_in: torch.dtype | None = None) -> _Fetched:
    """Every value check of :func:`_check_values`, the caller's ``extra`` flags (0-d bool tensors) and, given
    ``exact_in``, :func:`dispatch.ints_exact_in` for the budget and bounds, in ONE host sync (a sync per check cost
    ~0.7 ms per call on an H100).

    With a constant lo and hi (the common call) the checks run on the host on five numbers (sum(y), the budget's
    min and max, lo, hi) fetched with the flags; otherwise as device-side flags. ``ok`` False sends the caller to
    the detailed checks, which find and name the problem (or, for a float sum that overflowed with every element
    finite, pass)."""
    c_lo, c_hi, c_b = _constant_value(lo), _constant_value(hi), _constant_value(budget)
    host = bool(y.numel()) and c_lo is not None and c_hi is not None
    exact_flag = []
    if host:
        y_sum = y.sum(dtype=_half_acc(y))
        b_min, b_max = (c_b, c_b) if c_b is not None else (budget.amin(), budget.amax())
        # Integers (the rounding ops) are read in float64 as the general path sums them (exact up to 2^53).
        parts = [y_sum if budget.is_floating_point() else y_sum.double(), b_min, b_max, c_lo, c_hi]
    else:
        # Sums of the float tensors (finite iff every element is, unless the sum overflows) and the other checks as
        # flags; one stack reads them all (promoted to the widest float: exact).
        parts = [t.sum(dtype=_half_acc(t)) for t in (y, budget, lo, hi) if t.is_floating_point() and t.numel()]
        too_low, too_high, _, _ = _feasibility(y, budget, lo, hi)
        parts += [(lo > hi).any(), too_low.any(), too_high.any()]
        if exact_in is not None:
            exact_flag = [dispatch.ints_exact_flag(exact_in, budget, lo, hi)]
    n = len(parts)
    vals = torch.stack([*parts, *extra, *exact_flag]).tolist()  # all 0-d
    head, flags = vals[:n], [bool(v) for v in vals[n:]]
    if host:
        ok = _bounds_look_ok(y, head, budget.is_floating_point())
        exact = None
        if exact_in is not None:
            exact = _ints_exact_host(exact_in, head[1:])
            if exact is None:
                exact = dispatch.ints_exact_in(exact_in, budget, lo, hi)
    else:
        n_sums = n - 3
        ok = all(math.isfinite(v) for v in head[:n_sums]) and not any(head[n_sums:])
        exact = flags.pop() if exact_in is not None else None
    return _Fetched(ok, flags, exact)


def _values_look_ok(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> bool:
    """Whether every value check of :func:`_check_values` passes (one host sync; see :func:`_fetch_checks`)."""
    return _fetch_checks(y, budget, lo, hi).ok


def _check_values(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor, *, what: str = "y", extra: Sequence[Tensor] = (),
                  exact_in: torch.dtype | None = None) -> _Fetched:
    """Raise on NaN/inf, lo > hi or an infeasible budget, naming the value; returns :func:`_fetch_checks`' result
    (the ``extra`` flags and the integers' exactness, read in the same host sync)."""
    fetched = _fetch_checks(y, budget, lo, hi, extra, exact_in)
    if fetched.ok:
        return fetched
    for name, t in ((what, y), ("budget", budget), ("lo", lo), ("hi", hi)):
        if t.is_floating_point():
            _check_finite(name, t)
    lo_b, hi_b = torch.broadcast_tensors(lo, hi)
    if bool((lo_b > hi_b).any()):
        i = tuple(int(v) for v in (lo_b > hi_b).nonzero()[0].tolist())
        raise ValueError(f"lo > hi at index {i}: lo={lo_b[i].item()}, hi={hi_b[i].item()}")
    too_low, too_high, lo_sum, hi_sum = _feasibility(y, budget, lo, hi)
    b = budget.double().expand(y.shape[:-1])
    for bad, bound, rel in ((too_low, lo_sum, "K·lo = sum(lo)"), (too_high, hi_sum, "K·hi = sum(hi)")):
        if bool(bad.any()):
            i = tuple(int(v) for v in bad.nonzero()[0].tolist())
            k = y.shape[-1]
            raise ValueError(
                f"infeasible budget at row {i}: budget={b[i].item():g} but {rel}={bound[i].item():g} "
                f"(K={k}); need sum(lo) <= budget <= sum(hi)"
            )
    return fetched


# ----------------------------------------------------------------------------------------------------------------------
# The projection op. The default implementation (CPU and any other device) is the reference; CUDA tensors get the
# kernel through ``register_kernel("cuda")`` unless the override/env var or a failed build sends them to the reference.


def _projection_cuda(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    ext = dispatch.cuda_kernel_or_none()
    if ext is None:
        return projection_forward(y, budget, lo, hi)
    return dispatch.cuda_projection_forward(ext, y, budget, lo, hi)


def _projection_impl(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    return _projection_cuda(y, budget, lo, hi) if y.is_cuda else projection_forward(y, budget, lo, hi)


def project_unchecked(y: Tensor, budget: float, lo: float, hi: float) -> Tensor:
    """No-grad projection without value checks, for solvers whose iterates are feasible by construction."""
    # Budget and bounds in the accumulation dtype, as the checked op takes them: in a bf16 y's own dtype a budget of
    # 13,200 would become 13,184.
    acc = _acc_dtype(y.dtype)
    return _projection_impl(y, _constant(budget, acc, y.device).expand(y.shape[:-1]), _constant(lo, acc, y.device),
                            _constant(hi, acc, y.device))


@torch.library.custom_op("arr_coc::capped_simplex_projection", mutates_args=())
def _projection_op(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    _check_values(y, budget, lo, hi)
    # Every implementation returns contiguous outputs, and the fakes say so: a transposed y must get the same strides
    # from the real op as from its fake (torch.compile's inductor checks them).
    return projection_forward(y, budget, lo, hi).contiguous()


@_projection_op.register_kernel("cuda")
def _(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    _check_values(y, budget, lo, hi)
    return _projection_cuda(y, budget, lo, hi).contiguous()


@_projection_op.register_fake
def _(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    return y.new_empty(y.shape)


@torch.library.custom_op("arr_coc::capped_simplex_projection_backward", mutates_args=())
def _projection_backward_op(x: Tensor, lo: Tensor, hi: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    gy, gb = projection_backward(x, lo, hi, grad)
    return gy.contiguous(), gb.contiguous()


@_projection_backward_op.register_kernel("cuda")
def _(x: Tensor, lo: Tensor, hi: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    ext = dispatch.cuda_kernel_or_none()
    if ext is None:
        gy, gb = projection_backward(x, lo, hi, grad)
    else:
        gy, gb = dispatch.cuda_projection_backward(ext, x, lo, hi, grad)
    return gy.contiguous(), gb.contiguous()


@_projection_backward_op.register_fake
def _(x: Tensor, lo: Tensor, hi: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    return grad.new_empty(grad.shape), grad.new_empty(grad.shape[:-1])


def _setup_context(ctx, inputs, output) -> None:
    _, budget, lo, hi = inputs
    # Only the output and the bounds are needed: the active set is read off x itself (DESIGN.md, Backward).
    ctx.save_for_backward(output, lo, hi)
    ctx.budget_dtype = budget.dtype


def _backward(ctx, grad: Tensor):
    x, lo, hi = ctx.saved_tensors
    g_y, g_b = _call_backward(x, lo, hi, grad)
    return g_y, g_b.to(ctx.budget_dtype), None, None


_projection_op.register_autograd(_backward, setup_context=_setup_context)


class _ProjectionFunction(torch.autograd.Function):
    """The same op and backward for ``torch.func`` transforms (grad, vjp, jacrev, vmap over them).

    ``register_autograd`` wraps the op in an ``autograd.Function`` without a ``setup_context`` staticmethod, which
    functorch refuses (pytorch/pytorch#168393, #179652); this one has it. ``forward`` runs with grad mode off, so the
    op's own autograd records nothing, and vmap of either pass batches the op by PyTorch's per-row fallback.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.ops.arr_coc.capped_simplex_projection(y, budget, lo, hi)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _setup_context(ctx, inputs, output)
        ctx.save_for_forward(output, inputs[2], inputs[3])

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _backward(ctx, grad)

    @staticmethod
    def jvp(ctx, dy: Tensor | None, db: Tensor | None, dlo: Tensor | None, dhi: Tensor | None) -> Tensor:
        # The Jacobian J = diag(m) - m mᵀ/n is symmetric, so J dy is the backward applied to dy; the budget adds
        # its column m/n times db. The bounds' tangents are not used: the projection is differentiated in y and the
        # budget only, as in the backward (functorch hands zero tangents for constant bounds, e.g. in hessian).
        x, lo, hi = ctx.saved_tensors
        dx = torch.zeros_like(x) if dy is None else _call_backward(x, lo, hi, dy)[0]
        return dx if db is None else dx + _budget_column(x, lo, hi, db).to(dx.dtype)


def _setup_context_bwd(ctx, inputs, output) -> None:
    x, lo, hi, grad = inputs
    ctx.save_for_backward(x, lo, hi)
    ctx.grad_dtype = grad.dtype


def _backward_bwd(ctx, gg_y: Tensor | None, gg_b: Tensor | None):
    # Double backward. The VJP is linear in grad, g_y = J grad and g_B = (m/n)·grad with J = m ⊙ (I - m 1ᵀ/n)
    # symmetric, and its mask is piecewise constant in x (no gradient for x). So its own VJP for grad is
    # J gg_y + (m/n) gg_B: the projection's backward again, plus the budget's column.
    x, lo, hi = ctx.saved_tensors
    g = None
    if gg_y is not None:
        g, _ = _call_backward(x, lo, hi, gg_y)
    if gg_b is not None:
        gb = _budget_column(x, lo, hi, gg_b)
        g = gb if g is None else g + gb
    return None, None, None, None if g is None else g.to(ctx.grad_dtype)


def _budget_column(x: Tensor, lo: Tensor, hi: Tensor, v: Tensor) -> Tensor:
    """``(m / n)·v``: the Jacobian's budget column times a per-row ``v`` (0 on rows with an empty free set)."""
    acc = _acc_dtype(x.dtype)
    m, n = free_mask(x, lo, hi)
    n = n.clamp_min(1).to(acc)
    return torch.where(m, v.to(acc).unsqueeze(-1) / n, torch.zeros_like(n))


_projection_backward_op.register_autograd(_backward_bwd, setup_context=_setup_context_bwd)


def _call_backward(x: Tensor, lo: Tensor, hi: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    return (_ProjectionBackwardFunction.apply if _functorch_active() else _projection_backward_op)(x, lo, hi, grad)


def _functorch_active() -> bool:
    # is_compiling() first: dynamo folds it, so a compiled caller never meets the functorch query (no graph break).
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


class _ProjectionBackwardFunction(torch.autograd.Function):
    """The backward op with its double backward, for ``torch.func`` transforms (see :class:`_ProjectionFunction`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, lo: Tensor, hi: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ops.arr_coc.capped_simplex_projection_backward(x, lo, hi, grad)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _setup_context_bwd(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:3])

    @staticmethod
    def backward(ctx, gg_y: Tensor | None, gg_b: Tensor | None):
        return _backward_bwd(ctx, gg_y, gg_b)

    @staticmethod
    def jvp(ctx, dx: Tensor | None, dlo: Tensor | None, dhi: Tensor | None, dgrad: Tensor | None):
        # Linear in grad, and its mask is piecewise constant in x: the tangent is the backward of dgrad.
        x, lo, hi = ctx.saved_tensors
        if dgrad is None:
            return torch.zeros_like(x), x.new_zeros(x.shape[:-1])
        return _call_backward(x, lo, hi, dgrad)


# ----------------------------------------------------------------------------------------------------------------------
# The rounding op (integer output, no gradient).


def _check_roundable(x: Tensor, budget: Tensor, lo: Tensor, hi: Tensor, *, exact_in: torch.dtype | None = None
                     ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], bool | None]:
    """Raise unless ``x`` is a point of the capped simplex that rounds to ``budget`` exactly; returns its
    :func:`floor_deficit` (the rounding's first step, computed once) and, given ``exact_in``, whether the integers are
    exact in that dtype (:func:`dispatch.ints_exact_in`). Every check is a device-side flag read in one host sync with
    the value checks; the errors are raised in the order the checks are listed."""
    xd, bd = x.double(), budget.double()
    lo_f, hi_f = lo.to(x.dtype), hi.to(x.dtype)
    # Drift allowance: float32 sums of K ~ 200 values land ~1e-3 off; a point stored in a half type (a bf16 projection)
    # is further off, up to half an ulp per entry: 0.5 * eps(dtype) * sum|x|. Anything further is not a projected x.
    # The allowance is the projection's own acceptance bound (|sum x - B| <= 1e-3 B, issue 4), so any projection that
    # meets its spec rounds; a tighter one would reject a GPU kernel's in-spec output.
    # Per row: a row with a small budget must not inherit the allowance of the batch's largest row.
    tol_b = torch.maximum(1e-3 * bd.abs().clamp_min(1.0), 0.5 * torch.finfo(x.dtype).eps * xd.abs().sum(-1))
    lo_tol = 1e-4 * lo_f.abs().clamp_min(1.0)
    hi_tol = 1e-4 * hi_f.abs().clamp_min(1.0)
    below = x < lo_f - lo_tol
    above = x > hi_f + hi_tol
    x_sum = xd.sum(-1)
    far = (x_sum - bd).abs() > tol_b + 1e-6 * x.shape[-1]
    floored = floor_deficit(xd, budget, lo, hi)  # floor_deficit reads x as float64: the same numbers
    stuck = _deficit_stuck(floored)
    fetched = _check_values(x, budget, lo, hi, what="x", extra=[below.any(), above.any(), far.any(), stuck.any()],
                            exact_in=exact_in)
    any_below, any_above, any_far, any_stuck = fetched.flags
    for flagged, bad, word in ((any_below, below, "below lo"), (any_above, above, "above hi")):
        if flagged:
            i = tuple(int(v) for v in bad.nonzero()[0].tolist())
            raise ValueError(f"x is {word} at index {i}: x={x[i].item()}; project x onto the bounds first")
    if any_far:
        i = tuple(int(v) for v in far.nonzero()[0].tolist())
        raise ValueError(
            f"x sums to {x_sum[i].item():.6g} at row {i} but budget is {bd[i].item():g}; "
            "round_to_budget expects x on the capped simplex (call capped_simplex_projection first)"
        )
    if any_stuck:
        _raise_stuck(xd, budget, floored, stuck)
    return floored, fetched.exact


def _deficit_stuck(floored: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """Rows whose deficit largest-remainder rounding cannot place (see :func:`_check_deficit`)."""
    _, d, n_up, n_down = floored
    return (d > n_up) | (-d > n_down)


def _raise_stuck(x: Tensor, budget: Tensor, floored: tuple[Tensor, Tensor, Tensor, Tensor], stuck: Tensor) -> None:
    _, d, n_up, n_down = floored
    i = tuple(int(v) for v in stuck.nonzero()[0].tolist())
    di, bi = int(d[i]), int(budget[i])
    way, movable, which = ("up", int(n_up[i]), "below hi") if di > 0 else ("down", int(n_down[i]), "above lo")
    raise ValueError(
        f"x sums to {x.double().sum(-1)[i].item():.6g} at row {i} but budget is {bi}: the floors sum to {bi - di}, "
        f"so {abs(di)} unit(s) must go {way}, but largest-remainder rounding can move only {movable} unit(s) "
        f"(one per entry {which}, K={x.shape[-1]}); round_to_budget expects x on the capped simplex "
        "(call capped_simplex_projection first)"
    )


def _check_deficit(x: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Raise unless largest-remainder rounding of ``x`` can hit ``budget`` exactly.

    The rounding moves each entry by at most one unit from ``f = clamp(floor(x), lo, hi)``, so it reaches the budget
    exactly when ``-n_down <= D = budget - sum(f) <= n_up`` (``n_up``: entries with ``f < hi``, ``n_down``: entries
    with ``f > lo``). A point on the capped simplex always satisfies this up to float drift far below one unit
    (``D = sum(x - f) + (budget - sum(x))`` and each remainder is below 1); a violation means ``x`` is not one, and
    rounding it would return a wrong sum. This is the same ``D`` the reference and the CUDA kernel compute.
    """
    floored = floor_deficit(x, budget, lo, hi)
    stuck = _deficit_stuck(floored)
    if bool(stuck.any()):
        _raise_stuck(x, budget, floored, stuck)
    return floored


@torch.library.custom_op("arr_coc::round_to_budget", mutates_args=())
def _round_op(x: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    floored, _ = _check_roundable(x, budget, lo, hi)
    return round_largest_remainder(x, budget, lo, hi, floored).contiguous()


@_round_op.register_kernel("cuda")
def _(x: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    # The kernel's exactness test (dispatch.ints_exact_in) rides on the checks' host sync.
    floored, exact = _check_roundable(x, budget, lo, hi, exact_in=_acc_dtype(x.dtype))
    ext = dispatch.cuda_kernel_or_none()
    if ext is None:
        return round_largest_remainder(x, budget, lo, hi, floored).contiguous()
    return dispatch.cuda_round(ext, x, budget, lo, hi, exact=exact, floored=floored).contiguous()


@_round_op.register_fake
def _(x: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    return torch.empty(x.shape, dtype=torch.int64, device=x.device)


# ----------------------------------------------------------------------------------------------------------------------
# Projection fused with rounding: one pass on CUDA (the kernel rounds the x it has just written, as stored).


def _project_and_round_ref(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    acc = _acc_dtype(y.dtype)
    x = projection_forward(y, budget.to(acc), lo.to(acc), hi.to(acc))
    floored = _check_deficit(x, budget, lo, hi)  # cannot fire for a projected x; guards the exact sum all the same
    return x, round_largest_remainder(x, budget, lo, hi, floored)


def _check_rounded(x: Tensor, t: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> None:
    # The fused kernel rounds the x it has just written, so nothing can be checked before it runs; one reduction of
    # its integers afterwards keeps "the sum is the budget, exactly" a guarantee rather than an expectation.
    sums = t.sum(-1)
    miss = sums != budget
    outside = (t < lo) | (t > hi)
    if bool(miss.any() | outside.any()):
        # A half-type x far from 0 (bf16 >= 512) can leave more units to place than entries below hi: the reference
        # path refuses it before rounding; the kernel's result is caught here, naming the row and the numbers.
        _check_deficit(x, budget, lo, hi)
        if bool(outside.any()):
            i = tuple(int(v) for v in outside.nonzero()[0].tolist())
            lo_b, hi_b = torch.broadcast_to(lo, t.shape), torch.broadcast_to(hi, t.shape)
            raise ValueError(f"rounding at index {i} gave {int(t[i])}, outside [{int(lo_b[i])}, {int(hi_b[i])}]")
        i = tuple(int(v) for v in miss.nonzero()[0].tolist())
        raise ValueError(f"rounding at row {i} sums to {int(sums[i])}, not the budget {int(budget[i])}")


@torch.library.custom_op("arr_coc::project_and_round", mutates_args=())
def _project_and_round_op(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    _check_values(y, budget, lo, hi)
    x, t = _project_and_round_ref(y, budget, lo, hi)
    return x.contiguous(), t.contiguous()


@_project_and_round_op.register_kernel("cuda")
def _(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    # The kernel's exactness test (dispatch.ints_exact_in) rides on the value checks' host sync.
    exact = _check_values(y, budget, lo, hi, exact_in=_acc_dtype(y.dtype)).exact
    ext = dispatch.cuda_kernel_or_none()
    if ext is None:
        x, t = _project_and_round_ref(y, budget, lo, hi)
        return x.contiguous(), t.contiguous()
    x, t = dispatch.cuda_project_and_round(ext, y, budget, lo, hi, exact=exact)
    _check_rounded(x, t, budget, lo, hi)
    return x.contiguous(), t.contiguous()


@_project_and_round_op.register_fake
def _(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    return y.new_empty(y.shape), torch.empty(y.shape, dtype=torch.int64, device=y.device)


def _setup_context_pr(ctx, inputs, output) -> None:
    _, _, lo, hi = inputs
    ctx.save_for_backward(output[0], lo, hi)


def _backward_pr(ctx, grad_x: Tensor, grad_t):
    # The integer output carries no gradient; x has the projection's (the budget is integer: no gradient either).
    x, lo, hi = ctx.saved_tensors
    g_y, _ = _projection_backward_op(x, lo, hi, grad_x)
    return g_y, None, None, None


_project_and_round_op.register_autograd(_backward_pr, setup_context=_setup_context_pr)


# ----------------------------------------------------------------------------------------------------------------------
# Public wrappers: static checks and argument normalisation (no data-dependent control flow: compile-friendly).


# Python-number budgets and bounds as 0-d tensors, kept per (value, dtype, device): on a GPU, torch.tensor(v, device=..)
# is a blocking host-to-device copy, i.e. a stream sync, and a call took three. The least recently used entry goes
# when the cache is full (a long run meets many budgets); dropping it while a queued kernel still reads it is safe, as
# for any tensor freed on its own stream (the caching allocator reuses the block only for work queued after). Made
# outside inference mode so autograd may save them. Not while tracing (dynamo, fake or proxy tensors under a
# dispatch mode): those get fresh tensors, as before.
_CONSTANTS: OrderedDict[tuple, Tensor] = OrderedDict()
_MAX_CONSTANTS = 256


def _constant(v: _Number, dtype: torch.dtype, device: torch.device) -> Tensor:
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None or device.type == "meta":
        return torch.tensor(v, dtype=dtype, device=device)
    key = (float(v).hex() if isinstance(v, float) else int(v), dtype, device)  # hex: -0.0 is not 0.0
    t = _CONSTANTS.get(key)
    if t is not None:
        _CONSTANTS.move_to_end(key)
        return t
    with torch.inference_mode(False):
        t = torch.tensor(v, dtype=dtype, device=device)
    _CONSTANTS[key] = t
    while len(_CONSTANTS) > _MAX_CONSTANTS:
        _CONSTANTS.popitem(last=False)
    return t


def _as_tensor(name: str, v: Tensor | _Number, like: Tensor, dtype: torch.dtype) -> Tensor:
    if isinstance(v, Tensor):
        if v.device != like.device:
            raise ValueError(f"{name} is on {v.device} but y is on {like.device}")
        return v
    if not isinstance(v, (bool, int, float)) and isinstance(v, numbers.Real):  # NumPy scalars (np.float32 was refused)
        v = int(v) if isinstance(v, numbers.Integral) else float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name} must be a number or a tensor, got {type(v).__name__}: {v!r}")
    if not dtype.is_floating_point and not -(2 ** 63) <= v < 2 ** 63:
        raise ValueError(f"{name}={v!r} does not fit in {dtype}")
    if dtype.is_floating_point:
        big = torch.finfo(dtype).max
        try:
            too_big = math.isfinite(v) and abs(v) > big  # an int past float64's range raises OverflowError here
        except OverflowError:
            too_big = True
        if too_big:  # it would become inf and be reported as "non-finite inf", not as the number given
            raise ValueError(f"{name}={v!r} does not fit in {dtype} (max {big:g})")
    return _constant(v, dtype, like.device)


def _prepare(y: Tensor, budget, lo, hi, *, name: str, int_bounds: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if int_bounds:  # budget and bounds must be integers: Python ints or integer tensors (widened to int64)
        budget, lo, hi = (_check_integral(nm, v) for nm, v in (("budget", budget), ("lo", lo), ("hi", hi)))
    _check_tensor(name, y)
    if not y.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {y.dtype}")
    if not int_bounds:
        _check_bound_dtypes(y, budget=budget, lo=lo, hi=hi)
    if y.dim() < 1 or y.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., K) with K >= 1, got {tuple(y.shape)}")
    dt = torch.int64 if int_bounds else _acc_dtype(y.dtype)
    b = _as_tensor("budget", budget, y, dt)
    lo_t = _as_tensor("lo", lo, y, dt)
    hi_t = _as_tensor("hi", hi, y, dt)
    for nm, t in (("lo", lo_t), ("hi", hi_t)):
        shape = _broadcast_shape(t.shape, y.shape)
        if shape is None:
            raise ValueError(f"{nm} of shape {tuple(t.shape)} does not broadcast to {name}'s {tuple(y.shape)}")
        if shape != tuple(y.shape):
            raise ValueError(f"{nm} of shape {tuple(t.shape)} would enlarge {name}'s shape {tuple(y.shape)}")
    if _broadcast_shape(b.shape, y.shape[:-1]) != tuple(y.shape[:-1]):
        raise ValueError(f"budget of shape {tuple(b.shape)} does not broadcast to the row shape {tuple(y.shape[:-1])}")
    return y, b.expand(y.shape[:-1]), lo_t, hi_t


def _broadcast_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """The broadcast of two shapes, or None where they do not broadcast. Same answer as ``torch.broadcast_shapes``,
    without its tracing machinery: 3.8 µs against 78 µs a call (timeit, this 2-core CPU); the five calls per
    allocation were ~20% of a small allocator call (cProfile, B=32, K=16)."""
    n = max(len(a), len(b))
    out = []
    for x, y in zip((1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)):
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return tuple(out)


def capped_simplex_projection(y: Tensor, budget: Tensor | _Number, lo: Tensor | _Number,
                              hi: Tensor | _Number) -> Tensor:
    """Euclidean projection of each row of ``y`` onto ``{x : sum(x) = budget, lo <= x <= hi}``.

    Exact (the root ``tau`` of the piecewise-linear budget equation, refined to the closed form on its active set),
    vectorised over rows, differentiable in ``y`` and ``budget`` with the analytic backward
    ``g_y = m * (g - mean_F(g))``, ``g_budget = mean_F(g)`` where ``F`` holds the coordinates strictly inside bounds.

    Args:
        y: Points to project. Any float dtype; half types are solved in fp32.
        budget: Row sums, a number or a tensor (of ``y``'s dtype) broadcastable to the row shape ``(...)``.
        lo: Lower bounds, a number or a tensor (of ``y``'s dtype) broadcastable to ``y``.
        hi: Upper bounds, a number or a tensor (of ``y``'s dtype) broadcastable to ``y``.

    Returns:
        The projection, same shape and dtype as ``y``.

    Raises:
        ValueError: non-float ``y``, shapes that do not broadcast, tensors on another device or of another dtype
            than ``y`` (half ``y`` also takes float32), NaN/inf anywhere, ``lo > hi``, or an infeasible budget
            (``sum(lo) > budget`` or ``sum(hi) < budget``), naming the values.

    Shapes:
        y: (..., K)
        budget: () or (...)
        lo, hi: broadcastable to (..., K)
        returns: (..., K)
    """
    for name, t in (("lo", lo), ("hi", hi)):
        if isinstance(t, Tensor) and t.requires_grad:
            raise ValueError(f"{name} requires grad, but the projection has no gradient for its bounds (only for y "
                             f"and budget); pass {name}.detach() if the bounds are constants")
    y, b, lo_t, hi_t = _prepare(y, budget, lo, hi, name="y", int_bounds=False)
    if _functorch_active():
        return _ProjectionFunction.apply(y, b, lo_t, hi_t)
    return torch.ops.arr_coc.capped_simplex_projection(y, b, lo_t, hi_t)


def _check_bound_dtypes(y: Tensor, **tensors) -> None:
    # A tensor budget/bound must already be in y's dtype; half y may also pass them in float32, the precision it is
    # solved in. Anything else would be converted silently (float64 bounds rounded to float32, an int64 budget cast).
    ok = {y.dtype, _acc_dtype(y.dtype)}
    for nm, v in tensors.items():
        if isinstance(v, Tensor) and v.dtype not in ok:
            also = f" (or {_acc_dtype(y.dtype)})" if len(ok) > 1 else ""
            raise ValueError(f"{nm} has dtype {v.dtype} but y has dtype {y.dtype}; pass {nm} as a tensor of y's "
                             f"dtype{also} or as a Python number")


def _check_integral(name: str, v):
    """An integer budget/bound as an ``int`` or an int64 tensor; floats, even whole ones, are refused."""
    if isinstance(v, Tensor):
        if v.is_floating_point() or v.is_complex() or v.dtype == torch.bool:
            shown = v.flatten()[0].item() if v.numel() and v.device.type != "meta" else "?"
            raise ValueError(f"{name} must be an integer tensor, got dtype {v.dtype} (value {shown}); "
                             "pass integers (e.g. .round().long() if that is intended)")
        return v.long()
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    raise ValueError(f"{name} must be an integer (int or integer tensor), got {type(v).__name__}: {v!r}")


def round_to_budget(x: Tensor, budget: Tensor | int, lo: Tensor | int, hi: Tensor | int) -> Tensor:
    """Largest-remainder rounding of a capped-simplex point to integers that hit ``budget`` exactly.

    ``f = floor(x)``; the ``budget - sum(f)`` entries with the largest remainders (among those below ``hi``) get one
    more, ties going to the lower index; if float drift makes that count negative, the smallest remainders above
    ``lo`` give one back. The result sums to ``budget`` exactly in int64 and keeps ``lo <= t <= hi``.

    Args:
        x: A point on the capped simplex, e.g. the output of :func:`capped_simplex_projection`.
        budget: Integer row sums: an int or an integer tensor broadcastable to ``(...)`` (floats are refused).
        lo: Integer lower bounds (int or integer tensor) broadcastable to ``x``.
        hi: Integer upper bounds (int or integer tensor) broadcastable to ``x``.

    Returns:
        int64 tensor shaped like ``x``.

    Raises:
        ValueError: ``budget``/``lo``/``hi`` that are not ints or integer tensors (whole floats included), ``x``
            outside the bounds or far from the budget, an ``x`` whose floors leave more units to move than there are
            entries free to move (rounding could not hit the budget), NaN/inf, ``lo > hi`` or an infeasible budget.

    Shapes:
        x: (..., K)
        returns: (..., K) int64
    """
    x, b, lo_t, hi_t = _prepare(x, budget, lo, hi, name="x", int_bounds=True)
    return torch.ops.arr_coc.round_to_budget(x, b, lo_t, hi_t)


def project_and_round(
    y: Tensor, budget: Tensor | int, lo: Tensor | int, hi: Tensor | int
) -> tuple[Tensor, Tensor]:
    """Projection onto the capped simplex and largest-remainder rounding of the result, fused on CUDA.

    Equal to ``x = capped_simplex_projection(y, budget, lo, hi)`` followed by ``round_to_budget(x, budget, lo, hi)``
    on the same ``x`` (bit-for-bit on the integers), in one kernel pass on CUDA for ``K <= 1024``. ``x`` is
    differentiable in ``y`` (the projection's backward); ``t`` is an integer tensor and carries no gradient.

    Args:
        y: Points to project. Any float dtype; half types are solved in fp32.
        budget: Integer row sums: an int or an integer tensor broadcastable to ``(...)`` (floats are refused).
        lo: Integer lower bounds (int or integer tensor) broadcastable to ``y``.
        hi: Integer upper bounds (int or integer tensor) broadcastable to ``y``.

    Returns:
        ``(x, t)``: the projection (dtype of ``y``) and its rounding (int64), both shaped like ``y``.

    Raises:
        ValueError: as :func:`capped_simplex_projection`, and for ``budget``/``lo``/``hi`` that are not ints or
            integer tensors.

    Shapes:
        y: (..., K)
        returns: (..., K), (..., K) int64
    """
    y, b, lo_t, hi_t = _prepare(y, budget, lo, hi, name="y", int_bounds=True)
    return torch.ops.arr_coc.project_and_round(y, b, lo_t, hi_t)
