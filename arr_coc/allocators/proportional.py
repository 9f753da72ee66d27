"""``proportional``: the free tokens (``budget - K·min_tokens``) are shared in proportion to the utility (the seed's
baseline), then projected so that ``max_tokens`` holds and rounded so that the sum is exact."""

from __future__ import annotations

import torch
from torch import Tensor

from arr_coc.allocators.registry import Allocator, register_allocator

__all__ = ["ProportionalAllocator"]


@register_allocator("proportional")
class ProportionalAllocator(Allocator):
    """``t_k = lo + (B - K·lo) · w_k / sum(w)`` with ``w = utility - min(utility)`` (uniform when all are equal)."""

    def _targets(self, utility: Tensor) -> Tensor:
        k = utility.shape[-1]
        w = utility - utility.min(-1, keepdim=True).values
        total = w.sum(-1, keepdim=True)
        share = torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), torch.full_like(w, 1.0 / k))
        return self.min_tokens + (self.budget - k * self.min_tokens) * share

    def allocate(self, utility: Tensor, *, context: Tensor | None = None) -> Tensor:
        return self._project_round(self._targets(utility.double()))

    def relaxed(self, utility: Tensor) -> Tensor:
        # Checked here: NaN fails `total > 0` and -inf makes every share NaN, so both became the uniform share silently.
        self._check_utility(utility)
        return self._project(self._targets(utility))
