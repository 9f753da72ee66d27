"""A learned 2-D position embedding evaluated at continuous token positions.

Why this choice. After ARR-COC, an image's tokens no longer sit on a lattice: a patch with budget ``t`` yields ``t``
tokens whose centres are means of Hilbert-curve segments, anywhere in the patch, and patches get different budgets.
The LLM must still know where each token is; token *order* must not be its only clue (the design notes forbid leaking
the query's choice through order). So each token gets ``E(row, col)``, a learned table on an ``R x C`` grid read by
bilinear interpolation at the token's true centre (row, col) in [0, 1]. This is the continuous analogue of ViT's
learned absolute embedding (Dosovitskiy et al. 2021) and of the interpolation used to resize it (Touvron et al.
2021), so it handles any budget, any layout and sub-cell positions, with gradients to the four neighbouring entries.

It is added in the vision width before the multi-modal projector, and zero-initialised: at step 0 a pretrained
projector sees exactly the features it was trained on, and the table grows from there. Alternatives considered:
RoPE-2D inside the LLM (would change the pretrained LLM's attention), sinusoidal features (no learning, but they
shift pretrained features at init unless scaled to zero, which is what the zero-init table already does).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbedding2d"]


class PositionEmbedding2d(nn.Module):
    """Learned ``(R, C, D)`` table read by bilinear interpolation at continuous ``(row, col)`` positions.

    Args:
        dim: Embedding width D (the vision feature width).
        grid: ``(R, C)`` table resolution; cell ``(i, j)`` is centred at ``((i + 0.5) / R, (j + 0.5) / C)``.
        init_std: Std of the initial table; 0 (default) starts as the identity on the features.

    Shapes:
        positions: (B, T, 2) (row, col) in [0, 1]
        mask: (B, T) bool; padding positions get a zero embedding
        returns: (B, T, D)
    """

    def __init__(self, dim: int, grid: Sequence[int], *, init_std: float = 0.0, device=None, dtype=None):
        super().__init__()
        if len(grid) != 2 or min(int(grid[0]), int(grid[1])) < 1 or dim < 1:
            raise ValueError(f"PositionEmbedding2d needs dim >= 1 and a (R, C) grid of positive ints, got dim={dim}, "
                             f"grid={tuple(grid)}")
        self.dim, self.grid = int(dim), (int(grid[0]), int(grid[1]))
        self.init_std = float(init_std)
        self.table = nn.Parameter(torch.empty(self.grid[0] * self.grid[1], self.dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init_std > 0:
            nn.init.normal_(self.table, std=self.init_std)
        else:
            nn.init.zeros_(self.table)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, grid={self.grid}"

    def forward(self, positions: Tensor, mask: Tensor | None = None) -> Tensor:
        if positions.dim() != 3 or positions.shape[-1] != 2:
            raise ValueError(f"positions must have shape (B, T, 2), got {tuple(positions.shape)}")
        r, c = self.grid
        size = torch.tensor([r, c], dtype=positions.dtype, device=positions.device)
        # Continuous table coordinates: cell centres sit at integer coordinates, so subtract 0.5; clamp at the borders.
        coord = (positions * size - 0.5).clamp_min(0)
        coord = torch.minimum(coord, size - 1)  # (B, T, 2)
        lo = coord.floor().long()
        hi = torch.minimum(lo + 1, (size - 1).long())
        frac = (coord - lo.to(coord.dtype)).to(self.table.dtype)  # (B, T, 2)
        fr, fc = frac[..., 0:1], frac[..., 1:2]
        idx = torch.stack([lo[..., 0] * c + lo[..., 1], lo[..., 0] * c + hi[..., 1],
                           hi[..., 0] * c + lo[..., 1], hi[..., 0] * c + hi[..., 1]], dim=-1)  # (B, T, 4)
        w = torch.cat([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], dim=-1)  # (B, T, 4)
        out = (self.table[idx] * w.unsqueeze(-1)).sum(-2)  # (B, T, D)
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out
