"""``UtilityTag``: tell the LLM which visual tokens the question points at.

Why. ARR-COC decides per patch how many tokens to spend, from a query-aware utility. The LLM downstream sees only the
tokens: it learns where the question points from their *count* at best, and must find the queried region again from
the question text itself. With a small LLM that second search is what is slow to learn (README, "Why no model reads
the digits"): it has to parse the question, match the named object against every token, then read the object. The
utility already is that match. ``UtilityTag`` hands it over: each token gets ``z · e``, where ``z`` is its patch's
utility standardised over the image's K patches (mean 0, std 1, so the scale of the utility does not matter) and
``e`` is a learned vector in the vision width, added next to the position embedding before the projector.

Zero-initialised, like :class:`~models.position.PositionEmbedding2d`: at step 0 the tokens are exactly what they were
without it, so switching it on never hurts a pretrained projector, and ``e`` grows only if the loss finds the tag
useful. The gradient also flows into the utility through ``z``, so the answer loss can shape the allocation (on top of
the straight-through gate and any grounding supervision). It needs no labels: at inference it uses the same
utility the allocator used. Training-free baselines that build their own tokens (``eval.baselines``) add no tag.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["UtilityTag", "standardise_utility"]


def standardise_utility(utility: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-image z-score of the patch utilities. Shape (B, K) → (B, K); an image whose patches tie gets zeros."""
    if utility.dim() != 2:
        raise ValueError(f"utility must have shape (B, K), got {tuple(utility.shape)}")
    u = utility.float()
    centred = u - u.mean(dim=1, keepdim=True)
    std = centred.pow(2).mean(dim=1, keepdim=True).sqrt()
    return centred / (std + eps)


class UtilityTag(nn.Module):
    """Adds ``z[patch] · e`` to every visual token (``e`` learned, zero-initialised).

    Args:
        dim: The token width (the vision feature width; the tag is added before the projector).

    Shapes:
        tokens: (B, T, D)
        utility: (B, K)
        patch_index: (B, T) int64 source patch of each token, -1 at padding (padding gets no tag)
        returns: (B, T, D)
    """

    def __init__(self, dim: int, *, device=None, dtype=None):
        super().__init__()
        if dim < 1:
            raise ValueError(f"UtilityTag needs dim >= 1, got {dim}")
        self.dim = int(dim)
        self.weight = nn.Parameter(torch.zeros(self.dim, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, tokens: Tensor, utility: Tensor, patch_index: Tensor) -> Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.dim:
            raise ValueError(f"tokens must have shape (B, T, D={self.dim}), got {tuple(tokens.shape)}")
        b, t, _ = tokens.shape
        if utility.dim() != 2 or utility.shape[0] != b:
            raise ValueError(f"utility must have shape (B={b}, K), got {tuple(utility.shape)}")
        if tuple(patch_index.shape) != (b, t) or patch_index.dtype != torch.int64:
            raise ValueError(f"patch_index must be int64 of shape (B={b}, T={t}), got {patch_index.dtype} "
                             f"{tuple(patch_index.shape)}")
        z = standardise_utility(utility)  # (B, K)
        real = patch_index >= 0
        z_tok = torch.gather(z, 1, patch_index.clamp_min(0)) * real.to(z.dtype)  # (B, T); padding → 0
        return tokens + (z_tok.unsqueeze(-1) * self.weight.float()).to(tokens.dtype)
