"""Classic allocation utilities with their guarantees: max-min fair water-filling, exact 0/1 knapsack by dynamic
programming, the density-greedy knapsack heuristic, and the multi-dimensional 0/1 knapsack as a MILP.

* :func:`max_min_fair` — progressive filling / water-filling (Bertsekas & Gallager, *Data Networks*, 1992, §6.5).
  Returns the unique (weighted) max-min fair allocation: every user gets ``min(d_i, w_i L)`` for one water level L,
  the capacity is used up whenever total demand exceeds it, and no allocation can be raised without lowering one that
  is already smaller (relative to its weight). O(n log n).
* :func:`knapsack_dp` — exact 0/1 knapsack for integer weights, O(n C) time and memory (Bellman 1957).
* :func:`knapsack_greedy` — items by value density, then the better of that packing and the single best item that
  fits: at least half the optimum (the "modified greedy", Korte & Vygen, *Combinatorial Optimization*, §17.1).
  Works with real weights, O(n log n).
* :func:`multidim_knapsack` — ``max vᵀx s.t. Rᵀx ≤ B, x ∈ {0,1}ⁿ`` solved exactly by HiGHS through
  ``scipy.optimize.milp`` (relative gap 0), used by the constrained Thompson sampler in :mod:`arr_coc.bandits.librex`.

All functions accept tensors, arrays or sequences and return CPU torch tensors. Shapes: n items/users, R resources.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor

from ._validate import _check_int, _check_positive, _check_real

__all__ = ["max_min_fair", "knapsack_dp", "knapsack_greedy", "multidim_knapsack"]


def _as_array(name: str, x: object, ndim: int) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dim(s), got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s), first at {idx}: {arr[idx]}")
    return arr


def _check_nonneg(name: str, arr: np.ndarray) -> None:
    if (arr < 0).any():
        idx = tuple(int(i) for i in np.argwhere(arr < 0)[0])
        raise ValueError(f"{name} must be >= 0; found {arr[idx]} at {idx}")


def max_min_fair(capacity: float, demands, weights=None) -> Tensor:
    """Weighted max-min fair share of a divisible ``capacity`` by water-filling.

    Args:
        capacity: total amount to share (>= 0).
        demands: what each user asks for (>= 0).
        weights: positive user weights (default all 1); user i receives ``min(d_i, w_i * L)``.

    Returns:
        float64 allocation; sums to ``min(capacity, Σ demands)``.

    Shapes:
        demands, weights, output: ``(n,)``.
    """
    capacity = _check_real("capacity", capacity, low=0.0)
    d = _as_array("demands", demands, 1)
    _check_nonneg("demands", d)
    w = np.ones_like(d) if weights is None else _as_array("weights", weights, 1)
    if w.shape != d.shape:
        raise ValueError(f"weights shape {w.shape} does not match demands shape {d.shape}")
    if (w <= 0).any():
        raise ValueError(f"weights must be > 0; found {w[w <= 0][0]} at index {int(np.argmax(w <= 0))}")
    if d.sum() <= capacity:
        return torch.from_numpy(d.copy())
    # Users sorted by saturation level q = d/w. If the first j are satisfied, the level for the rest is
    # L_j = (C - Σ_{i<j} d_i) / Σ_{i>=j} w_i; the answer uses the first j whose q_j exceeds L_j.
    order = np.argsort(d / w, kind="stable")
    q, ds, ws = (d / w)[order], d[order], w[order]
    sat_demand = np.concatenate([[0.0], np.cumsum(ds)[:-1]])
    rest_weight = np.cumsum(ws[::-1])[::-1]
    levels = (capacity - sat_demand) / rest_weight
    j = int(np.argmax(q > levels))  # exists because Σd > C
    level = levels[j]
    return torch.from_numpy(np.minimum(d, w * level))


def _knapsack_items(values, weights) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(n,)`` value and non-negative weight arrays of a 0/1 knapsack."""
    v = _as_array("values", values, 1)
    w = _as_array("weights", weights, 1)
    if w.shape != v.shape:
        raise ValueError(f"weights shape {w.shape} does not match values shape {v.shape}")
    _check_nonneg("weights", w)
    return v, w


