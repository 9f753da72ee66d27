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

__all__ = ["FootprintEmbedding", "PositionEmbedding2d"]


class _LearnedTable(nn.Module):
    """A learned ``(rows, D)`` table added to features: zero-initialised by default (the identity on the features at
    step 0), or normal with ``init_std``."""

    def _make_table(self, rows: int, dim: int, init_std: float, device, dtype) -> None:
        self.dim, self.init_std = int(dim), float(init_std)
        self.table = nn.Parameter(torch.empty(rows, self.dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init_std > 0:
            nn.init.normal_(self.table, std=self.init_std)
        else:
            nn.init.zeros_(self.table)


class PositionEmbedding2d(_LearnedTable):
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
        self.grid = (int(grid[0]), int(grid[1]))
        self._make_table(self.grid[0] * self.grid[1], dim, init_std, device, dtype)

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


class FootprintEmbedding(_LearnedTable):
    """Learned embedding of a token's footprint, the number of fine cells it averages, read on a log2 scale.

    Why. A position says where a token's centre is, not how much of the image it covers: after ARR-COC a token of a
    patch with budget ``t`` averages ``n / t`` of the patch's ``n`` fine cells, one cell at full detail and the whole
    patch at one token. The footprint is a geometric fact about the token, like its centre, and it is what tells a
    detailed token from a coarse summary. Without it the language model can only infer detail from how densely the
    positions cluster. It is added per token, so it says nothing through token *order*, and every method that
    realizes tokens of varying extent gets it the same way (a model trained with uniform pooling sees its 2- or
    3-token patches' footprints too).

    How. ``E(f) = T(log2 f) - T(0)``, with ``T`` a learned table at the integer nodes ``lo..hi`` of ``log2 f`` read
    by linear interpolation; beyond the end nodes the read saturates at the end entries (the footprint itself is not
    changed). Subtracting ``T(0)`` makes ``E(1) = 0`` exactly, whatever the table: a full-detail token (one cell)
    gets nothing added, so a model trained only on full-detail tokens (the full-token model) never trains the table,
    and training-free baselines applied to it, which pass no footprints, see exactly its training distribution. The
    table starts at zero, so at step 0 the embedding is the identity on the features (as the position table).

    Args:
        dim: Embedding width D (the vision feature width).
        log2_range: ``(lo, hi)`` integer ``log2`` footprints of the end nodes, ``lo <= 0 <= hi``, ``lo < hi``.
        init_std: Std of the initial table; 0 (default) starts as the identity on the features.

    Shapes:
        footprint: (B, T) cells per token, finite and > 0 at real tokens
        mask: (B, T) bool; padding gets a zero embedding and its footprint is not read
        returns: (B, T, D)
    """

    def __init__(self, dim: int, log2_range: Sequence[int] = (-4, 8), *, init_std: float = 0.0, device=None,
                 dtype=None):
        super().__init__()
        lo, hi = (int(v) for v in log2_range) if len(log2_range) == 2 else (None, None)
        if lo is None or dim < 1 or not lo <= 0 <= hi or lo == hi:
            raise ValueError(f"FootprintEmbedding needs dim >= 1 and integer log2_range (lo, hi) with lo <= 0 <= hi, "
                             f"lo < hi; got dim={dim}, log2_range={tuple(log2_range)}")
        self.log2_range = (lo, hi)
        self._make_table(hi - lo + 1, dim, init_std, device, dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, log2_range={self.log2_range}"

    def _read(self, coord: Tensor) -> Tensor:
        """``T`` at table coordinates ``coord`` (already shifted by ``-lo`` and saturated). (...,) → (..., D)."""
        i0 = coord.floor().long().clamp(max=self.table.shape[0] - 2)
        frac = (coord - i0.to(coord.dtype)).to(self.table.dtype).unsqueeze(-1)
        return self.table[i0] * (1 - frac) + self.table[i0 + 1] * frac

    def forward(self, footprint: Tensor, mask: Tensor | None = None) -> Tensor:
        if footprint.dim() != 2:
            raise ValueError(f"footprint must have shape (B, T), got {tuple(footprint.shape)}")
        if not footprint.is_floating_point():
            raise ValueError(f"footprint must be a floating tensor (cells per token), got dtype {footprint.dtype}")
        if mask is not None and mask.shape != footprint.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != footprint shape {tuple(footprint.shape)}")
        real = footprint if mask is None else footprint[mask]
        bad = ~(torch.isfinite(real) & (real > 0))
        if bool(bad.any()):
            raise ValueError(f"footprint must be finite and > 0 at real tokens, got {real[bad][0].item()!r}")
        fp = footprint if mask is None else torch.where(mask, footprint, torch.ones_like(footprint))
        lo, hi = self.log2_range
        coord = (torch.log2(fp.float()) - lo).clamp(0, hi - lo)  # saturating read of the table
        zero = torch.full((1,), float(-lo), device=fp.device)
        out = self._read(coord) - self._read(zero)  # E(f) = T(log2 f) - T(0)
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out
