"""``threshold``: patches whose utility clears a threshold get ``max_tokens``, the rest ``min_tokens`` (the seed's
baseline). Those targets rarely sum to the budget, so they are projected onto the capped simplex (an equal shift of
every unsaturated patch) and rounded, which makes the baseline budget-exact without breaking a bound."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from arr_coc.allocators.registry import Allocator, register_allocator

__all__ = ["ThresholdAllocator"]


@register_allocator("threshold")
class ThresholdAllocator(Allocator):
    """Binary high/low allocation around a utility threshold.

    Args:
        threshold: Utility above which a patch is "relevant". ``None`` uses each row's mean utility.
        temperature: Width of the sigmoid used by :meth:`relaxed` (the straight-through surrogate).
    """

    def __init__(self, budget: int = 13200, min_tokens: int = 64, max_tokens: int = 400, *,
                 threshold: float | None = None, temperature: float = 0.1, device=None, dtype=None):
        super().__init__(budget, min_tokens, max_tokens)
        if not temperature > 0:  # NaN too: it made every relaxed() value NaN
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if threshold is not None and not math.isfinite(threshold):  # a NaN threshold put every patch at min_tokens
            raise ValueError(f"threshold must be finite or None, got {threshold}")
        self.threshold, self.temperature = threshold, temperature

    def _thr(self, utility: Tensor) -> Tensor:
        if self.threshold is None:
            return utility.mean(-1, keepdim=True)
        return torch.full_like(utility[..., :1], self.threshold)

    def allocate(self, utility: Tensor, *, context: Tensor | None = None) -> Tensor:
        # Compared in float64: a half utility's row mean is rounded to the half type, which moved patches near the
        # mean across the threshold (not so for the same values in float32/64).
        utility = utility.double()
        high = utility >= self._thr(utility)
        targets = torch.where(high, float(self.max_tokens), float(self.min_tokens)).double()
        return self._project_round(targets)

    def relaxed(self, utility: Tensor) -> Tensor:
        self._check_utility(utility)  # a NaN utility gave NaN targets, an inf one "y contains ... nan"
        soft = torch.sigmoid((utility - self._thr(utility)) / self.temperature)
        return self._project(self.min_tokens + soft * (self.max_tokens - self.min_tokens))