def knapsack_dp(values, weights, capacity: int) -> tuple[Tensor, float]:
    """Exact 0/1 knapsack by dynamic programming over integer capacities.

    Args:
        values: item values (items with value <= 0 are never taken).
        weights: non-negative integer item weights.
        capacity: non-negative integer capacity C.

    Returns:
        ``(take, best)``: bool mask of chosen items and their total value. Ties go to the packing found first.

    Shapes:
        values, weights, take: ``(n,)``.
    """
    v, w = _knapsack_items(values, weights)
    if (w != np.round(w)).any():
        raise ValueError(f"knapsack_dp needs integer weights; found {w[w != np.round(w)][0]}")
    n, cap = v.shape[0], _check_int("capacity", capacity, min_value=0)
    wi = w.astype(np.int64)
    best = np.zeros(cap + 1)
    took = np.zeros((n, cap + 1), dtype=bool)
    # One vectorised pass per item over all capacities (the classic row-by-row DP, in place from the old row).
    for i in range(n):
        if v[i] <= 0 or wi[i] > cap:
            continue
        cand = np.full(cap + 1, -np.inf)
        cand[wi[i]:] = best[: cap + 1 - wi[i]] + v[i]
        better = cand > best
        took[i] = better
        best = np.where(better, cand, best)
    take = np.zeros(n, dtype=bool)
    c = cap
    for i in range(n - 1, -1, -1):  # backtrack
        if took[i, c]:
            take[i] = True
            c -= wi[i]
    return torch.from_numpy(take), float(best[cap])


def knapsack_greedy(values, weights, capacity: float) -> tuple[Tensor, float]:
    """Density-greedy 0/1 knapsack with the single-best-item safeguard; value >= OPT / 2.

    Args:
        values: item values (items with value <= 0 are never taken).
        weights: non-negative real weights.
        capacity: non-negative real capacity.

    Returns:
        ``(take, value)``: bool mask and total value.

    Shapes:
        values, weights, take: ``(n,)``.
    """
    v, w = _knapsack_items(values, weights)
    capacity = _check_real("capacity", capacity, low=0.0)
    useful = v > 0
    density = np.where(w > 0, v / np.where(w > 0, w, 1.0), np.inf)
    order = np.argsort(-density, kind="stable")
    take = np.zeros(v.shape[0], dtype=bool)
    used = 0.0
    for i in order:  # a scan over items, which the prefix structure of the packing makes inherently sequential
        if useful[i] and used + w[i] <= capacity:
            take[i] = True
            used += w[i]
    total = float(v[take].sum())
    fits = useful & (w <= capacity)
    if fits.any():
        j = int(np.argmax(np.where(fits, v, -np.inf)))
        if v[j] > total:
            take = np.zeros_like(take)
            take[j] = True
            total = float(v[j])
    return torch.from_numpy(take), total


def multidim_knapsack(values, requests, budget, *, time_limit: float | None = None) -> Tensor:
    """Exact multi-dimensional 0/1 knapsack ``max vᵀx s.t. requestsᵀx ≤ budget`` via HiGHS (``scipy.optimize.milp``).

    Args:
        values: item values.
        requests: non-negative resource use of each item.
        budget: non-negative capacity of each resource.
        time_limit: optional HiGHS time limit in seconds (then the result may be suboptimal but stays feasible).

    Returns:
        bool mask of chosen items; ``requests[mask].sum(0) <= budget`` holds exactly, up to the float rounding of that
        sum (the solver's own tolerance is not relied on).

    Shapes:
        values: ``(n,)``; requests: ``(n, R)``; budget: ``(R,)``; output: ``(n,)``.
    """
    v = _as_array("values", values, 1)
    req = _as_array("requests", requests, 2)
    b = _as_array("budget", budget, 1)
    if req.shape[0] != v.shape[0]:
        raise ValueError(f"requests has {req.shape[0]} rows but values has {v.shape[0]} items")
    if req.shape[1] != b.shape[0]:
        raise ValueError(f"requests has {req.shape[1]} resources but budget has {b.shape[0]}")
    _check_nonneg("requests", req)
    _check_nonneg("budget", b)
    if time_limit is not None:
        time_limit = _check_positive("time_limit", time_limit)
    return torch.from_numpy(_solve_milp(v, req, b, time_limit=time_limit))


