"""Knowing: three relevance scores per patch (Vervaeke's three ways of knowing, made measurable).

- **propositional**: information content, the Shannon entropy (Shannon 1948) of the patch. With pixels, the entropy
  of its grey-level histogram; without, the entropy of a soft histogram of its tokens over a learned codebook of
  feature prototypes (a feature-space analogue of the grey-level histogram: a flat patch puts all its tokens in the
  same soft bin and scores that one assignment's entropy, 0 only as the learned codebook temperature sharpens it and
  about 2.0-2.6 of the 2.77 nats possible with 16 prototypes at initialisation; a busy one spreads them out and scores
  more).
- **perspectival**: visual salience as centre–surround contrast (Itti, Koch & Niebur 1998): the distance between a
  patch's mean feature and the mean of its 8-neighbourhood on the patch grid, plus the patch's internal contrast.
- **participatory**: query ↔ patch relevance, scaled dot-product cross-attention (Vaswani et al. 2017) between a
  learned projection of the query and learned projections of every fine token; the per-patch score is the log of
  the attention mass on that patch's tokens (a log-sum-exp pool), so one strongly matching token suffices.

Each score is standardised per sample across the K patches (zero mean, unit variance), which makes the three
comparable before the balancing stage weighs them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arr_coc._utils import (_check_finite, _check_float, _check_int, _check_ndim, _check_patch_grid,
                            _check_same_device, _check_tensor, _grid_pair)

__all__ = ["Knowing", "standardize", "pixel_entropy"]

_EPS = 1e-6


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # device types without autocast (e.g. meta)
        return False


def standardize(s: Tensor, dim: int = -1) -> Tensor:
    """Zero mean, unit variance along ``dim``; a constant row maps to zeros (not NaN)."""
    c = s - s.mean(dim, keepdim=True)
    # A second pass removes what rounding left of the mean: a constant row whose mean rounds away from its value came
    # out of the first as 1 ulp everywhere, which the division by sd + eps made a constant far from 0 (244 for 3333.3).
    c = c - c.mean(dim, keepdim=True)
    return c / (c.std(dim, keepdim=True, unbiased=False) + _EPS)


def _check_pixels(pixels: Tensor, grid: tuple[int, int]) -> None:
    _check_tensor("pixels", pixels)
    _check_ndim("pixels", pixels, 4, "(B, C, H, W)")
    if pixels.shape[1] < 1 or pixels.is_complex():
        # No channel gave a NaN grey level and every patch an entropy of 0; complex lost its imaginary part.
        raise ValueError(f"pixels must be real with at least one channel, got shape {tuple(pixels.shape)} "
                         f"and dtype {pixels.dtype}")
    if pixels.shape[2] < grid[0] or pixels.shape[3] < grid[1]:
        # A patch with no pixel row or column would get an empty histogram, scored as entropy 0.
        raise ValueError(f"pixels {tuple(pixels.shape[2:])} smaller than the patch grid {grid}")


def pixel_entropy(pixels: Tensor, patch_grid: tuple[int, int], bins: int = 32) -> Tensor:
    """Shannon entropy (nats) of each patch's grey-level histogram.

    Pixels are assigned to patches by ``floor(row·Gh/H)``, so H and W need not divide the grid. Values are expected
    in [0, 1] (or any fixed range: the histogram spans each image's own min..max).

    Shapes:
        pixels: (B, C, H, W)
        returns: (B, K) with K = Gh·Gw
    """
    gh, gw = _grid_pair(patch_grid)
    bins = _check_int("bins", bins, minimum=1)
    _check_pixels(pixels, (gh, gw))
    _check_finite("pixels", pixels)  # a NaN or inf made the image's range NaN: every patch scored 0, silently
    b, _, h, w = pixels.shape
    # float64 pixels stay float64: float32 merged grey levels closer than its spacing (7.8e-3 at 1e5).
    grey = pixels.to(torch.float64 if pixels.dtype == torch.float64 else torch.float32).mean(1)  # (B, H, W)
    lo = grey.flatten(1).amin(-1)[:, None, None]
    hi = grey.flatten(1).amax(-1)[:, None, None]
    # The range is divided only where it is positive: clamping it to _EPS squeezed an image whose range is below 1e-6
    # into a fraction of the bins, so its entropy depended on the intensity scale. A flat image puts all in bin 0.
    span = hi - lo
    frac = torch.where(span > 0, (grey - lo) / torch.where(span > 0, span, 1.0), 0.0)
    q = (frac * bins).long().clamp(0, bins - 1)  # (B, H, W) bin index
    rows = torch.arange(h, device=pixels.device) * gh // h
    cols = torch.arange(w, device=pixels.device) * gw // w
    patch = (rows[:, None] * gw + cols[None, :]).expand(b, h, w)  # (B, H, W) patch index
    idx = (patch * bins + q).flatten(1)
    ones = torch.ones_like(idx, dtype=torch.float)
    hist = torch.zeros(b, gh * gw * bins, device=pixels.device).scatter_add_(1, idx, ones)
    p = hist.view(b, gh * gw, bins)
    p = p / p.sum(-1, keepdim=True).clamp_min(1)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


class Knowing(nn.Module):
    """Three standardised relevance scores per patch.

    Args:
        dim: Feature width D of the fine patch tokens.
        query_dim: Width of the query embedding.
        attn_dim: Width of the query/key projections of the participatory score.
        num_prototypes: Codebook size of the feature-entropy histogram (used when no pixels are given).
        hist_bins: Grey-level bins of the pixel-entropy histogram.
        patch_grid: ``(Gh, Gw)`` layout of the K patches; ``None``: most square factorisation of K.
        identity_init: Initialise the query/key projections to (truncated) identities, so that before any training the
            participatory score is plain feature–query similarity. Requires ``query_dim == dim``.

    Shapes:
        features: (B, K, h, w, D)
        query: (B, Dq)
        pixels: (B, C, H, W)
        returns: (B, K, 3), columns (propositional, perspectival, participatory)
    """

    def __init__(self, dim: int, query_dim: int, *, attn_dim: int = 64, num_prototypes: int = 16, hist_bins: int = 32,
                 patch_grid: Sequence[int] | None = None, identity_init: bool = False, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        dim, query_dim, attn_dim, num_prototypes, hist_bins = (
            _check_int(nm, v, minimum=1) for nm, v in (("dim", dim), ("query_dim", query_dim), ("attn_dim", attn_dim),
                                                       ("num_prototypes", num_prototypes), ("hist_bins", hist_bins)))
        self.dim, self.query_dim, self.attn_dim = dim, query_dim, attn_dim
        self.hist_bins = hist_bins
        # Checked here as two ints: tuple() of a bare int raised a TypeError ('int' object is not iterable).
        self.patch_grid = _grid_pair(patch_grid) if patch_grid is not None else None
        self.q_proj = nn.Linear(query_dim, attn_dim, bias=False, **fk)
        self.k_proj = nn.Linear(dim, attn_dim, bias=False, **fk)
        self.feat_norm = nn.LayerNorm(dim, elementwise_affine=False, **fk)
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, dim, **fk))
        # Sharpness of the soft codebook assignment (learned, kept positive through exp).
        self.log_proto_temp = nn.Parameter(torch.zeros(1, **fk))  # shape (1,): FSDP cannot shard 0-dim params
        self.identity_init = identity_init
        if identity_init and query_dim != dim:
            raise ValueError(f"identity_init needs query_dim == dim, got {query_dim} != {dim}")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.identity_init:
            with torch.no_grad():
                wq = self.q_proj.weight
                eye = torch.eye(self.attn_dim, self.dim, device=wq.device, dtype=wq.dtype)
                self.q_proj.weight.copy_(eye)
                self.k_proj.weight.copy_(eye)
        else:
            nn.init.normal_(self.q_proj.weight, std=self.query_dim**-0.5)
            nn.init.normal_(self.k_proj.weight, std=self.dim**-0.5)
        nn.init.normal_(self.prototypes, std=1.0)
        nn.init.zeros_(self.log_proto_temp)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, query_dim={self.query_dim}, attn_dim={self.attn_dim}"

    # -- the three scores ------------------------------------------------------------------------------------------
    def propositional(self, features: Tensor, pixels: Tensor | None, grid: tuple[int, int]) -> Tensor:
        if pixels is not None:
            return pixel_entropy(pixels, grid, self.hist_bins).to(features.dtype)
        b, k, h, w, d = features.shape
        z = self.feat_norm(features.reshape(b, k, h * w, d))  # (B, K, n, D)
        protos = F.normalize(self.prototypes, dim=-1) * math.sqrt(d)
        logits = z @ protos.t() / math.sqrt(d) * self.log_proto_temp.exp()  # (B, K, n, M)
        p = torch.softmax(logits, dim=-1).mean(2)  # (B, K, M) soft histogram over prototypes
        return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)

    def perspectival(self, features: Tensor, grid: tuple[int, int]) -> Tensor:
        b, k, h, w, d = features.shape
        gh, gw = grid
        mean = features.mean(dim=(2, 3))  # (B, K, D)
        m = mean.transpose(1, 2).reshape(b, d, gh, gw)
        # Surround = mean of the neighbours that exist (fewer at borders): 3x3 box sum minus the centre, over count-1.
        box_sum = F.avg_pool2d(m, 3, stride=1, padding=1, divisor_override=1)
        count = F.avg_pool2d(torch.ones_like(m[:, :1]), 3, stride=1, padding=1, divisor_override=1)
        surround = (box_sum - m) / (count - 1).clamp_min(1)
        contrast = (m - surround).flatten(2).transpose(1, 2).norm(dim=-1)  # (B, K)
        # Within-patch contrast (rms distance to the patch mean). A flat patch (every fine token equal, always so on a
        # 1x1 fine grid) has exactly 0, where sqrt'(0) = inf would turn the backward into NaN: its gradient is 0.
        var = (features - mean[:, :, None, None]).square().sum(-1).mean(dim=(2, 3))
        inner = torch.where(var > 0, var.clamp_min(torch.finfo(var.dtype).tiny).sqrt(), torch.zeros_like(var))
        return contrast + inner

    def participatory(self, features: Tensor, query: Tensor) -> Tensor:
        b, k, h, w, d = features.shape
        q = self.q_proj(query)  # (B, A)
        keys = self.k_proj(features.reshape(b, k * h * w, d))  # (B, K·n, A)
        logits = (keys @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.attn_dim)  # (B, K·n)
        log_attn = torch.log_softmax(logits, dim=-1).view(b, k, h * w)
        return torch.logsumexp(log_attn, dim=-1)  # (B, K) log attention mass per patch

    def forward(self, features: Tensor, *, query: Tensor, pixels: Tensor | None = None) -> Tensor:
        _check_tensor("features", features)
        _check_tensor("query", query)
        _check_ndim("features", features, 5, "(B, K, h, w, D)")
        _check_ndim("query", query, 2, "(B, Dq)")
        b, k, h, w, d = features.shape
        if d != self.dim:
            raise ValueError(f"features width D={d} does not match Knowing(dim={self.dim})")
        if h < 1 or w < 1:
            # An empty fine grid has no patch mean: the scores came out NaN and were reported as such downstream.
            raise ValueError(f"features' fine grid must be at least 1x1, got h={h}, w={w}")
        if query.shape != (b, self.query_dim):
            raise ValueError(f"query shape {tuple(query.shape)} does not match (B={b}, Dq={self.query_dim})")
        if query.dtype != features.dtype:
            raise ValueError(f"query dtype {query.dtype} differs from features dtype {features.dtype}")
        _check_float("features", features)
        # Under autocast the projections cast for themselves; otherwise a mismatch would fail deep inside a matmul.
        pdtype = self.q_proj.weight.dtype
        if features.dtype != pdtype and not _autocast_enabled(features.device.type):
            raise ValueError(f"features dtype {features.dtype} differs from Knowing's parameter dtype {pdtype}")
        _check_same_device(features=features, query=query, **({"pixels": pixels} if pixels is not None else {}))
        _check_finite("features", features)
        _check_finite("query", query)
        grid = _check_patch_grid(self.patch_grid, k)
        if pixels is not None:
            _check_pixels(pixels, grid)
            if pixels.shape[0] != b:
                raise ValueError(f"pixels batch {pixels.shape[0]} does not match features batch {b}")
            # NaN/inf pixels are refused by pixel_entropy, the next thing to read them (one scan, not two).
        scores = torch.stack(
            [self.propositional(features, pixels, grid), self.perspectival(features, grid),
             self.participatory(features, query)], dim=-1)  # (B, K, 3)
        return standardize(scores, dim=1)
