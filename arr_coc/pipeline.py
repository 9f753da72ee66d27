"""``ArrCoc``: knowing → balancing → attending → realizing, as one drop-in ``nn.Module``.

Given the fine feature grid of every patch and a query embedding, the layer scores each patch three ways (Knowing),
balances the scores into one utility (Balancing), gives every patch an integer token budget that sums exactly to the
total (the registered allocator), and turns each patch's features into exactly that many positioned tokens
(Realizing). Budgets are integers, so training uses a straight-through gate (Bengio, Léonard & Courville 2013): each
patch's tokens are multiplied by ``g = 1 + (a - stopgrad(a))``, whose value is 1 and whose gradient is that of the
allocator's continuous relaxation ``a`` (for ``projection``, the capped-simplex projection with its analytic
backward), so the loss on the tokens reaches the knowing and balancing parameters.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from arr_coc._utils import _check_int, _check_ndim, _check_patch_grid, _check_same_device, _check_tensor
from arr_coc.allocators import Allocator, create_allocator
from arr_coc.balancing import Balancing
from arr_coc.knowing import Knowing
from arr_coc.realizing import Realizing

__all__ = ["ArrCoc", "ArrCocOutput"]


@dataclass(frozen=True)
class ArrCocOutput:
    """What the layer hands to the language model, plus the intermediate decisions.

    Attributes:
        tokens: (B, T, D) visual tokens, padded; T = max_b sum_k budgets[b, k].
        mask: (B, T) bool, True for real tokens.
        positions: (B, T, 2) token centres (row, col) in [0, 1] image coordinates.
        budgets: (B, K) int64 tokens per patch.
        scores: (B, K, 3) standardised (propositional, perspectival, participatory) relevance.
        utility: (B, K) balanced utility.
        patch_index: (B, T) int64 source patch of each token, -1 at padding.
        cu_seqlens: (B + 1,) int32 cumulative token counts, for variable-length attention.
        relaxed: (B, K) the continuous allocation behind the straight-through gate (None when not used).
        context: (B, K, C) the detached per-patch context a learning allocator (``bandit``) chose with, so a trainer
            can credit rewards to it; None for allocators that use no context.
    """

    tokens: Tensor
    mask: Tensor
    positions: Tensor
    budgets: Tensor
    scores: Tensor
    utility: Tensor
    patch_index: Tensor
    cu_seqlens: Tensor
    relaxed: Tensor | None = None
    context: Tensor | None = None

    def packed(self) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens ``(ΣT, D)``, positions ``(ΣT, 2)`` and ``cu_seqlens`` ``(B+1,)`` for variable-length attention."""
        return self.tokens[self.mask], self.positions[self.mask], self.cu_seqlens


