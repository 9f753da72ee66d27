"""Realizing: turn each patch's fine feature grid into exactly its integer budget of tokens, each with a 2-D position.

The attending stage hands every patch ``k`` of sample ``b`` an integer budget ``budgets[b, k] >= 1``. Realizing must
emit exactly that many tokens for the patch, whatever the budget: fewer tokens than fine cells (compression), as many
(identity), or more (interpolation). The tokens must tile the patch, so that every fine feature contributes and the
mean of a patch's tokens equals the patch's mean feature, and each token carries its true 2-D centre, so that the
language model never has to infer geometry from token order.

How. The ``h x w`` fine grid of a patch is ordered along a Hilbert curve (D. Hilbert, "Ueber die stetige Abbildung
einer Linie auf ein Flaechenstueck", Math. Ann. 38, 1891), generalised to any ``h, w`` by sorting the cells by their
Hilbert index on the enclosing ``2^m x 2^m`` grid. The curve is then the interval ``[0, n)``, ``n = h * w``, with one
unit-length piece of constant feature per cell, and token ``j`` of a patch with budget ``b`` is the length-weighted
mean of the features over ``[j n / b, (j + 1) n / b)``. Because the curve preserves locality, each segment is a compact
blob of neighbouring cells, so a token is a local average pool with an irregular but contiguous footprint. This is
in the spirit of token merging and pooling (ToMe, Bolya et al. 2023; LLaVA-style adaptive pooling), but deterministic,
budget-exact for any integer budget, and mean-preserving by construction.

The segment means are prefix-sum differences along the curve with exact integer interval ends. The whole-cell part of
each difference is formed as one segment sum (``index_add``) over the curve rather than by subtracting a materialised
prefix sum, which avoids cancellation and a ``(B, K, n, D)`` prefix tensor; the two partial cells at the ends are
gathered. Everything is vectorised over batch, patches and tokens, and differentiable in the features.
An optional straight-through ``gate`` lets gradients reach the continuous allocation that produced the budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._utils import (_check_finite, _check_float, _check_ndim, _check_patch_grid, _check_same_device, _check_tensor,
                     _grid_pair)

__all__ = ["Realizing", "RealizingOutput", "hilbert_order"]


def _hilbert_index(rows: Tensor, cols: Tensor, side: int) -> Tensor:
    """Hilbert index of cells ``(rows, cols)`` on a ``side x side`` grid, ``side`` a power of two; vectorised.

    The classic iterative xy -> d conversion: at each scale pick the quadrant, add its offset along the curve, then
    rotate/reflect the coordinates into that quadrant's frame so that the next scale sees a standard sub-curve.
    """
    x, y = cols.clone(), rows.clone()
    d = torch.zeros_like(x)
    s = side // 2
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.long()) ^ ry.long())
        # Reflect (lower-right quadrant) then transpose (both lower quadrants); only the bits below s matter from
        # here on, so reflecting against side - 1 rather than s - 1 is equivalent and keeps values non-negative.
        flip = (~ry) & rx
        x = torch.where(flip, side - 1 - x, x)
        y = torch.where(flip, side - 1 - y, y)
        swap = ~ry
        x, y = torch.where(swap, y, x), torch.where(swap, x, y)
        s //= 2
    return d


def hilbert_order(h: int, w: int, *, device: torch.device | str | None = None) -> Tensor:
    """Row-major cell indices of an ``h x w`` grid, listed in Hilbert-curve order.

    For a ``2^m x 2^m`` grid this is the Hilbert curve itself. For other sizes the cells are sorted by their Hilbert
    index on the enclosing ``2^m x 2^m`` grid: every cell appears exactly once and locality is kept, though the curve
    may jump where it leaves and re-enters the ``h x w`` rectangle.

    Args:
        h: Grid rows, ``>= 1``.
        w: Grid columns, ``>= 1``.
        device: Device of the result.

    Returns:
        ``(h * w,)`` int64 permutation; entry ``i`` is the row-major index ``row * w + col`` of the ``i``-th cell
        visited by the curve.
    """
    if h < 1 or w < 1:
        raise ValueError(f"hilbert_order needs h >= 1 and w >= 1, got h={h}, w={w}")
    side = 1
    while side < max(h, w):
        side *= 2
    cells = torch.arange(h * w, dtype=torch.int64, device=device)
    d = _hilbert_index(cells // w, cells % w, side)
    # Hilbert indices are distinct, so the sort is a strict total order and the permutation is deterministic.
    return torch.argsort(d)


@dataclass(frozen=True)
class RealizingOutput:
    """Tokens realized from a batch of patch budgets, padded per sample, with an optional packed view.

    Shapes: ``B`` batch, ``T = max_b sum_k budgets[b, k]`` tokens, ``D`` width.

    Attributes:
        tokens: ``(B, T, D)`` tokens; zeros at padding. Within a row, the tokens of patch 0 come first, then patch 1,
            ..., in row-major patch order, each patch's tokens in Hilbert-curve order.
        mask: ``(B, T)`` bool, True for real tokens; the real tokens of each row come first.
        positions: ``(B, T, 2)`` token centres ``(row, col)`` in whole-image coordinates normalised to ``[0, 1]``;
            zeros at padding.
        patch_index: ``(B, T)`` int64, the patch each token came from; -1 at padding.
        cu_seqlens: ``(B + 1,)`` int32 cumulative token counts, as variable-length attention kernels expect.
    """

    tokens: Tensor
    mask: Tensor
    positions: Tensor
    patch_index: Tensor
    cu_seqlens: Tensor

    def packed(self) -> tuple[Tensor, Tensor, Tensor]:
        """The real tokens without padding, for variable-length attention.

        Returns:
            ``(sum T_b, D)`` tokens, ``(sum T_b, 2)`` positions and the ``(B + 1,)`` int32 ``cu_seqlens``; sample
            ``b`` owns rows ``cu_seqlens[b] : cu_seqlens[b + 1]``.
        """
        return self.tokens[self.mask], self.positions[self.mask], self.cu_seqlens


class Realizing(nn.Module):
    """Cut each patch's Hilbert-ordered fine grid into exactly ``budgets[b, k]`` equal-length segments and average.

    Token ``j`` of a patch with ``n = h * w`` cells and budget ``t`` is the length-weighted mean of the cell features
    over the curve interval ``[j n / t, (j + 1) n / t)``; its position is the same mean of the cell centres. Any
    ``t >= 1`` works: ``t = 1`` gives the patch mean, ``t = n`` returns the cells themselves in curve order, and
    ``t > n`` repeats cells piecewise-constantly. The mean of a patch's tokens always equals its mean feature.

    The module has no parameters; the Hilbert order is computed once per ``(h, w, device)`` and cached.

    Args:
        patch_grid: ``(Gh, Gw)`` layout of the ``K`` patches in row-major order, ``Gh * Gw == K``. ``None`` uses
            ``default_patch_grid(K)`` at forward time.
        device: Accepted for the constructor contract (meta-device construction); there are no parameters.
        dtype: Accepted for the constructor contract; tokens keep the dtype of ``features``.
    """

    def __init__(self, patch_grid: tuple[int, int] | None = None, *, device=None, dtype=None) -> None:
        super().__init__()
        if patch_grid is not None:
            # Checked as integers: int() truncated (2.5, 1.6) to (2, 1) and read True and "2" as 1 and 2.
            try:
                patch_grid = _grid_pair(patch_grid)
            except ValueError:
                raise ValueError(f"patch_grid must be two positive ints (rows, cols), got {patch_grid!r}") from None
        self.patch_grid = patch_grid
        # A dict rather than buffers: (h, w) is only known at forward time and may vary between calls, and the order
        # is derived data that must not enter the state dict.
        self._curves: dict[tuple[int, int, torch.device], tuple[Tensor, ...]] = {}

    def extra_repr(self) -> str:
        return f"patch_grid={self.patch_grid}"

    def _curve(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Cached per grid: ``(n,)`` Hilbert order, its ``(n,)`` inverse (curve position of each row-major cell),
        ``(n, 2)`` cell centres in curve order and their inclusive prefix sums."""
        key = (h, w, device)
        if key not in self._curves:
            order = hilbert_order(h, w, device=device)
            inv = torch.empty_like(order)
            inv[order] = torch.arange(order.numel(), device=device)
            centres = torch.stack([order // w, order % w], dim=-1).to(_pos_dtype(device)) + 0.5  # (n, 2) (row, col)
            self._curves[key] = (order, inv, centres, centres.cumsum(0))
        return self._curves[key]

    def forward(self, features: Tensor, budgets: Tensor, *, gate: Tensor | None = None) -> RealizingOutput:
        """Realize ``budgets[b, k]`` tokens for every patch.

        Shapes: ``B`` batch, ``K`` patches, ``h x w`` fine grid per patch, ``D`` width,
        ``T = max_b sum_k budgets[b, k]`` tokens.

        Args:
            features: ``(B, K, h, w, D)`` float fine features of every patch.
            budgets: ``(B, K)`` int64 token counts, each ``>= 1``.
            gate: Optional ``(B, K)`` float straight-through gate. Every token of patch ``k`` is multiplied by
                ``gate[b, k]``, so build it with value 1 and the gradient you want, e.g. ``x / x.detach()`` or
                ``1 + (x - x.detach())`` for a continuous allocation ``x``; gradients then reach ``x`` as well as
                ``features``.

        Returns:
            A :class:`RealizingOutput` with ``(B, T, D)`` tokens, ``(B, T)`` mask, ``(B, T, 2)`` positions,
            ``(B, T)`` patch_index and ``(B + 1,)`` cu_seqlens.

        Raises:
            ValueError: on a wrong rank, dtype, shape or device, a budget below 1, non-finite features or gate, or a
                ``patch_grid`` that does not match ``K``.
        """
        self._validate(features, budgets, gate)
        B, K, h, w, D = features.shape
        gh, gw = _check_patch_grid(self.patch_grid, K)
        n = h * w
        device = features.device
        order, inv_order, centres, centre_prefix = self._curve(h, w, device)

        # Per-token (patch, j) indices without a loop over B or K: one run of budgets[b, k] entries per patch.
        flat_budget = budgets.reshape(-1)  # (B*K,)
        counts = budgets.sum(dim=1)  # (B,)
        n_tok = int(counts.sum())
        T = int(counts.max()) if B > 0 else 0
        patch_flat = torch.repeat_interleave(torch.arange(B * K, device=device), flat_budget, output_size=n_tok)
        first_tok = torch.cumsum(flat_budget, 0) - flat_budget  # (B*K,) index of each patch's first token
        j = torch.arange(n_tok, device=device) - first_tok[patch_flat]  # (N,)
        t = flat_budget[patch_flat]  # (N,) budget of the token's patch

        # Interval ends in exact integers: start = q_s + r_s / t, end = q_e + r_e / t (in cell units along the curve).
        q_s, r_s = torch.div(j * n, t, rounding_mode="floor"), torch.remainder(j * n, t)
        q_e, r_e = torch.div((j + 1) * n, t, rounding_mode="floor"), torch.remainder((j + 1) * n, t)

        # mean over [s, e) = (F(e) - F(s)) * t / n with F(q + r / t) = P[q] + (r / t) * f[q], P the prefix sum along
        # the curve. P[q_e] - P[q_s] is the sum of the whole cells q_s <= c < q_e, and q_e(j) = q_s(j + 1), so these
        # runs partition the curve: we form them as one segment sum (index_add) instead of differencing a prefix sum.
        # That is exact for t == n, free of the cancellation a float32 prefix difference suffers for short tokens, and
        # needs no (B, K, n, D) prefix tensor. Cell c (curve position) belongs to the run of the largest j with
        # floor(j n / t) <= c, i.e. j = floor(((c + 1) t - 1) / n).
        curve_pos = inv_order.unsqueeze(0)  # (1, n) curve position of each row-major cell
        run = torch.div((curve_pos + 1) * flat_budget.unsqueeze(1) - 1, n, rounding_mode="floor")  # (B*K, n)
        run = (run + first_tok.unsqueeze(1)).reshape(-1)  # (B*K*n,) global token index of each cell's run
        fine = features.reshape(B * K * n, D)
        acc = torch.promote_types(features.dtype, torch.float32)  # accumulate half types in float32
        runs = torch.zeros(n_tok, D, dtype=acc, device=device).index_add(0, run, fine.to(acc))  # (N, D)

        def cell_at(q: Tensor) -> Tensor:
            # q_e == n only with r_e == 0, so clamping keeps the gather in range without changing the value.
            rows = patch_flat * n + order[q.clamp(max=n - 1)]
            return fine.index_select(0, rows).to(acc)

        scale = (t.to(acc) / n).unsqueeze(-1)  # (N, 1)
        values = runs * scale + (
            r_e.to(acc).unsqueeze(-1) * cell_at(q_e) - r_s.to(acc).unsqueeze(-1) * cell_at(q_s)
        ) / n  # (N, D)
        values = values.to(features.dtype)
        if gate is not None:
            values = values * gate.reshape(-1).to(features.dtype)[patch_flat].unsqueeze(-1)

        # Positions: the same interval mean applied to cell centres, in patch-local cell units, then mapped to image.
        # The centres' prefix sum is only (n, 2), so here the plain prefix difference in float64 is cheap and precise.
        pacc = centre_prefix.dtype
        pscale = (t.to(pacc) / n).unsqueeze(-1)  # (N, 1)

        def centre_prefix_at(q: Tensor) -> Tensor:
            # P[0] = 0 as a mask: index -1 would wrap around.
            return centre_prefix[(q - 1).clamp(min=0)] * (q > 0).unsqueeze(-1).to(pacc)

        def centre_at(q: Tensor) -> Tensor:
            return centres[q.clamp(max=n - 1)]

        local = (centre_prefix_at(q_e) - centre_prefix_at(q_s)) * pscale + (
            r_e.to(pacc).unsqueeze(-1) * centre_at(q_e) - r_s.to(pacc).unsqueeze(-1) * centre_at(q_s)
        ) / n  # (N, 2) (row, col) within the patch, in cells
        k_idx = patch_flat % K
        origin = torch.stack([(k_idx // gw) * h, (k_idx % gw) * w], dim=-1).to(pacc)  # (N, 2) patch corner, in cells
        extent = torch.tensor([gh * h, gw * w], dtype=pacc, device=device)
        pos_dtype = torch.promote_types(features.dtype, torch.float32)
        pos_values = ((origin + local) / extent).to(pos_dtype)

        # Scatter the token stream into padded rows: sample b's tokens are contiguous and in (k, j) order already.
        b_idx = patch_flat // K
        slot = torch.arange(n_tok, device=device) - (torch.cumsum(counts, 0) - counts)[b_idx]  # (N,)
        tokens = features.new_zeros(B, T, D).index_put((b_idx, slot), values)
        positions = torch.zeros(B, T, 2, dtype=pos_dtype, device=device).index_put((b_idx, slot), pos_values)
        patch_index = torch.full((B, T), -1, dtype=torch.int64, device=device).index_put((b_idx, slot), k_idx)
        mask = torch.arange(T, device=device).unsqueeze(0) < counts.unsqueeze(1)  # (B, T)
        cu_seqlens = torch.zeros(B + 1, dtype=torch.int32, device=device)
        cu_seqlens[1:] = torch.cumsum(counts, 0).to(torch.int32)
        return RealizingOutput(tokens=tokens, mask=mask, positions=positions, patch_index=patch_index,
                               cu_seqlens=cu_seqlens)

    def _validate(self, features: Tensor, budgets: Tensor, gate: Tensor | None) -> None:
        for name, t in (("features", features), ("budgets", budgets), ("gate", gate)):
            if t is not None:
                _check_tensor(name, t)
        _check_ndim("features", features, 5, "(B, K, h, w, D)")
        _check_float("features", features)
        _check_ndim("budgets", budgets, 2, "(B, K)")
        if budgets.dtype != torch.int64:
            raise ValueError(f"budgets must be int64, got dtype {budgets.dtype}")
        _check_same_device(features=features, budgets=budgets, **({"gate": gate} if gate is not None else {}))
        B, K, h, w, _ = features.shape
        if tuple(budgets.shape) != (B, K):
            raise ValueError(
                f"budgets shape {tuple(budgets.shape)} does not match features' (B, K) = ({B}, {K}) "
                f"from features shape {tuple(features.shape)}"
            )
        if h < 1 or w < 1:
            raise ValueError(f"features' fine grid must be at least 1x1, got h={h}, w={w}")
        _check_patch_grid(self.patch_grid, K)
        if budgets.numel() and bool((budgets < 1).any()):
            bad = (budgets < 1).nonzero()
            b, k = (int(i) for i in bad[0].tolist())
            raise ValueError(
                f"budgets must be >= 1 for every patch; {bad.shape[0]} below 1, first at sample {b}, patch {k}: "
                f"{int(budgets[b, k])}"
            )
        _check_finite("features", features)
        if gate is not None:
            _check_float("gate", gate)
            if tuple(gate.shape) != (B, K):
                raise ValueError(f"gate shape {tuple(gate.shape)} does not match budgets' (B, K) = ({B}, {K})")
            _check_finite("gate", gate)


def _pos_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; elsewhere float64 keeps position prefix differences exact to well below a cell.
    return torch.float32 if device.type == "mps" else torch.float64