def _solve_milp(v: np.ndarray, req: np.ndarray, b: np.ndarray, *, time_limit: float | None = None,
                forced: np.ndarray | None = None, divisible: bool = False) -> np.ndarray:
    """Knapsack ``max vᵀx s.t. reqᵀx <= b`` over ``x ∈ {0,1}ⁿ`` (bool mask out) or, with ``divisible``, ``x ∈ [0,1]ⁿ``.

    ``forced`` gives lower bounds on x: a bool mask (``x_i = 1``) or, when divisible, float lower bounds in [0, 1].
    HiGHS accepts a constraint violation of about 1e-6 in absolute terms, so each resource row is divided by its
    budget before solving (the tolerance becomes relative to the budget, whatever the units), and an item that needs
    a resource whose budget is 0 is fixed at 0. The 0/1 answer is then checked exactly (:func:`_repair_take`); the
    divisible (LP) solution is clipped to [0, 1] and scaled down by at most the solver's tolerance where it would
    overrun the budget, so ``reqᵀx <= b`` holds up to float rounding.
    """
    n = v.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float64 if divisible else bool)
    lo = np.zeros(n) if forced is None else forced.astype(np.float64)
    rows, blocked = _budget_rows(req, b)
    if np.any(blocked & (lo > 0)):
        i = int(np.nonzero(blocked & (lo > 0))[0][0])
        raise RuntimeError(f"item {i} is forced but needs a resource whose budget is 0")
    hi = np.where(blocked, 0.0, 1.0)
    options = {} if divisible else {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    constraints = [LinearConstraint(rows, -np.inf, 1.0)] if rows.shape[0] else []
    res = milp(-v, constraints=constraints, integrality=np.zeros(n) if divisible else np.ones(n),
               bounds=Bounds(lo, hi), options=options)
    if res.x is None:
        raise RuntimeError(f"HiGHS found no feasible point (status {res.status}: {res.message})")
    if not divisible:
        return _repair_take(res.x > 0.5, v, req, b, forced)
    return _fit_fractions(np.minimum(res.x, hi), req, b)


def _budget_rows(req: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The resource constraints ``rows @ x <= 1`` with each row divided by its budget, and the items they block.

    HiGHS's feasibility tolerance is absolute (~1e-6), so dividing by the budget makes it relative to each budget,
    whatever the units. A resource whose budget is 0 gets no row; an item that needs it is ``blocked`` (fix it at 0).
    Returns ``(rows (R', n), blocked (n,) bool)``.
    """
    pos = b > 0
    return req[:, pos].T / b[pos, None], np.any(req[:, ~pos] > 0, axis=1)


def _fits(take: np.ndarray, req: np.ndarray, b: np.ndarray) -> bool:
    """Whether the served requests fit the budget, up to the float rounding of their sum (n·ε·Σ|r| per resource)."""
    used = req[take].sum(0)
    slack = take.sum() * np.finfo(np.float64).eps * np.abs(req[take]).sum(0)
    return bool(np.all(used <= b + slack))


def _repair_take(take: np.ndarray, v: np.ndarray, req: np.ndarray, b: np.ndarray,
                 forced: np.ndarray | None = None) -> np.ndarray:
    """Make a 0/1 solution fit exactly: drop unforced items, lowest value first, while the budget is overrun.

    The solver's relative feasibility tolerance (about 1e-6 of each budget) can admit an item that overruns the
    budget by that much; this restores ``reqᵀx <= b`` at the cost of that item.
    """
    take = take.copy()
    keep = np.zeros_like(take) if forced is None else forced.astype(bool)
    while not _fits(take, req, b):
        droppable = np.nonzero(take & ~keep)[0]
        if droppable.size == 0:
            raise RuntimeError("the forced items alone overrun the budget")
        take[droppable[np.argmin(v[droppable])]] = False
    return take


def _fit_fractions(x: np.ndarray, req: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Clip LP fractions to [0, 1] (zeroing solver noise) and scale them into the budget if they overrun it."""
    x = np.clip(x, 0.0, 1.0)
    x[x < 1e-12] = 0.0
    used = req.T @ x
    over = used > b
    if over.any():
        x = x * float(np.min(np.where(over, b / np.where(over, used, 1.0), 1.0)))
    return x
