"""``projection``: utility → capped-softmax targets ``lo + min(hi - lo, c·exp(u))`` (the free tokens shared by softmax,
water-filled under the cap; see :func:`arr_coc.allocators.registry.capped_softmax`) → Euclidean projection onto the
capped simplex → largest-remainder rounding. The projection makes the targets exactly feasible in the working precision
and is the differentiable map the gate trains through; with these targets it moves them only by float drift. (Uncapped
softmax targets ``lo + (B - K·lo)·softmax(u)`` were tried first: their Euclidean projection spreads any excess over
``hi`` equally over all patches, so a sharper utility gave a *flatter* allocation once patches saturated, which breaks
balancing's focus/compress semantics.) The default allocator: exact, bound-respecting and differentiable (its relaxation
is the projection itself, whose analytic backward trains the stages upstream through the straight-through gate)."""

from __future__ import annotations

from torch import Tensor

from arr_coc.allocators.registry import Allocator, register_allocator

__all__ = ["ProjectionAllocator"]


@register_allocator("projection")
class ProjectionAllocator(Allocator):
    """Project the capped-softmax targets onto ``{sum = budget, lo <= t <= hi}`` and round."""

    def allocate(self, utility: Tensor, *, context: Tensor | None = None) -> Tensor:
        # relaxed() without its input check: forward has checked the utility already.
        return self._round(self._project(self.softmax_targets(utility.double())))
