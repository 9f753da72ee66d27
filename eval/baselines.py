"""Training-free visual-token reduction baselines, applied to a full-token ``ArrCocLlava`` at an exact token count.

Why: "ARR-COC keeps X% of full accuracy at T tokens" only means something next to what the known reduction methods
do with the same T tokens from the same full-token model. Every baseline here turns the full fine grid of the
vision tower (the ``N = K·h·w`` tokens the full-token model feeds its LLM, each with its true 2-D position) into
exactly ``T`` tokens per image, without training, and re-uses the model's position table, projector and LLM:

- ``uniform`` / ``threshold`` / ``proportional``: a per-patch utility (mean feature norm, or the vision tower's
  class-token attention) split into per-patch budgets by the registered allocators of the same name
  (:func:`arr_coc.create_allocator`), then pooled by :class:`arr_coc.Realizing`. ``uniform`` is plain adaptive
  average pooling of every patch (LLaVA-style pooling).
- ``visionzip``: VisionZip (Yang et al. 2024, "VisionZip: Longer is Better but Not Necessary in Vision Language
  Models"): *dominant* tokens are the ones the vision tower's class token attends to most (heads averaged, at the
  feature layer); the rest are *contextual*: evenly spaced targets among them absorb every other remaining token by
  cosine similarity, as averages. The split follows the paper's settings (54 + 10 of 64, i.e. 27/32 dominant).
- ``fastv``: FastV (Chen et al. 2024, "An Image is Worth 1/2 Tokens After Layer 2"): the LLM sees all ``N`` tokens
  in its first ``K`` layers; the attention that the last real prompt position pays to each image token in layer ``K``
  (1-based; heads averaged) ranks them, and layers ``K+1..`` see only the ``T`` best. The attention read works with
  SDPA: a forward pre-hook on that layer's attention recomputes ``softmax(q_last kᵀ/√d)`` from its own
  ``q_proj``/``k_proj`` and rotary embedding, so no eager attention or ``output_attentions`` is needed. Later
  layers drop the tokens through their 4-D attention mask (no one attends to them), which is exactly equivalent for
  every kept and text position and keeps the KV cache layout of HF ``generate`` (flash and flex attention, whose
  masks cannot hide single keys this way, are refused). Tokens before layer ``K`` are not
  reduced, so FastV's FLOPs fraction is above ``T/N`` (see :mod:`eval.flops`).
- ``tome``: ToMe bipartite soft matching (Bolya et al. 2023, "Token Merging: Your ViT but Faster"): tokens alternate
  into sets A and B; each A token's most similar (cosine) B token is its edge; the ``r`` strongest edges merge A
  into B by size-weighted averaging; rounds repeat (``r ≤ |A|`` per round) until exactly ``T`` remain. ToMe merges
  inside every ViT block, matching on the attention keys, with proportional attention; here it runs once on the
  feature layer's output, so it matches on those output features and no later attention needs the sizes.

Every token keeps a 2-D position: a selected token keeps its own, a pooled or merged one gets the (size-weighted)
mean of its members, exactly as Realizing positions ARR-COC's tokens, so the learned 2-D position table reads the
same coordinates for every method. Selected tokens stay in their original (patch, Hilbert) order, so token order
leaks nothing a baseline does not also get.

Interface: a :class:`TokenBaseline` registered by name (:func:`register_baseline`, :func:`create_baseline`,
:func:`list_baselines`), and :func:`create_method`, which binds a method name (``arr_coc`` for the model's own
layer, or a baseline) and a token fraction to a model, giving a :class:`VisualMethod` whose ``generate`` returns the
new ids plus the positions of the visual tokens the LLM kept.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arr_coc import Realizing, create_allocator
from arr_coc._utils import Registry
from models.vlm import _check_left_padded, full_token_count, tokens_for_fraction

__all__ = [
    "AllocatorBaseline", "BaselineMethod", "FastVBaseline", "MethodOutput", "ReducedTokens", "ToMeBaseline",
    "TokenBaseline", "VisionZipBaseline", "VisualMethod", "ArrCocMethod", "create_baseline", "create_method",
    "full_token_count", "full_tokens", "list_baselines", "list_methods", "register_baseline", "tokens_for_fraction",
    "vision_features_and_attention",
]

_REGISTRY: Registry[type["TokenBaseline"]] = Registry("baseline", attr="name")
_B = TypeVar("_B", bound=type)


# -- data ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReducedTokens:
    """A fixed number of visual tokens per image, before the position table and the projector.

    Attributes:
        tokens: (B, T, D) features.
        positions: (B, T, 2) (row, col) token centres in [0, 1].
        sizes: (B, T) how many full-grid tokens each token stands for (1 for selected tokens).
    """

    tokens: Tensor
    positions: Tensor
    sizes: Tensor


@dataclass(frozen=True)
class MethodOutput:
    """What :meth:`VisualMethod.generate` returns.

    Attributes:
        sequences: (B, N_new) generated ids (prompt excluded).
        positions: (B, T, 2) positions of the visual tokens the LLM finally attends to (after FastV's drop).
        tokens: (B,) int64 visual tokens per image that the LLM attends to after any in-LLM reduction.
        budgets: (B, K) ARR-COC's per-patch budgets when the method is ``arr_coc``, else ``None``.
    """

    sequences: Tensor
    positions: Tensor
    tokens: Tensor
    budgets: Tensor | None = None


# -- registry --------------------------------------------------------------------------------------------------------
def register_baseline(name: str) -> Callable[[_B], _B]:
    """Class decorator registering a :class:`TokenBaseline` subclass under ``name``."""
    return _REGISTRY.register(name)


def list_baselines() -> list[str]:
    """Registered baseline names, sorted."""
    return _REGISTRY.names()


def list_methods() -> list[str]:
    """Names ``create_method`` accepts: ``arr_coc`` (the model's own layer) and every baseline."""
    return ["arr_coc"] + list_baselines()


def create_baseline(name: str, **kwargs: Any) -> "TokenBaseline":
    """Build a registered baseline by name.

    Raises:
        ValueError: unknown ``name`` (the known ones are listed) or bad keyword arguments.
    """
    cls = _REGISTRY.get(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments {kwargs} for baseline {name!r}: {e}") from None


# -- the full token grid: full_token_count / tokens_for_fraction live in models.vlm (training uses them too)


def full_tokens(features: Tensor, patch_grid: tuple[int, int]) -> ReducedTokens:
    """The full-token model's visual tokens: every fine cell, in (patch, Hilbert) order, with its centre.

    Shapes:
        features: (B, K, h, w, D)
        returns: tokens (B, N, D), positions (B, N, 2), sizes (B, N) with N = K·h·w
    """
    b, k, h, w, _ = features.shape
    budgets = torch.full((b, k), h * w, dtype=torch.int64, device=features.device)
    r = Realizing(patch_grid)(features, budgets)
    return ReducedTokens(r.tokens, r.positions, torch.ones(r.mask.shape, dtype=features.dtype,
                                                           device=features.device))


def _full_order_attention(attention: Tensor, patch_grid: tuple[int, int]) -> Tensor:
    """Per-cell attention (B, K, h, w) in the same (patch, Hilbert) order as :func:`full_tokens`. → (B, N)."""
    return full_tokens(attention.unsqueeze(-1), patch_grid).tokens[..., 0]


# -- vision-tower attention (for VisionZip and attention utilities) --------------------------------------------------
def _mean_received(q: Tensor, k: Tensor, heads: int, n_spatial: int) -> Tensor:
    """Attention probabilities of projected queries and keys (B, L, D), heads averaged: the class-token row (or,
    without one, the mean over queries) restricted to the last ``n_spatial`` keys. → (B, S)."""
    b, length, d = q.shape
    q = q.view(b, length, heads, d // heads).transpose(1, 2)  # (B, H, L, hd)
    k = k.view(b, length, heads, d // heads).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)  # (B, H, L, L)
    n_prefix = length - n_spatial
    row = attn[:, :, 0] if n_prefix > 0 else attn.mean(2)  # (B, H, L)
    return row.mean(1)[:, n_prefix:]


def _open_clip_block_attention(block: nn.Module, x: Tensor, n_spatial: int) -> Tensor:
    """Attention probabilities of an open_clip ``ResidualAttentionBlock`` recomputed from its input. → (B, S)."""
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention):
        raise ValueError(f"vision attention read supports nn.MultiheadAttention blocks, got {type(attn).__name__}")
    y = block.ln_1(x)  # (B, L, D)
    d = attn.embed_dim
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(y, w[:d], None if bias is None else bias[:d])
    k = F.linear(y, w[d:2 * d], None if bias is None else bias[d:2 * d])
    return _mean_received(q, k, attn.num_heads, n_spatial)


def _hf_layer_attention(layer: nn.Module, x: Tensor, n_spatial: int) -> Tensor:
    """Attention probabilities of an HF CLIP/SigLIP encoder layer recomputed from its input. → (B, S)."""
    sa = layer.self_attn
    y = layer.layer_norm1(x)
    return _mean_received(sa.q_proj(y), sa.k_proj(y), int(sa.num_heads), n_spatial)


def vision_features_and_attention(vision: nn.Module, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """One vision-tower pass giving the fine features and the feature layer's class-token attention.

    The attention of the block that produces the features is recomputed from that block's input by a forward
    pre-hook (heads averaged; without a class token, the mean attention each token receives). It is resampled into
    the patch layout exactly like the features.

    Shapes:
        pixels: (B, 3, H, W)
        returns: features (B, K, h, w, D), attention (B, K, h, w)

    Raises:
        ValueError: a tower whose attention cannot be read (neither open_clip nor HF CLIP/SigLIP).
    """
    hg, wg = vision.token_grid
    captured: dict[str, Tensor] = {}
    if hasattr(vision, "visual"):  # models.vision.OpenClipVision
        block = vision.visual.transformer.resblocks[vision.layer_index]

        def read(module, args, kwargs):
            x = args[0] if args else kwargs["q_x"]
            captured["a"] = _open_clip_block_attention(module, x, hg * wg)
    elif hasattr(vision, "model") and hasattr(vision, "hidden_index"):  # models.vision.HFVision
        layers = vision._layers(vision.model)
        if layers is None or vision.hidden_index < 1:
            raise ValueError("the HF vision tower's feature layer is the embeddings; there is no attention to read")
        block = layers[min(vision.hidden_index, len(layers)) - 1]

        def read(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            captured["a"] = _hf_layer_attention(module, x, hg * wg)
    else:
        raise ValueError(f"cannot read the attention of a {type(vision).__name__} vision tower")
    handle = block.register_forward_pre_hook(read, with_kwargs=True)
    try:
        feats = vision(pixels)  # (B, K, h, w, D)
    finally:
        handle.remove()
    a = captured["a"].float().reshape(-1, 1, hg, wg)  # (B, 1, Hg, Wg)
    return feats, vision.to_patches(a)[..., 0]  # (B, K, h, w)


# -- baselines -------------------------------------------------------------------------------------------------------
class TokenBaseline:
    """A training-free reduction of the full token grid to exactly ``num_tokens`` tokens per image.

    Subclasses implement :meth:`reduce` (pre-LLM baselines) or set ``in_llm = True`` and implement
    :meth:`llm_hooks` (FastV). ``needs_attention`` asks the caller for the vision tower's class-token attention.
    """

    name: ClassVar[str] = ""
    needs_attention: ClassVar[bool] = False
    in_llm: ClassVar[bool] = False

    def reduce(self, features: Tensor, num_tokens: int, *, patch_grid: tuple[int, int],
               attention: Tensor | None = None) -> ReducedTokens:
        """Reduce the fine grid to ``num_tokens`` tokens per image.

        Shapes:
            features: (B, K, h, w, D)
            attention: (B, K, h, w) class-token attention at the feature layer (when ``needs_attention``)
            returns: tokens (B, T, D), positions (B, T, 2), sizes (B, T) with T = num_tokens
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_attention(attention: Tensor, features: Tensor, name: str) -> None:
    """The attention map must cover the features' cells one to one. Shapes (B, K, h, w), (B, K, h, w, D)."""
    if tuple(attention.shape) != tuple(features.shape[:4]):
        raise ValueError(f"{name}: attention of shape {tuple(attention.shape)} does not match the features' "
                         f"(B, K, h, w) = {tuple(features.shape[:4])}")


def _check_count(num_tokens: int, n: int, name: str) -> None:
    if not _is_int(num_tokens):  # a fraction of a token would be rounded somewhere, or crash
        raise ValueError(f"{name}: num_tokens must be an integer, got {num_tokens!r}")
    if not 1 <= num_tokens <= n:
        raise ValueError(f"{name}: num_tokens={num_tokens} must be in [1, N={n}] (the full token count)")


class AllocatorBaseline(TokenBaseline):
    """Per-patch budgets from a registered allocator on a training-free utility, then Realizing's pooling.

    Args:
        utility: ``"norm"`` (mean L2 norm of a patch's fine features) or ``"attention"`` (the class token's mean
            attention to the patch).
        min_tokens: Fewest tokens per patch (``num_tokens`` must be at least ``K · min_tokens``).
        allocator_kwargs: Passed to :func:`arr_coc.create_allocator`.
    """

    allocator: ClassVar[str] = ""

    def __init__(self, utility: str = "norm", min_tokens: int = 1, allocator_kwargs: dict | None = None):
        if utility not in ("norm", "attention"):
            raise ValueError(f"utility must be 'norm' or 'attention', got {utility!r}")
        if not _is_int(min_tokens) or min_tokens < 1:
            raise ValueError(f"min_tokens must be an integer >= 1 (every patch yields a token), got {min_tokens!r}")
        self.utility, self.min_tokens = utility, int(min_tokens)
        self.allocator_kwargs = dict(allocator_kwargs or {})

    @property
    def needs_attention(self) -> bool:  # type: ignore[override]
        return self.utility == "attention"

    def patch_utility(self, features: Tensor, attention: Tensor | None) -> Tensor:
        """Utility per patch. Shapes (B, K, h, w, D), (B, K, h, w) → (B, K)."""
        if self.utility == "attention":
            if attention is None:
                raise ValueError(f"{self.name} with utility='attention' needs the vision attention")
            _check_attention(attention, features, self.name)
            return attention.float().mean(dim=(2, 3))
        return features.float().norm(dim=-1).mean(dim=(2, 3))

    def reduce(self, features: Tensor, num_tokens: int, *, patch_grid: tuple[int, int],
               attention: Tensor | None = None) -> ReducedTokens:
        b, k, h, w, _ = features.shape
        _check_count(num_tokens, k * h * w, self.name)
        if num_tokens < k * self.min_tokens:
            raise ValueError(f"{self.name}: num_tokens={num_tokens} < K·min_tokens = {k}·{self.min_tokens}; "
                             f"every patch yields at least one pooled token")
        alloc = create_allocator(self.allocator, budget=num_tokens, min_tokens=self.min_tokens, max_tokens=h * w,
                                 **self.allocator_kwargs)
        budgets = alloc(self.patch_utility(features, attention))  # (B, K) int64, rows sum to num_tokens
        r = Realizing(patch_grid)(features, budgets.to(features.device))
        # Every row holds exactly num_tokens tokens, so the padded layout has no padding.
        sizes = (h * w / budgets.to(features.dtype)).gather(1, r.patch_index.clamp_min(0))
        return ReducedTokens(r.tokens, r.positions, sizes)


@register_baseline("uniform")
class UniformPoolBaseline(AllocatorBaseline):
    """Adaptive average pooling: every patch gets ``num_tokens / K`` tokens (remainder to the first patches)."""

    allocator = "uniform"


@register_baseline("threshold")
class ThresholdBaseline(AllocatorBaseline):
    """Patches above the mean utility get full detail, the others the minimum, made budget-exact."""

    allocator = "threshold"


@register_baseline("proportional")
class ProportionalBaseline(AllocatorBaseline):
    """The free tokens shared in proportion to the utility."""

    allocator = "proportional"


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of ``x`` per sample. Shapes (B, N, C), (B, M) → (B, M, C)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@register_baseline("visionzip")
class VisionZipBaseline(TokenBaseline):
    """Dominant tokens by class-token attention plus similarity-merged contextual tokens (VisionZip).

    One difference from the paper's method: the contextual tokens are grouped by the cosine similarity of the tower's
    output features, where VisionZip measures it on that layer's attention keys; grouping (each remaining token joins
    its most similar target) and merging (the mean of the target and its members) follow the paper.

    Args:
        dominant_fraction: Share of the ``T`` tokens that are dominant; the paper uses 54/64 (= 27/32).
    """

    needs_attention = True

    def __init__(self, dominant_fraction: float = 54 / 64):
        if not _is_real(dominant_fraction) or not 0.0 < dominant_fraction <= 1.0:  # True read as 1, "0.5" a TypeError
            raise ValueError(f"dominant_fraction must be in (0, 1], got {dominant_fraction!r}")
        self.dominant_fraction = float(dominant_fraction)

    def reduce(self, features: Tensor, num_tokens: int, *, patch_grid: tuple[int, int],
               attention: Tensor | None = None) -> ReducedTokens:
        if attention is None:
            raise ValueError("visionzip needs the vision tower's class-token attention")
        _check_attention(attention, features, self.name)
        full = full_tokens(features, patch_grid)
        x, pos = full.tokens, full.positions  # (B, N, D), (B, N, 2)
        b, n, d = x.shape
        _check_count(num_tokens, n, self.name)
        score = _full_order_attention(attention.to(x.dtype), patch_grid)  # (B, N)
        n_dom = max(1, min(num_tokens, int(round(num_tokens * self.dominant_fraction))))
        n_ctx = num_tokens - n_dom
        # Dominant: the most attended tokens (ties to the lower index), kept in their original order.
        order = torch.sort(-score, dim=1, stable=True).indices  # (B, N)
        dom = order[:, :n_dom].sort(dim=1).values  # (B, n_dom)
        dom_tok, dom_pos = _gather(x, dom), _gather(pos, dom)
        ones = torch.ones(b, n_dom, dtype=x.dtype, device=x.device)
        if n_ctx == 0:
            return ReducedTokens(dom_tok, dom_pos, ones)
        rest = order[:, n_dom:].sort(dim=1).values  # (B, R) remaining tokens, original order
        r = rest.shape[1]
        rest_tok, rest_pos = _gather(x, rest), _gather(pos, rest)
        # Contextual: evenly spaced targets among the remaining tokens; every other one joins its most similar
        # target (cosine), and each target becomes the mean of its group.
        tgt_local = torch.linspace(0, r - 1, n_ctx, device=x.device).round().long()  # (n_ctx,)
        # float32 linspace can round two neighbours to one index once r passes ~3,200 (n_ctx = r - 1): a repeated
        # target left an empty group (0 / 0, a NaN token). Lifting t_i - i to its running maximum keeps indices that
        # are already distinct (t_i - i is then non-decreasing) and makes the rest strictly increasing, still <= r - 1.
        steps = torch.arange(n_ctx, device=x.device)
        tgt_local = torch.cummax(tgt_local - steps, 0).values + steps
        is_tgt = torch.zeros(r, dtype=torch.bool, device=x.device)
        is_tgt[tgt_local] = True
        unit = F.normalize(rest_tok.float(), dim=-1)
        sim = unit @ unit[:, tgt_local].transpose(1, 2)  # (B, R, n_ctx)
        assign = sim.argmax(-1)  # (B, R)
        assign[:, tgt_local] = torch.arange(n_ctx, device=x.device)  # a target belongs to itself
        count = torch.zeros(b, n_ctx, dtype=x.dtype, device=x.device).scatter_add_(
            1, assign, torch.ones(b, r, dtype=x.dtype, device=x.device))
        ctx_tok = torch.zeros(b, n_ctx, d, dtype=x.dtype, device=x.device).scatter_add_(
            1, assign.unsqueeze(-1).expand(-1, -1, d), rest_tok) / count.unsqueeze(-1)
        ctx_pos = torch.zeros(b, n_ctx, 2, dtype=pos.dtype, device=x.device).scatter_add_(
            1, assign.unsqueeze(-1).expand(-1, -1, 2), rest_pos) / count.unsqueeze(-1).to(pos.dtype)
        return ReducedTokens(torch.cat([dom_tok, ctx_tok], 1), torch.cat([dom_pos, ctx_pos], 1),
                             torch.cat([ones, count], 1))


@register_baseline("tome")
class ToMeBaseline(TokenBaseline):
    """Bipartite soft matching, repeated until exactly ``num_tokens`` tokens remain (ToMe).

    Args:
        max_ratio: Largest fraction of the current tokens merged in one round (ToMe merges ``r`` per block; at most
            ``|A|`` = half can merge per round).
    """

    def __init__(self, max_ratio: float = 0.5):
        if not _is_real(max_ratio) or not 0.0 < max_ratio <= 0.5:
            raise ValueError(f"max_ratio must be in (0, 0.5], got {max_ratio!r}")
        self.max_ratio = float(max_ratio)

    @staticmethod
    def merge_round(x: Tensor, pos: Tensor, size: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
        """One bipartite soft matching step removing ``r`` tokens.

        Shapes:
            x: (B, N, D); pos: (B, N, 2); size: (B, N)
            returns: (B, N - r, D), (B, N - r, 2), (B, N - r)
        """
        a_x, b_x = x[:, ::2], x[:, 1::2]  # alternate partition, as in ToMe
        unit = F.normalize(x.float(), dim=-1)
        scores = unit[:, ::2] @ unit[:, 1::2].transpose(1, 2)  # (B, Na, Nb) cosine similarity
        best, dst = scores.max(-1)  # each A token's edge to its most similar B token
        edge = torch.sort(-best, dim=1, stable=True).indices  # strongest edges first
        src, keep = edge[:, :r], edge[:, r:].sort(dim=1).values  # merged A tokens / unmerged A (original order)
        dst_idx = dst.gather(1, src)  # (B, r)

        def merge(v: Tensor, vb: Tensor, s_a: Tensor, s_b: Tensor) -> tuple[Tensor, Tensor]:
            # Size-weighted average (ToMe's "proportional" bookkeeping of how many patches a token holds).
            c = v.shape[-1]
            w_src = _gather(v[:, ::2] * s_a.unsqueeze(-1), src)
            acc = (vb * s_b.unsqueeze(-1)).scatter_add(1, dst_idx.unsqueeze(-1).expand(-1, -1, c), w_src)
            tot = s_b.scatter_add(1, dst_idx, s_a.gather(1, src))
            return acc / tot.unsqueeze(-1), tot

        s_a, s_b = size[:, ::2], size[:, 1::2]
        new_b, new_size_b = merge(x, b_x, s_a, s_b)
        new_bpos, _ = merge(pos, pos[:, 1::2], s_a.to(pos.dtype), s_b.to(pos.dtype))
        out_x = torch.cat([_gather(a_x, keep), new_b.to(x.dtype)], 1)
        out_pos = torch.cat([_gather(pos[:, ::2], keep), new_bpos], 1)
        out_size = torch.cat([s_a.gather(1, keep), new_size_b], 1)
        return out_x, out_pos, out_size

    def reduce(self, features: Tensor, num_tokens: int, *, patch_grid: tuple[int, int],
               attention: Tensor | None = None) -> ReducedTokens:
        full = full_tokens(features, patch_grid)
        x, pos, size = full.tokens, full.positions, full.sizes
        _check_count(num_tokens, x.shape[1], self.name)
        while x.shape[1] > num_tokens:
            n = x.shape[1]
            r = min(n - num_tokens, max(1, int(n * self.max_ratio)), (n + 1) // 2)
            x, pos, size = self.merge_round(x, pos, size, r)
        return ReducedTokens(x, pos, size)


@register_baseline("fastv")
class FastVBaseline(TokenBaseline):
    """Drop the least-attended image tokens inside the LLM after layer ``layer`` (FastV).

    Args:
        layer: ``K``: layers ``1..K`` see every image token; layer ``K``'s attention ranks them; later layers see the
            ``T`` best. The paper's default is ``K = 2``; ``None`` uses 2, or 1 for an LLM of at most 2 layers.
        score: ``"last"``: attention from the last real prompt position (what the next token is predicted from);
            ``"mean"``: the mean attention a token receives from all later positions (the paper's ranking).
    """

    in_llm = True

    def __init__(self, layer: int | None = None, score: str = "last"):
        if layer is not None and (not _is_int(layer) or layer < 1):
            raise ValueError(f"fastv layer must be an integer >= 1 (layers before the drop), got {layer!r}")
        if score not in ("last", "mean"):
            raise ValueError(f"fastv score must be 'last' or 'mean', got {score!r}")
        self.layer, self.score = layer, score
        self.last_scores: Tensor | None = None  # (B, L) attention read at the last prefill, for inspection
        self.last_keep: Tensor | None = None  # (B, L) bool: image positions kept

    def reduce(self, features: Tensor, num_tokens: int, *, patch_grid: tuple[int, int],
               attention: Tensor | None = None) -> ReducedTokens:
        # The LLM gets every token; the reduction happens inside it (llm_hooks).
        return full_tokens(features, patch_grid)

    def layer_for(self, num_layers: int) -> int:
        """``K`` for an LLM of ``num_layers`` layers."""
        return self.layer if self.layer is not None else (2 if num_layers > 2 else 1)

    def visual_per_layer(self, num_layers: int, full: int, num_tokens: int) -> list[int]:
        """Visual tokens each LLM layer sees (for :mod:`eval.flops`)."""
        k = min(self.layer_for(num_layers), num_layers)
        return [full] * k + [num_tokens] * (num_layers - k)

    @contextlib.contextmanager
    def llm_hooks(self, layers: nn.ModuleList, image_mask: Tensor, attention_mask: Tensor, num_tokens: int, *,
                  score_index: Tensor | None = None) -> Iterator["FastVBaseline"]:
        """Hooks on the LLM's attention modules for one ``generate`` call.

        Args:
            layers: The decoder layers (each with ``self_attn`` holding ``q_proj``, ``k_proj``, ``head_dim``).
            image_mask: (B, L) bool, image placeholder positions of the prompt (each row holds the same count).
            attention_mask: (B, L) the prompt's padding mask (1 = real token).
            num_tokens: Image tokens to keep per row.
            score_index: (B,) position whose attention ranks the tokens in ``"last"`` mode (default: the last real
                position of each row).

        Raises:
            ValueError: ``layer`` not below the number of layers, rows with fewer image tokens than kept, a
                ``score_index`` that is not one real position per row, or an attention implementation whose mask
                cannot hide single keys (flash attention, flex attention).
        """
        k_layer = self.layer_for(len(layers))
        if k_layer >= len(layers):
            raise ValueError(f"fastv layer={k_layer} leaves no layer to prune in an LLM of {len(layers)} layers")
        impl = str(getattr(getattr(layers[0].self_attn, "config", None), "_attn_implementation", None) or "")
        if "flash" in impl or "flex" in impl:
            # Flash kernels take a key-padding mask (or none), flex a BlockMask: the dropped keys need a 4-D mask.
            raise ValueError(f"fastv hides the dropped tokens through a 4-D attention mask, which "
                             f"attn_implementation={impl!r} does not take; use 'sdpa' or 'eager'")
        n_img = image_mask.sum(1)
        if bool((n_img < num_tokens).any()):
            raise ValueError(f"fastv: rows hold {n_img.tolist()} image tokens, fewer than num_tokens={num_tokens}")
        b_in, prompt_len = image_mask.shape
        valid = attention_mask.bool()
        if score_index is not None:
            score_index = torch.as_tensor(score_index, device=image_mask.device)
            ok = score_index.shape == (b_in,) and not score_index.is_floating_point()
            if ok and bool(((score_index < 0) | (score_index >= prompt_len)).any()):
                ok = False
            if not ok or not bool(valid.gather(1, score_index.long().view(-1, 1)).all()):
                raise ValueError(f"fastv: score_index={score_index.tolist()} must hold one real (unpadded) position "
                                 f"in [0, {prompt_len}) for each of the {b_in} rows")
        state: dict[str, Tensor] = {}

        def rows(t: Tensor, n: int) -> Tensor:
            # generate repeats each prompt in place for beams / num_return_sequences: (B, ...) -> (n, ...).
            return t if t.shape[0] == n else t.repeat_interleave(n // b_in, dim=0)

        def read(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            if h.shape[1] != prompt_len or "drop" in state:
                return None  # decoding steps: the selection was made at prefill
            n = h.shape[0]
            if n % b_in:
                raise ValueError(f"fastv: the LLM runs {n} rows for a batch of {b_in} prompts")
            img, ok = rows(image_mask, n), rows(valid, n)
            scores = _last_scores(module, h, kwargs["position_embeddings"], ok, self.score,
                                  None if score_index is None else rows(score_index, n))  # (n, L)
            masked = torch.where(img, scores, torch.full_like(scores, float("inf")))
            # Ascending by score, ties to the lower index: the first (n_img - T) image positions are dropped.
            order = torch.sort(masked, dim=1, stable=True).indices
            ranks = torch.arange(prompt_len, device=h.device).expand_as(order)
            rank = torch.empty_like(order).scatter_(1, order, ranks)
            drop = img & (rank < (rows(n_img, n) - num_tokens).unsqueeze(1))
            state["drop"], state["valid"] = drop, ok
            # Copies of one prompt select alike: report one row per prompt.
            self.last_scores, self.last_keep = scores.detach()[:: n // b_in], (img & ~drop)[:: n // b_in]
            return None

        def mask_dropped(module, args, kwargs):
            if "drop" not in state:
                return None
            h = args[0] if args else kwargs["hidden_states"]
            kwargs = dict(kwargs)
            mask, kv = kwargs.get("attention_mask"), None
            cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
            if mask is None and h.shape[1] != prompt_len and cache is not None:
                # An unpadded batch's decoding step: keys = what the cache holds before this step + the new query.
                kv = cache.get_seq_length(getattr(module, "layer_idx", 0)) + h.shape[1]
            kwargs["attention_mask"] = _mask_keys(mask, state["drop"], state["valid"], h.shape[1], kv)
            return args, kwargs

        handles = [layers[k_layer - 1].self_attn.register_forward_pre_hook(read, with_kwargs=True)]
        handles += [layers[i].self_attn.register_forward_pre_hook(mask_dropped, with_kwargs=True)
                    for i in range(k_layer, len(layers))]
        try:
            yield self
        finally:
            for hd in handles:
                hd.remove()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _last_scores(attn: nn.Module, h: Tensor, position_embeddings: tuple[Tensor, Tensor], valid: Tensor,
                 mode: str, score_index: Tensor | None = None) -> Tensor:
    """Attention of an HF Llama-style attention module recomputed from its input (heads averaged).

    ``last``: the attention row of each row's last real position (or of ``score_index``; keys after it are masked).
    ``mean``: the mean attention each key receives from the real
    queries at or after it (FastV's ranking).

    Shapes:
        h: (B, L, E) the layer's normalised input
        valid: (B, L) bool padding mask
        returns: (B, L)
    """
    b, length, _ = h.shape
    hd = int(attn.head_dim)
    q, k = attn.q_proj(h), attn.k_proj(h)  # (B, L, H·hd), (B, L, Hkv·hd)
    norm = getattr(getattr(attn, "q_norm", None), "weight", None)
    whole = norm is not None and norm.shape[-1] == q.shape[-1] != hd
    if whole:  # OLMo-2 normalises the whole projection, before the head split
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.view(b, length, -1, hd), k.view(b, length, -1, hd)
    if hasattr(attn, "q_norm") and not whole:  # Qwen3 style per-head norms
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, L, hd), (B, Hkv, L, hd)
    mod = sys.modules.get(type(attn).__module__)
    cos, sin = position_embeddings
    rope = getattr(mod, "apply_rotary_pos_emb", None)
    if rope is not None:
        q, k = rope(q, k, cos, sin)
    else:
        q = q * cos.unsqueeze(1) + _rotate_half(q) * sin.unsqueeze(1)
        k = k * cos.unsqueeze(1) + _rotate_half(k) * sin.unsqueeze(1)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: each kv head serves a group of query heads
    scale = float(getattr(attn, "scaling", hd ** -0.5))
    if mode == "last":
        if score_index is None:  # the last unpadded position: right padding leaves pads at the end
            idx = (length - 1) - valid.flip(1).int().argmax(1)
        else:
            idx = score_index.to(h.device).long()
        q_row = q.gather(2, idx.view(b, 1, 1, 1).expand(-1, q.shape[1], 1, hd))  # (B, H, 1, hd)
        logits = (q_row.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, 1, L)
        allowed = valid & (torch.arange(length, device=h.device)[None, :] <= idx[:, None])
        logits = logits.masked_fill(~allowed[:, None, None, :], float("-inf"))
        return torch.softmax(logits, -1).mean(1)[:, 0]
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, L, L)
    causal = torch.ones(length, length, dtype=torch.bool, device=h.device).tril()
    allowed = causal[None, None] & valid[:, None, None, :]
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)  # padded rows → 0
    probs = probs * valid[:, None, :, None]  # only real queries vote
    received = probs.mean(1).sum(1)  # (B, L)
    voters = (valid.flip(1).cumsum(1).flip(1)).to(received.dtype)  # real queries at or after each position
    return received / voters.clamp_min(1)


def _mask_keys(mask: Tensor | None, drop: Tensor, valid: Tensor, q_len: int, kv: int | None = None) -> Tensor:
    """Add "never attend to the dropped keys" to an HF attention mask (bool: True attends; float: additive).

    SDPA passes no mask when causality alone suffices (no row padded); it is then rebuilt, with ``kv`` keys: the
    prompt at prefill, the cached length plus ``q_len`` at a decoding step (the caller reads it from the cache).

    Shapes:
        mask: (B, 1, q, kv) or None (SDPA's implicit causal mask)
        drop: (B, L) bool, dropped prompt positions; valid: (B, L) prompt padding mask
        returns: (B, 1, q, kv)
    """
    b, prompt_len = drop.shape
    if mask is not None:
        kv = mask.shape[-1]
    elif kv is None:
        if q_len != prompt_len:
            raise ValueError("fastv: cannot infer the key length of a decoding step without an attention mask "
                             "or a key/value cache")
        kv = prompt_len
    drop_kv = F.pad(drop, (0, kv - prompt_len))  # generated positions are never dropped
    if mask is None:
        qi = torch.arange(q_len, device=drop.device)[:, None] + (kv - q_len)
        causal = torch.arange(kv, device=drop.device)[None, :] <= qi  # (q, kv)
        pad = F.pad(valid, (0, kv - prompt_len), value=True)
        mask = causal[None, None] & pad[:, None, None, :]
    if mask.dtype == torch.bool:
        return mask & ~drop_kv[:, None, None, :]
    return mask.masked_fill(drop_kv[:, None, None, :], torch.finfo(mask.dtype).min)


# -- methods bound to a model ----------------------------------------------------------------------------------------
class VisualMethod:
    """A way of feeding a model's LLM ``num_tokens`` visual tokens per image.

    Subclasses implement :meth:`embed` (input embeddings with the visual tokens in place) and may override
    :meth:`llm_context` (hooks active while the LLM runs, FastV). :meth:`generate` and :meth:`logits` combine them.

    Attributes:
        name: Method name (``arr_coc`` or a baseline).
        num_tokens: Visual tokens per image the LLM ends up attending to.
        placeholders: ``<image>`` expansion length the prompt must use (``N`` for FastV, else ``num_tokens``).
        full_tokens: ``N`` of the full-token model.
    """

    name: str = ""

    def __init__(self, model: nn.Module, num_tokens: int):
        self.model = model
        self.num_tokens = int(num_tokens)
        self.full_tokens = full_token_count(model)
        self.placeholders = self.num_tokens

    def visual_per_layer(self) -> list[int]:
        """Visual tokens each LLM layer sees."""
        return [self.num_tokens] * int(self.model.config.text_config.num_hidden_layers)

    def embed(self, pixel_values: Tensor, input_ids: Tensor, *, query_input_ids: Tensor | None = None,
              query_attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Input embeddings with the visual tokens scattered into the placeholders.

        Shapes:
            pixel_values: (B, 3, H, W); input_ids: (B, L) with ``placeholders`` image ids per row
            returns: embeddings (B, L, E), token positions (B, P, 2) in placeholder order, ArrCoc budgets (B, K)
        """
        raise NotImplementedError

    def llm_context(self, input_ids: Tensor, attention_mask: Tensor,
                    score_index: Tensor | None = None) -> contextlib.AbstractContextManager:
        """Hooks active while the LLM runs (none by default)."""
        return contextlib.nullcontext()

    def kept(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Positions (B, T, 2) and counts (B,) of the visual tokens the LLM attended to after the last call."""
        return positions, torch.full((positions.shape[0],), positions.shape[1], dtype=torch.int64)

    @torch.no_grad()
    def generate(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, *,
                 query_input_ids: Tensor | None = None, query_attention_mask: Tensor | None = None,
                 **generate_kwargs: Any) -> MethodOutput:
        """New ids for left-padded prompts (``placeholders`` image ids each), plus the kept tokens' positions."""
        embeds, pos, budgets = self.embed(pixel_values, input_ids, query_input_ids=query_input_ids,
                                          query_attention_mask=query_attention_mask)
        cfg = self.model.config.text_config
        generate_kwargs.setdefault("pad_token_id", cfg.pad_token_id if getattr(cfg, "pad_token_id", None) is not None
                                   else 0)
        _check_left_padded(attention_mask)  # a right-padded row would continue after its padding, silently
        with self.llm_context(input_ids, attention_mask):
            seq = self.model.llava.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
        pos, counts = self.kept(pos)
        return MethodOutput(seq, pos, counts, budgets)

    @torch.no_grad()
    def logits(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, *,
               query_input_ids: Tensor | None = None, query_attention_mask: Tensor | None = None,
               score_index: Tensor | None = None) -> Tensor:
        """Next-token logits ``(B, L, V)`` of full sequences (for log-likelihood scoring).

        ``score_index`` (B,): the position whose attention ranks FastV's tokens (default: the last real one); pass the
        last *prompt* position so that the ranking never sees the continuation being scored.
        """
        embeds, _, _ = self.embed(pixel_values, input_ids, query_input_ids=query_input_ids,
                                  query_attention_mask=query_attention_mask)
        with self.llm_context(input_ids, attention_mask, score_index):
            return self.model.llava(inputs_embeds=embeds, attention_mask=attention_mask).logits


class ArrCocMethod(VisualMethod):
    """The model's own ArrCoc layer, at its trained budget or at ``num_tokens`` (the allocator's budget is swapped
    for the call; every registered allocator takes any feasible budget)."""

    name = "arr_coc"

    def __init__(self, model: nn.Module, num_tokens: int | None = None):
        super().__init__(model, model.budget if num_tokens is None else num_tokens)
        alloc = model.arr_coc.attending
        k = model.arr_coc.num_patches
        if not k * alloc.min_tokens <= self.num_tokens <= k * alloc.max_tokens:
            raise ValueError(f"arr_coc cannot spend num_tokens={self.num_tokens}: its allocator needs "
                             f"K·min = {k * alloc.min_tokens} <= budget <= K·max = {k * alloc.max_tokens}")

    def embed(self, pixel_values, input_ids, *, query_input_ids=None, query_attention_mask=None):
        if query_input_ids is None:
            raise ValueError("arr_coc needs query_input_ids (the question) to allocate its tokens")
        m = self.model
        with m.arr_coc.budget_override(self.num_tokens):
            embeds, out = m.embed_inputs(pixel_values, input_ids, query_input_ids=query_input_ids,
                                         query_attention_mask=query_attention_mask)
        return embeds, out.positions, out.budgets


class BaselineMethod(VisualMethod):
    """A :class:`TokenBaseline` applied to the model's full fine grid; the model's own ArrCoc layer is bypassed."""

    def __init__(self, model: nn.Module, baseline: TokenBaseline, num_tokens: int):
        super().__init__(model, num_tokens)
        self.baseline = baseline
        self.name = baseline.name
        _check_count(self.num_tokens, self.full_tokens, baseline.name)
        if baseline.in_llm:
            self.placeholders = self.full_tokens
            n_layers = int(model.config.text_config.num_hidden_layers)
            if baseline.layer_for(n_layers) >= n_layers:
                raise ValueError(f"fastv layer={baseline.layer_for(n_layers)} leaves no layer to prune in an LLM of "
                                 f"{n_layers} layers")

    def visual_per_layer(self) -> list[int]:
        n_layers = int(self.model.config.text_config.num_hidden_layers)
        if self.baseline.in_llm:
            return self.baseline.visual_per_layer(n_layers, self.full_tokens, self.num_tokens)
        return [self.num_tokens] * n_layers

    def reduced_tokens(self, pixel_values: Tensor) -> ReducedTokens:
        """The baseline's tokens for a batch of images (float32 features, as ArrCoc sees them)."""
        m = self.model
        if self.baseline.needs_attention:
            feats, attn = vision_features_and_attention(m.vision, pixel_values)
        else:
            feats, attn = m.vision(pixel_values), None
        n = self.full_tokens if self.baseline.in_llm else self.num_tokens
        return self.baseline.reduce(feats.float(), n, patch_grid=tuple(m.vision.patch_grid), attention=attn)

    def embed(self, pixel_values, input_ids, *, query_input_ids=None, query_attention_mask=None):
        m = self.model
        red = self.reduced_tokens(pixel_values)
        image_embeds = m.project_visual(red.tokens, red.positions)  # (B, T, E)
        return m.scatter_visual(input_ids, image_embeds, source=self.name), red.positions, None

    def llm_context(self, input_ids, attention_mask, score_index=None):
        if not self.baseline.in_llm:
            return contextlib.nullcontext()
        self._placeholders = input_ids == self.model.image_token_id
        return self.baseline.llm_hooks(self.model.language_model.layers, self._placeholders, attention_mask,
                                       self.num_tokens, score_index=score_index)

    def kept(self, positions):
        if not self.baseline.in_llm:
            return super().kept(positions)
        b = positions.shape[0]
        keep = self.baseline.last_keep[self._placeholders].view(b, -1)  # (B, N) in token order
        return positions[keep].view(b, self.num_tokens, 2), keep.sum(1)


def create_method(name: str, model: nn.Module, token_fraction: float | None = None,
                  **baseline_kwargs: Any) -> VisualMethod:
    """Bind a method to a model at a token fraction of the full-token count ``N``.

    Args:
        name: ``arr_coc`` (the model's own layer; ``token_fraction=None`` keeps its trained budget) or a baseline.
        model: An ``ArrCocLlava``; baselines use its vision tower, position table, projector and LLM.
        token_fraction: ``T = round(token_fraction · N)``; required for baselines.
        **baseline_kwargs: Passed to the baseline's constructor.

    Raises:
        ValueError: an unknown name, a missing or bad fraction, or an infeasible token count.
    """
    if name == "arr_coc":
        if baseline_kwargs:
            raise ValueError(f"arr_coc takes no baseline arguments, got {baseline_kwargs}")
        return ArrCocMethod(model, None if token_fraction is None else tokens_for_fraction(model, token_fraction))
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}")
    if token_fraction is None:
        raise ValueError(f"baseline {name!r} needs a token_fraction")
    return BaselineMethod(model, create_baseline(name, **baseline_kwargs), tokens_for_fraction(model, token_fraction))
