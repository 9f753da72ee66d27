"""``projection``: utility → softmax targets ``lo + (budget - K·lo) · softmax(u)`` → Euclidean projection onto the
capped simplex → largest-remainder rounding. The default allocator: exact, bound-respecting and differentiable (its relaxation is the
projection itself, whose analytic backward trains the stages upstream through the straight-through gate)."""

from __future__ import annotations

import torch
from torch import Tensor

from arr_coc.allocators.registry import Allocator, register_allocator

__all__ = ["ProjectionAllocator"]


@register_allocator("projection")
class ProjectionAllocator(Allocator):
    """Project ``lo + (budget - K·lo) · softmax(utility)`` onto ``{sum = budget, lo <= t <= hi}`` and round."""

    def allocate(self, utility: Tensor, *, context: Tensor | None = None) -> Tensor:
        return self._round(self.relaxed(utility.double()))
