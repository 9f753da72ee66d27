"""Pure-torch reference for the capped-simplex projection, its backward, and largest-remainder rounding.

This module is the numerical truth that the CUDA kernel is checked against; it always imports and runs on any device.

The projection of ``y`` onto ``C = {x : sum(x) = B, lo <= x <= hi}`` is ``x_i = clip(y_i - tau, lo_i, hi_i)`` where
``tau`` solves ``s(tau) = sum_i clip(y_i - tau, lo_i, hi_i) = B`` (Held, Wolfe & Crowder 1974; Helgason, Kennington &
Lall 1980). ``s`` is continuous, non-increasing and piecewise linear with slope ``-|F|`` (``F``: coordinates strictly
inside their bounds), so we find ``tau`` with a bracketed, safeguarded Newton iteration: every Newton step on a
piecewise-linear function is exact once the active set is right, and the bracket (plus forced bisection every few
steps) guarantees progress where Newton would stall. No sort is used: sorting R×K rows dominates at scale (DESIGN.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bounds_as_stored", "floor_deficit", "free_mask", "projection_forward", "projection_backward",
           "round_largest_remainder"]

# Every _BISECT_EVERY-th iteration is a plain bisection so the bracket provably shrinks even where Newton cycles.
_BISECT_EVERY = 8
_MAX_ITERS = 256
# Rows are checked for convergence every few iterations: on GPU each check is a host sync.
_CHECK_EVERY = 2


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types accumulate in fp32; fp64 stays fp64.
    return torch.float64 if dtype == torch.float64 else torch.float32



def projection_forward(y: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Project rows of ``y`` onto the capped simplex, vectorised over rows.

    Inputs must already be validated and broadcast: ``lo``/``hi`` broadcastable to ``y``, ``budget`` of shape
    ``y.shape[:-1]``, all finite and feasible.

    Shapes:
        y: (..., K)
        budget: (...)
        lo, hi: broadcastable to (..., K)
        returns: (..., K), dtype of ``y``
    """
    # The reference is the truth the kernel is checked against, so it solves in float64 whatever the input and rounds
    # once at the end: float32 sums of K values cannot resolve the budget equation better than ~K ulps, which at the
    # degenerate presets (budget = sum(lo)) would leave 1e-5-relative errors.
    acc = torch.float64
    yf, lof, hif = y.to(acc), lo.to(acc).expand_as(y), hi.to(acc).expand_as(y)
    bf = budget.to(acc).unsqueeze(-1)  # (..., 1)
    # Bracket: s(t_low) = sum(hi) >= B and s(t_high) = sum(lo) <= B.
    t_low = (yf - hif).amin(-1, keepdim=True)
    t_high = (yf - lof).amax(-1, keepdim=True)
    bracket = t_low.abs() + t_high.abs()  # the midpoint and width below stay finite while this does
    # Start from the root of the all-free model, sum(y - tau) = B: exact when no bound is active, and a far better
    # first point than the bracket's midpoint when few are.
    tau = ((yf.sum(-1, keepdim=True) - bf) / y.shape[-1]).clamp(t_low, t_high)
    eps = torch.finfo(acc).eps
    # Tolerance on s(tau) - B: a few ulps of the magnitudes being summed, plus the spacing of the subnormal grid per
    # summed term (not finfo.tiny, the smallest normal 2.2e-308: it accepted sums 1% off a budget of 1e-307).
    tiny = (y.shape[-1] + 1) * torch.finfo(acc).smallest_normal * eps
    done = torch.zeros_like(tau, dtype=torch.bool)
    for it in range(_MAX_ITERS):
        z = yf - tau
        x = torch.minimum(torch.maximum(z, lof), hif)
        resid = x.sum(-1, keepdim=True) - bf  # s(tau) - B, > 0 means tau too small
        free = ((z > lof) & (z < hif)).sum(-1, keepdim=True)
        # A bracket collapsed to float resolution also pins the root: tau cannot be represented any closer.
        width = t_high - t_low
        # Converged when the residual is at the rounding level of the sum itself (a few ulps of sum|x|).
        tol = 4 * eps * (x.abs().sum(-1, keepdim=True) + bf.abs()) + tiny
        done = done | (resid.abs() <= tol) | (width <= 4 * eps * torch.maximum(t_low.abs(), t_high.abs()))
        if it % _CHECK_EVERY == 0 and bool(done.all()):
            break
        t_low = torch.where(resid > 0, tau, t_low)
        t_high = torch.where(resid < 0, tau, t_high)
        mid = 0.5 * (t_low + t_high)
        newton = tau + resid / free.clamp_min(1).to(acc)
        ok = (free > 0) & (newton > t_low) & (newton < t_high) & (it % _BISECT_EVERY != _BISECT_EVERY - 1)
        step = torch.where(ok, newton, mid)
        # Converged rows keep their tau; a collapsed bracket also means the root is pinned to float resolution.
        tau = torch.where(done, tau, step)
    z = yf - tau
    x = torch.minimum(torch.maximum(z, lof), hif)
    # Final exact step: with the active set F fixed, the root is closed-form. Keep it wherever it does not make the
    # budget residual worse (it can only overshoot if F changes across a breakpoint).
    free_mask = (z > lof) & (z < hif)
    n_free = free_mask.sum(-1, keepdim=True)
    resid = x.sum(-1, keepdim=True) - bf
    tau2 = tau + resid / n_free.clamp_min(1).to(acc)
    x2 = torch.minimum(torch.maximum(yf - tau2, lof), hif)
    better = ((x2.sum(-1, keepdim=True) - bf).abs() <= resid.abs()) & (n_free > 0)
    x = torch.where(better, x2, x)
    # Values within ~4K of float64's max overflow the sums above (the tolerance, the bracket's midpoint) and leave a
    # wrong x, silently. Such rows are solved again scaled by 2^-64: the projection is positively homogeneous and a
    # power of two scales exactly (only magnitudes below ~2^-1010, under those rows' resolution, lose bits).
    over = ~torch.isfinite(4 * (tol + bracket))
    if bool(over.any()):
        s = 2.0 ** -64
        xs = projection_forward(yf * s, budget.to(acc) * s, lo.to(acc) * s, hi.to(acc) * s) / s
        x = torch.where(over, torch.minimum(torch.maximum(xs, lof), hif), x)
    return x.to(y.dtype)


