"""``mckp``: discrete token levels chosen by a multiple-choice knapsack (Sinha & Zoltners 1979; Kellerer, Pferschy &
Pisinger 2004, ch. 11).

Each patch picks one level ``c_l`` from e.g. ``(64, 128, 256, 400)`` with value ``v[k, l]``, maximising
``sum_k v[k, l_k]`` subject to ``sum_k c_{l_k} <= B`` (mode ``at_most``, the slack is reported) or ``= B`` (mode
``exact``, a ``ValueError`` when no combination of levels reaches B).

Two solvers:
- ``dp`` (default): exact dynamic programming over capacity in units of ``g = gcd`` of the level increments (and of
  ``B - K·c_0``), ``O(K·L·C)`` with ``C = (B - K·c_0)/g``: for the default levels g = 16 and C = 25. Vectorised over
  the batch and the capacity; the loop runs over patches only.
- ``lagrangian``: for a multiplier λ every patch independently takes ``argmax_l v - λ·c_l``; λ is bisected until
  the cost fits, then free capacity is filled greedily by the best value-per-token upgrade. ``O(K·L)`` per step,
  fully parallel (the GPU path); a heuristic, so ``at_most`` only.

A ``(B, K)`` utility is turned into level values with diminishing returns, ``v[k, l] = w_k · log(c_l / c_0)`` with
``w = K · softmax(utility)``, the same concave per-patch utility that ``pgd`` maximises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce
from typing import Sequence

import torch
from torch import Tensor

from arr_coc.allocators.registry import AllocInfo, Allocator, register_allocator

__all__ = ["MCKPAllocator", "MCKPSolution", "solve_mckp", "solve_mckp_dp", "solve_mckp_lagrangian", "level_values"]

_MODES = ("at_most", "exact")
_METHODS = ("dp", "lagrangian")
# DP tables above this many cells (B · K · (C+1)) are refused with advice instead of exhausting memory.
_MAX_DP_CELLS = 2_000_000_000


@dataclass(frozen=True)
class MCKPSolution:
    """A multiple-choice knapsack solution.

    Attributes:
        choice: (B, K) int64 index of each patch's level.
        tokens: (B, K) int64 tokens of each patch (``levels[choice]``).
        value: (B,) total value ``sum_k v[k, choice_k]``.
        slack: (B,) int64 ``budget - sum(tokens)`` (0 in ``exact`` mode).
    """

    choice: Tensor
    tokens: Tensor
    value: Tensor
    slack: Tensor


def _check_levels(levels: Sequence[int] | Tensor) -> list[int]:
    lv = [int(v) for v in (levels.tolist() if isinstance(levels, Tensor) else levels)]
    if not lv:
        raise ValueError("levels must not be empty")
    if any(b <= a for a, b in zip(lv, lv[1:])):
        raise ValueError(f"levels must be strictly increasing, got {lv}")
    if lv[0] < 0:
        raise ValueError(f"levels must be >= 0, got {lv}")
    return lv


def level_values(utility: Tensor, levels: Sequence[int]) -> Tensor:
    """Per-level values with diminishing returns: ``v[b, k, l] = w_bk · log(c_l / c_0)``, ``w = K·softmax(u)``.

    Shapes:
        utility: (B, K)
        returns: (B, K, L)
    """
    lv = torch.tensor(levels, dtype=utility.dtype, device=utility.device)
    base = lv[0] if levels[0] > 0 else lv.new_tensor(1.0)
    w = utility.shape[-1] * torch.softmax(utility, dim=-1)
    return w.unsqueeze(-1) * torch.log(lv.clamp_min(1.0) / base)


def _validate(values: Tensor, levels: list[int], budget: int, mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if values.dim() != 3 or values.shape[-1] != len(levels):
        raise ValueError(f"values must have shape (B, K, L={len(levels)}), got {tuple(values.shape)}")
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        i = tuple(int(v) for v in bad.nonzero()[0].tolist())
        raise ValueError(f"values contain non-finite entries; first at {i}: {values[i].item()}")
    k = values.shape[1]
    if k * levels[0] > budget:
        raise ValueError(f"infeasible: K·min(level) = {k}·{levels[0]} = {k * levels[0]} > budget={budget}")


def solve_mckp_dp(values: Tensor, levels: Sequence[int], budget: int, *, mode: str = "exact") -> MCKPSolution:
    """Exact multiple-choice knapsack by dynamic programming over capacity units.

    Args:
        values: Value of each (patch, level).
        levels: Token cost of each level, strictly increasing.
        budget: Token budget per sample.
        mode: ``"exact"`` (sum = budget, ``ValueError`` if unreachable) or ``"at_most"`` (sum <= budget).

    Shapes:
        values: (B, K, L)
    """
    lv = _check_levels(levels)
    _validate(values, lv, budget, mode)
    bsz, k, n_lv = values.shape
    dev = values.device
    free = budget - k * lv[0]
    g = reduce(math.gcd, [c - lv[0] for c in lv[1:]] + ([free] if mode == "exact" else []), 0) or 1
    if mode == "exact" and free % g:
        raise ValueError(f"exact budget {budget} unreachable: budget - K·c0 = {free} is not a multiple of {g}")
    cap = free // g
    if bsz * k * (cap + 1) > _MAX_DP_CELLS:
        raise ValueError(f"DP table of {bsz}·{k}·{cap + 1} cells is too large; use method='lagrangian'")
    steps = [(c - lv[0]) // g for c in lv]  # capacity units of each level
    v = values.double()
    dp = torch.full((bsz, cap + 1), float("-inf"), dtype=torch.float64, device=dev)
    dp[:, 0] = 0.0
    back = torch.empty((k, bsz, cap + 1), dtype=torch.int8 if n_lv < 128 else torch.int16, device=dev)
    for i in range(k):  # loop over patches only; batch and capacity are vectorised
        cand = torch.full((bsz, cap + 1, n_lv), float("-inf"), dtype=torch.float64, device=dev)
        for l, s in enumerate(steps):
            if s <= cap:
                cand[:, s:, l] = dp[:, : cap + 1 - s] + v[:, i, l : l + 1]
        # Ties go to the cheaper level: max returns the first maximal index.
        dp, arg = cand.max(-1)
        back[i] = arg.to(back.dtype)
    if mode == "exact":
        end = torch.full((bsz,), cap, dtype=torch.long, device=dev)
        if bool(torch.isinf(dp[:, cap]).any()):
            row = int(torch.isinf(dp[:, cap]).nonzero()[0])
            raise ValueError(f"exact budget {budget} is unreachable with levels {lv} for K={k} (row {row}); "
                             "use mode='at_most' to allow slack")
        best = dp[:, cap]
    else:
        best, end = dp.max(-1)
    # Backtrack: vectorised over the batch.
    choice = torch.empty((bsz, k), dtype=torch.long, device=dev)
    c = end
    steps_t = torch.tensor(steps, dtype=torch.long, device=dev)
    for i in range(k - 1, -1, -1):
        ch = back[i].long().gather(1, c[:, None]).squeeze(1)
        choice[:, i] = ch
        c = c - steps_t[ch]
    tokens = torch.tensor(lv, dtype=torch.long, device=dev)[choice]
    return MCKPSolution(choice, tokens, best.to(values.dtype), budget - tokens.sum(-1))


def solve_mckp_lagrangian(values: Tensor, levels: Sequence[int], budget: int, *, iters: int = 60) -> MCKPSolution:
    """Lagrangian relaxation + greedy repair (``at_most``; not guaranteed optimal, always within budget).

    Shapes:
        values: (B, K, L)
    """
    lv = _check_levels(levels)
    _validate(values, lv, budget, "at_most")
    bsz, k, n_lv = values.shape
    v = values.double()
    cost = torch.tensor(lv, dtype=torch.float64, device=v.device)
    # Tie-break toward cheaper levels with a tiny cost-proportional penalty.
    tie = 1e-12 * cost / cost.max().clamp_min(1)

    def pick(lam: Tensor) -> Tensor:
        return (v - lam[:, None, None] * cost - tie).argmax(-1)

    # λ_hi makes every patch take the cheapest level: the largest value gain per token is a bound.
    dv = (v[..., 1:] - v[..., :1]).clamp_min(0) / (cost[1:] - cost[0]).clamp_min(1e-12) if n_lv > 1 else v[..., :0]
    lam_hi = (dv.amax(dim=(1, 2)) if n_lv > 1 else v.new_zeros(bsz)) + 1.0
    lam_lo = torch.zeros(bsz, dtype=torch.float64, device=v.device)
    fits0 = cost[pick(lam_lo)].sum(-1) <= budget
    lam_hi = torch.where(fits0, lam_lo, lam_hi)
    for _ in range(iters):
        mid = (lam_lo + lam_hi) / 2
        fits = cost[pick(mid)].sum(-1) <= budget
        lam_hi = torch.where(fits, mid, lam_hi)
        lam_lo = torch.where(fits, lam_lo, mid)
    choice = pick(lam_hi)
    # Greedy repair: repeatedly apply the best value-per-token upgrade that still fits, all rows at once.
    ar = torch.arange(n_lv, device=v.device)
    for _ in range(k * max(n_lv - 1, 1)):
        spent = cost[choice].sum(-1)
        room = budget - spent  # (B,)
        cur_v = v.gather(-1, choice[..., None])
        cur_c = cost[choice][..., None]
        gain = v - cur_v
        extra = cost - cur_c
        ok = (ar > choice[..., None]) & (extra <= room[:, None, None]) & (gain > 0)
        ratio = torch.where(ok, gain / extra.clamp_min(1e-12), torch.full_like(gain, -1.0))
        best = ratio.flatten(1).argmax(-1)
        has = ratio.flatten(1).amax(-1) > 0
        if not bool(has.any()):
            break
        kk, ll = best // n_lv, best % n_lv
        rows = torch.arange(bsz, device=v.device)
        choice[rows[has], kk[has]] = ll[has]
    tokens = torch.tensor(lv, dtype=torch.long, device=v.device)[choice]
    value = v.gather(-1, choice[..., None]).squeeze(-1).sum(-1)
    return MCKPSolution(choice, tokens, value.to(values.dtype), budget - tokens.sum(-1))


def solve_mckp(values: Tensor, levels: Sequence[int], budget: int, *, mode: str = "exact",
               method: str = "dp") -> MCKPSolution:
    """Dispatch to :func:`solve_mckp_dp` or :func:`solve_mckp_lagrangian` (``at_most`` only)."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "lagrangian":
        if mode != "at_most":
            raise ValueError(f"method='lagrangian' is a heuristic and supports mode='at_most' only, got {mode!r}")
        return solve_mckp_lagrangian(values, levels, budget)
    return solve_mckp_dp(values, levels, budget, mode=mode)


