"""``hierarchical``: regions first, then the patches within each region (coarse-to-fine allocation).

The patch grid is tiled into rectangular regions of ``region_size`` patches. Region utility is the log-sum-exp of its
patches' utilities (a soft maximum: one very relevant patch makes its region relevant). Stage 1 projects the capped
softmax of the region utilities onto the regions' capped simplex (bounds ``m·lo .. m·hi`` for ``m`` patches per region)
and rounds to integers; stage 2 does the same for each region's patches with that region's integer total as the budget,
and rounds again. Both stages are exact, so the whole is budget-exact and bound-respecting, and both are batched: every
(sample, region) pair is one row of a single projection call.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from arr_coc._utils import _check_patch_grid, _grid_pair
from arr_coc.allocators.registry import Allocator, capped_softmax, register_allocator
from arr_coc.kernels import capped_simplex_projection, round_to_budget

__all__ = ["HierarchicalAllocator"]


@register_allocator("hierarchical")
class HierarchicalAllocator(Allocator):
    """Two-level allocation over a ``(rows, cols)`` patch grid.

    Args:
        patch_grid: Patch layout ``(Gh, Gw)``; ``None`` uses the most square factorisation of K.
        region_size: Patches per region ``(rh, rw)``; must divide the grid.
    """

    def __init__(self, budget: int = 13200, min_tokens: int = 64, max_tokens: int = 400, *,
                 patch_grid: Sequence[int] | None = None, region_size: Sequence[int] = (2, 2), device=None, dtype=None):
        super().__init__(budget, min_tokens, max_tokens)
        # Checked as two ints here: tuple() of a bare int raised a TypeError ('int' object is not iterable).
        self.patch_grid = _grid_pair(patch_grid) if patch_grid is not None else None
        # Each entry checked as an integer: int() truncated (1.5, 2) to (1, 2) and took True for 1.
        self.region_size = _grid_pair(region_size, "region_size")

    def _to_regions(self, u: Tensor) -> tuple[Tensor, tuple[int, int, int, int]]:
        """(B, K) → (B, R, m) with regions in row-major order, plus the grid geometry."""
        gh, gw = _check_patch_grid(self.patch_grid, u.shape[1])
        rh, rw = self.region_size
        if gh % rh or gw % rw:
            raise ValueError(f"region_size {self.region_size} does not tile the patch grid ({gh}, {gw})")
        b = u.shape[0]
        r = u.reshape(b, gh // rh, rh, gw // rw, rw).permute(0, 1, 3, 2, 4)  # (B, GH, GW, rh, rw)
        return r.reshape(b, (gh // rh) * (gw // rw), rh * rw), (gh, gw, rh, rw)

    @staticmethod
    def _from_regions(r: Tensor, geo: tuple[int, int, int, int]) -> Tensor:
        gh, gw, rh, rw = geo
        b = r.shape[0]
        r = r.reshape(b, gh // rh, gw // rw, rh, rw).permute(0, 1, 3, 2, 4)  # (B, GH, rh, GW, rw)
        return r.reshape(b, gh * gw)

    def _region_stage(self, u: Tensor, integer: bool) -> tuple[Tensor, Tensor, tuple]:
        ur, geo = self._to_regions(u)  # (B, R, m)
        m = ur.shape[-1]
        lo, hi = m * self.min_tokens, m * self.max_tokens
        targets = capped_softmax(torch.logsumexp(ur, dim=-1), float(self.budget), float(lo), float(hi))  # (B, R)
        x = capped_simplex_projection(targets, float(self.budget), float(lo), float(hi))
        return (round_to_budget(x, self.budget, lo, hi) if integer else x), ur, geo

    def _patch_stage(self, totals: Tensor, ur: Tensor) -> Tensor:
        b, r, m = ur.shape
        flat = ur.reshape(b * r, m)
        budget = totals.reshape(b * r).to(flat.dtype)  # one row per (sample, region), its integer total as budget
        return self._project(capped_softmax(flat, budget, float(self.min_tokens), float(self.max_tokens)), budget)

    def allocate(self, utility: Tensor, *, context: Tensor | None = None) -> Tensor:
        u = utility.double()
        totals, ur, geo = self._region_stage(u, integer=True)
        x = self._patch_stage(totals, ur)
        t = self._round(x, totals.reshape(-1))
        return self._from_regions(t.reshape(ur.shape), geo)

    def relaxed(self, utility: Tensor) -> Tensor:
        self._check_utility(utility)  # a NaN utility gave NaN targets, an inf one "y contains ... nan"
        # Half-precision utilities (autocast, bf16 weights) are solved in float32: the region totals feed the patch
        # stage as budgets, and 13,200 in bf16 is 13,184.
        utility = utility.to(torch.promote_types(utility.dtype, torch.float32))
        totals, ur, geo = self._region_stage(utility, integer=False)
        return self._from_regions(self._patch_stage(totals, ur).reshape(ur.shape), geo)