class ArrCoc(nn.Module):
    """Query-aware visual token budget layer. Defaults are the ARR-COC-0-1 preset (K=200, 13,200 tokens, 64..400).

    Args:
        dim: Feature width D of the patch tokens (also the output token width).
        query_dim: Width Dq of the query embedding.
        num_patches: K, the number of patches per image.
        budget: Exact total tokens per image.
        min_tokens: Fewest tokens per patch.
        max_tokens: Most tokens per patch.
        allocator: A registered allocator name (see :func:`arr_coc.list_allocators`) or an :class:`Allocator`.
        allocator_kwargs: Extra keyword arguments for :func:`arr_coc.create_allocator`.
        patch_grid: ``(Gh, Gw)`` patch layout; ``None``: most square factorisation of K.
        attn_dim: Width of the participatory query/key projections.
        num_prototypes: Codebook size of the feature-entropy score.
        hist_bins: Grey-level bins of the pixel-entropy score.
        straight_through: Gate tokens with the allocator's relaxation so gradients reach knowing and balancing.
        identity_init: Start the participatory projections as identities (needs ``query_dim == dim``).

    Shapes:
        features: (B, K, h, w, D)
        query: (B, Dq)
        pixels: (B, 3, H, W)
        uncertainty: (B, K)
    """

    def __init__(self, dim: int, query_dim: int, *, num_patches: int = 200, budget: int = 13200, min_tokens: int = 64,
                 max_tokens: int = 400, allocator: str | Allocator = "projection",
                 allocator_kwargs: dict[str, Any] | None = None, patch_grid: Sequence[int] | None = None,
                 attn_dim: int = 64, num_prototypes: int = 16, hist_bins: int = 32, straight_through: bool = True,
                 identity_init: bool = False, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        num_patches = _check_int("num_patches", num_patches, minimum=1)
        if _check_int("min_tokens", min_tokens) < 1:
            # Realizing cuts each patch into budgets[k] >= 1 segments; a patch with no tokens would lose its features.
            raise ValueError(f"ArrCoc needs min_tokens >= 1 (every patch yields at least one token), got {min_tokens}")
        self.dim, self.query_dim, self.num_patches = dim, query_dim, num_patches
        self.patch_grid = _check_patch_grid(patch_grid, num_patches)
        self.knowing = Knowing(dim, query_dim, attn_dim=attn_dim, num_prototypes=num_prototypes, hist_bins=hist_bins,
                               patch_grid=self.patch_grid, identity_init=identity_init, **fk)
        self.balancing = Balancing(3, **fk)
        if isinstance(allocator, Allocator):
            if allocator_kwargs:
                raise ValueError("allocator_kwargs are only used with an allocator name, not an Allocator instance")
            if (allocator.budget, allocator.min_tokens, allocator.max_tokens) != (budget, min_tokens, max_tokens):
                raise ValueError(
                    f"allocator has budget/min/max {allocator.budget}/{allocator.min_tokens}/{allocator.max_tokens} "
                    f"but ArrCoc was given {budget}/{min_tokens}/{max_tokens}")
            self.attending = allocator
        else:
            kw = dict(allocator_kwargs or {})
            if allocator == "hierarchical":
                kw.setdefault("patch_grid", self.patch_grid)
            self.attending = create_allocator(allocator, budget=budget, min_tokens=min_tokens, max_tokens=max_tokens,
                                              **kw)
        self.attending.check_feasible(num_patches)
        if getattr(self.attending, "patch_grid", False) is not False:  # a grid-aware allocator (hierarchical)
            # Its regions must be regions of the layer's grid: another layout grouped patches that are not neighbours.
            alloc_grid = _check_patch_grid(self.attending.patch_grid, num_patches)
            if alloc_grid != self.patch_grid:
                raise ValueError(f"allocator patch_grid {alloc_grid} differs from ArrCoc's patch_grid "
                                 f"{self.patch_grid}")
        self.realizing = Realizing(self.patch_grid)
        self.straight_through = straight_through

    @property
    def budget(self) -> int:
        return self.attending.budget

    @contextlib.contextmanager
    def budget_override(self, budget: int) -> Iterator[None]:
        """Allocate ``budget`` tokens per image inside the ``with`` block (the allocator's budget is restored after).

        Every registered allocator takes any feasible budget: this is how one trained layer serves several budgets
        (evaluation at a token fraction, or training on a random budget per batch with ``train.budget_fractions``).

        Raises:
            ValueError: a non-integer or infeasible budget (outside ``[K·min_tokens, K·max_tokens]``), by value.
        """
        # numbers.Integral takes NumPy's integers (an np.int64 was refused as "not an integer"); a bool tensor is
        # refused like a bool (torch.tensor(True) was spent as a budget of 1).
        if isinstance(budget, torch.Tensor):
            ok = budget.numel() == 1 and not (budget.is_floating_point() or budget.is_complex()
                                              or budget.dtype == torch.bool)
        else:
            ok = isinstance(budget, numbers.Integral) and not isinstance(budget, bool)
        if not ok:
            raise ValueError(f"budget must be an integer, got {budget!r}")
        old = self.attending.budget
        self.attending.budget = int(budget)
        try:
            self.attending.check_feasible(self.num_patches)
            yield
        finally:
            self.attending.budget = old

    def extra_repr(self) -> str:
        return f"dim={self.dim}, query_dim={self.query_dim}, num_patches={self.num_patches}, grid={self.patch_grid}"

    def _context(self, features: Tensor, query: Tensor, scores: Tensor) -> Tensor:
        """Per-patch bandit context ``[query; patch mean feature; scores]``, detached. Shape (B, K, Dq + D + 3)."""
        b, k = features.shape[:2]
        mean = features.mean(dim=(2, 3))  # (B, K, D)
        return torch.cat([query[:, None, :].expand(b, k, -1), mean, scores], dim=-1).detach()

    def forward(self, features: Tensor, *, query: Tensor, pixels: Tensor | None = None,
                uncertainty: Tensor | None = None) -> ArrCocOutput:
        _check_tensor("features", features)
        _check_tensor("query", query)
        _check_ndim("features", features, 5, "(B, K, h, w, D)")
        b, k, h, w, d = features.shape
        if k != self.num_patches:
            raise ValueError(f"features have K={k} patches but ArrCoc(num_patches={self.num_patches})")
        if d != self.dim:
            raise ValueError(f"features have D={d} but ArrCoc(dim={self.dim})")
        if query.dim() != 2 or query.shape[0] != b:
            raise ValueError(f"query must have shape (B={b}, Dq={self.query_dim}), got {tuple(query.shape)}")
        _check_same_device(features=features, query=query)
        if uncertainty is not None:
            _check_tensor("uncertainty", uncertainty)
        scores = self.knowing(features, query=query, pixels=pixels)  # (B, K, 3)
        if uncertainty is not None and uncertainty.dtype != scores.dtype:
            # A cast would round float64 or widen a half or integer tensor silently: refuse instead. The dtype wanted is
            # the scores', which is the features' except under autocast (float32 there, whatever the features).
            where = "" if scores.dtype == features.dtype else f" under autocast, where the scores are {scores.dtype}"
            raise ValueError(f"uncertainty has dtype {uncertainty.dtype} but features have dtype {features.dtype}"
                             f"{where}; pass uncertainty in {scores.dtype}")
        uses_context = getattr(self.attending, "uses_context", False)
        context = self._context(features, query, scores) if uses_context else None
        if uncertainty is None and uses_context and hasattr(self.attending, "uncertainty"):
            uncertainty = self.attending.uncertainty(context)
        utility = self.balancing(scores, uncertainty=uncertainty)  # (B, K)
        budgets = self.attending(utility, context=context)  # (B, K) int64
        gate, relaxed = None, None
        if self.straight_through and torch.is_grad_enabled() and utility.requires_grad:
            relaxed = self.attending.relaxed(utility)
            # 1 + (a - a) is exactly 1; (1 + a) - a is not once 1 + a rounds (a patch's tokens scaled by 0..2 in bf16).
            gate = (1 + (relaxed - relaxed.detach())).to(features.dtype)
        r = self.realizing(features, budgets, gate=gate)
        return ArrCocOutput(tokens=r.tokens, mask=r.mask, positions=r.positions, budgets=budgets, scores=scores,
                            utility=utility, patch_index=r.patch_index, cu_seqlens=r.cu_seqlens, relaxed=relaxed,
                            context=context)
