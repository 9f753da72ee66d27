"""``uniform``: the same budget for every patch (the seed's baseline), made exact by largest-remainder rounding."""

from __future__ import annotations

import torch
from torch import Tensor

from arr_coc.allocators.registry import Allocator, register_allocator

__all__ = ["UniformAllocator"]


@register_allocator("uniform")
class UniformAllocator(Allocator):
    """Every patch gets ``budget / K`` tokens; the remainder goes to the lowest-index patches, one each."""

    def allocate(self, utility: Tensor, *, context: Tensor | None = None) -> Tensor:
        return self._project_round(torch.full(utility.shape[:2], self.budget / utility.shape[1], dtype=torch.float64,
                                              device=utility.device))

    def relaxed(self, utility: Tensor) -> Tensor:
        # Constant allocation: no gradient flows to the utility, by design. B / K lies in [lo, hi] iff B is feasible.
        # The values are unused, but checked as forward checks them (a NaN, integer or bool utility was answered).
        self._check_utility(utility)
        return torch.full_like(utility, self.budget / utility.shape[1])