def free_mask(x: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The projection's free set read off its output: ``m`` (entries strictly inside their bounds as ``x``'s dtype
    stores them, :func:`bounds_as_stored`) and its size per row ``n`` (..., 1)."""
    xf = x.to(_acc_dtype(x.dtype))
    lo_x, hi_x = bounds_as_stored(lo, hi, x.dtype)
    m = (xf > lo_x) & (xf < hi_x)
    return m, m.sum(-1, keepdim=True)


def projection_backward(x: Tensor, lo: Tensor, hi: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """Vector-Jacobian product of the projection, from its output only.

    With ``m`` the mask of coordinates strictly inside their bounds and ``n = sum(m)``:
    ``g_y = m * (g - sum(m * g) / n)`` and ``g_B = sum(m * g) / n``; both are 0 on rows with ``n = 0``.

    ``x`` is compared with the bounds as ``x``'s dtype stores them (:func:`bounds_as_stored`): a clamped entry of a
    bf16 projection holds ``bf16(lo)``, which differs from a float32 ``lo = 0.1``, and comparing with the float32
    bound would call every clamped entry free. What the output alone cannot tell apart is a free entry within half an
    ulp of a bound (rounded onto it when stored); it counts as clamped, as the saved-output design implies.

    Shapes:
        x, grad: (..., K)
        lo, hi: broadcastable to (..., K)
        returns: g_y (..., K), g_budget (...)
    """
    acc = _acc_dtype(x.dtype)
    g = grad.to(acc)
    m, n = free_mask(x, lo, hi)
    mean_free = torch.where(m, g, torch.zeros_like(g)).sum(-1, keepdim=True) / n.clamp_min(1).to(acc)
    mean_free = torch.where(n > 0, mean_free, torch.zeros_like(mean_free))
    g_y = torch.where(m, g - mean_free, torch.zeros_like(g))
    return g_y.to(grad.dtype), mean_free.squeeze(-1).to(grad.dtype)


def bounds_as_stored(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The bounds as an output of ``dtype`` holds them, in the accumulation dtype: the values a clamped entry has.

    The forward clamps in float64 and rounds once to ``dtype``, so an entry clamped to ``lo`` holds ``lo`` rounded to
    ``dtype``; the backward's free mask must compare with that, not with ``lo`` itself (a no-op for float32/64 ``x``
    with bounds of the same or a narrower dtype).
    """
    acc = _acc_dtype(dtype)
    return lo.to(dtype).to(acc), hi.to(dtype).to(acc)