@register_allocator("mckp")
class MCKPAllocator(Allocator):
    """Discrete levels per patch by multiple-choice knapsack.

    Args:
        levels: Allowed token counts, strictly increasing, within ``[min_tokens, max_tokens]``.
        mode: ``"exact"`` (sum = budget) or ``"at_most"`` (sum <= budget; ``last_info.slack`` reports the rest).
        method: ``"dp"`` (exact) or ``"lagrangian"`` (parallel heuristic, ``at_most`` only).
    """

    accepts_levels = True

    def __init__(self, budget: int = 13200, min_tokens: int = 64, max_tokens: int = 400, *,
                 levels: Sequence[int] = (64, 128, 256, 400), mode: str = "exact", method: str = "dp",
                 device=None, dtype=None):
        super().__init__(budget, min_tokens, max_tokens)
        self.levels = _check_levels(levels)
        if self.levels[0] < self.min_tokens or self.levels[-1] > self.max_tokens:
            raise ValueError(f"levels {self.levels} must lie within [min_tokens={self.min_tokens}, "
                             f"max_tokens={self.max_tokens}]")
        if mode not in _MODES or method not in _METHODS:
            raise ValueError(f"mode must be in {_MODES} and method in {_METHODS}; got {mode!r}, {method!r}")
        if method == "lagrangian" and mode != "at_most":
            raise ValueError("method='lagrangian' supports mode='at_most' only")
        self.mode, self.method = mode, method

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, levels={tuple(self.levels)}, mode={self.mode!r}, method={self.method!r}"

    def check_feasible(self, num_patches: int) -> None:
        k, b = num_patches, self.budget
        if k * self.levels[0] > b:
            raise ValueError(f"infeasible budget: K·min(level) = {k}·{self.levels[0]} = {k * self.levels[0]} > "
                             f"budget={b}")
        if self.mode == "exact" and k * self.levels[-1] < b:
            raise ValueError(f"infeasible budget: K·max(level) = {k}·{self.levels[-1]} = {k * self.levels[-1]} < "
                             f"budget={b}")
        if k * self.max_tokens < b:  # at_most too: a budget no allocation within [lo, hi] can reach is refused
            raise ValueError(f"infeasible budget: K·hi = {k}·{self.max_tokens} = {k * self.max_tokens} < budget={b}")

    def allocate(self, utility: Tensor, *, context: Tensor | None = None) -> Tensor:
        # Level values in float64 (the solvers' precision): formed in a half utility's own dtype, K·softmax rounded to
        # 8 bits and the knapsack picked other levels than for the same utility in float32/64 (128 tokens apart).
        values = utility if utility.dim() == 3 else level_values(utility.double(), self.levels)
        sol = solve_mckp(values, self.levels, self.budget, mode=self.mode, method=self.method)
        self.last_info = AllocInfo(slack=sol.slack, extra={"value": sol.value, "choice": sol.choice})
        return sol.tokens

    def relaxed(self, utility: Tensor) -> Tensor:
        if utility.dim() == 3:
            raise ValueError("relaxed() needs a (B, K) utility; per-level utilities have no continuous relaxation here")
        return super().relaxed(utility)