def floor_deficit(x: Tensor, budget: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The start of largest-remainder rounding: ``f = clamp(floor(x), lo, hi)`` and ``D = budget - sum(f)``.

    Also returns how many entries can go up (``f < hi``) and down (``f > lo``): rounding, which moves each entry by at
    most one unit, hits the budget exactly iff ``-n_down <= D <= n_up``.

    Shapes:
        x: (..., K) float
        budget: (...) int64
        lo, hi: broadcastable to (..., K), int64
        returns: f (..., K) int64; D, n_up, n_down (...) int64
    """
    lo_b, hi_b = lo.expand_as(x), hi.expand_as(x)
    # floor can fall one below lo (or the clamp can trim hi + drift): bring it back inside; the deficit is re-added
    # through D, so no mass is lost.
    f = torch.floor(x.double()).long()
    f = torch.minimum(torch.maximum(f, lo_b), hi_b)
    deficit = budget - f.sum(-1)  # (...) int64
    return f, deficit, (f < hi_b).sum(-1), (f > lo_b).sum(-1)


def round_largest_remainder(x: Tensor, budget: Tensor, lo: Tensor, hi: Tensor,
                            floored: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """Largest-remainder rounding of a feasible ``x`` to int64 that sums to ``budget`` exactly and keeps the bounds.

    ``f = floor(x)``; the ``D = budget - sum(f)`` largest remainders among entries with ``f < hi`` get +1 (ties go to
    the lower index). If float drift makes ``D`` negative, the ``-D`` smallest remainders among entries with
    ``f > lo`` get -1. Inputs are validated by the caller: ``x`` within the bounds up to drift and
    ``-n_down <= D <= n_up`` (see :func:`floor_deficit`), without which the sum would miss the budget. A caller that
    has checked this passes the :func:`floor_deficit` of the same inputs as ``floored``, so it is not computed twice.

    Shapes:
        x: (..., K) float
        budget: (...) int64
        lo, hi: broadcastable to (..., K), int64
        returns: (..., K) int64
    """
    lo_b, hi_b = lo.expand_as(x), hi.expand_as(x)
    xd = x.double()
    f, deficit, _, _ = floor_deficit(x, budget, lo, hi) if floored is None else floored
    rem = (xd - f.double()).clamp(0.0, 1.0)
    k = x.shape[-1]
    idx = torch.arange(k, device=x.device)
    # Stable sort keeps the lower index first among equal keys: the deterministic tie-break.
    up_key = torch.where(f < hi_b, rem, torch.full_like(rem, -1.0))
    order = torch.sort(up_key, dim=-1, descending=True, stable=True).indices
    rank_up = torch.empty_like(order).scatter_(-1, order, idx.expand_as(order))
    down_key = torch.where(f > lo_b, rem, torch.full_like(rem, 2.0))
    order = torch.sort(down_key, dim=-1, descending=False, stable=True).indices
    rank_down = torch.empty_like(order).scatter_(-1, order, idx.expand_as(order))
    d = deficit.unsqueeze(-1)
    add = (rank_up < d) & (d > 0)
    sub = (rank_down < -d) & (d < 0)
    return f + add.long() - sub.long()
