"""Relevance distillation: teach ARR-COC's allocation where the LLM looks.

The straight-through gate (``arr_coc.pipeline``) gives the allocation a gradient only through a rescaling of each
patch's tokens, a weak signal: in the tiny CPU pilot (README, "CPU pilots") the trained allocation came out
query-blind. This module adds a direct, label-free signal. During training, one LLM layer's attention row from the
last prompt position (the position the answer is predicted from) is read without gradient; each patch's relevance is
the mean attention its visual tokens receive, normalised over the patches into a distribution ``p``. The loss is the
cross-entropy ``-Σ_k p_k log softmax(u)_k`` between that distribution and ARR-COC's utility ``u``, so patches the LLM
attends to for this question gain utility, hence tokens, and the gradient reaches the query path of ``knowing``
(participatory cross-attention) and the ``balancing`` weights.

Per-token mean, not the sum: a patch holding more tokens collects more attention mass simply by having more tokens,
which would make the teacher echo the current allocation.

The attention is recomputed from the layer's own ``q_proj``/``k_proj`` (and rotary embedding), so it works under SDPA
and FlashAttention, which never materialise attention weights (see :func:`eval.baselines._last_scores`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["default_layer", "gradient_saliency", "last_prompt_index", "patch_relevance", "read_attention",
           "relevance_loss", "soft_cross_entropy"]


def default_layer(num_layers: int) -> int:
    """The LLM layer (1-based) read when none is configured: the middle one."""
    return max(1, num_layers // 2)


def last_prompt_index(labels: Tensor, attention_mask: Tensor, ignore_index: int = -100) -> Tensor:
    """Position of each row's last prompt token: the one before its first supervised label.

    Shapes: labels (B, L), attention_mask (B, L) → (B,) int64.

    Raises:
        ValueError: a row without a supervised label, or whose first label is at position 0 (no prompt).
    """
    supervised = labels != ignore_index
    if not bool(supervised.any(1).all()):
        b = int((~supervised.any(1)).nonzero()[0, 0])
        raise ValueError(f"row {b} has no supervised label: relevance distillation needs the answer's position")
    first = supervised.int().argmax(1)
    if bool((first == 0).any()):
        b = int((first == 0).nonzero()[0, 0])
        raise ValueError(f"row {b} is supervised from position 0: there is no prompt position to read attention from")
    return first - 1


@contextlib.contextmanager
def read_attention(layer: nn.Module, query_index: Tensor, attention_mask: Tensor) -> Iterator[dict[str, Tensor]]:
    """While active, the first full-length forward of ``layer.self_attn`` stores (no gradient) the attention row of
    ``query_index`` over all positions, heads averaged, in ``state["attention"]`` (B, L).

    Args:
        layer: An HF Llama-style decoder layer (``self_attn`` with ``q_proj``, ``k_proj``, ``head_dim``).
        query_index: (B,) the position whose attention is read.
        attention_mask: (B, L) padding mask (1 = real token).
    """
    from eval.baselines import _last_scores

    state: dict[str, Tensor] = {}
    valid = attention_mask.bool()

    def read(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        if "attention" in state or h.shape[1] != valid.shape[1]:
            return None
        with torch.no_grad():
            state["attention"] = _last_scores(module, h.detach(), kwargs["position_embeddings"], valid, "last",
                                              query_index).float()
        return None

    handle = layer.self_attn.register_forward_pre_hook(read, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()


def patch_relevance(attention: Tensor, image_mask: Tensor, patch_index: Tensor, token_mask: Tensor,
                    num_patches: int) -> Tensor:
    """Per-patch relevance: the mean attention a patch's visual tokens receive, normalised over patches.

    Args:
        attention: (B, L) attention over the sequence (one query row).
        image_mask: (B, L) bool, the image placeholder positions, in visual-token order.
        patch_index: (B, T) patch of each visual token (ArrCoc's output).
        token_mask: (B, T) bool, real visual tokens (each row's ``True`` count equals its placeholder count).
        num_patches: K.

    Returns:
        (B, K) float32, each row sums to 1; a patch without tokens gets 0.
    """
    b = attention.shape[0]
    att = torch.zeros(token_mask.shape, dtype=torch.float32, device=attention.device)
    att[token_mask] = attention.float()[image_mask]  # placeholders are filled in visual-token order
    idx = patch_index.clamp_min(0).long()
    mass = torch.zeros(b, num_patches, dtype=torch.float32, device=attention.device).scatter_add_(
        1, idx, att * token_mask.float())
    count = torch.zeros_like(mass).scatter_add_(1, idx, token_mask.float())
    mean = torch.where(count > 0, mass / count.clamp_min(1), torch.zeros_like(mass))
    return mean / mean.sum(1, keepdim=True).clamp_min(torch.finfo(mean.dtype).tiny)


def gradient_saliency(grad: Tensor, embeds: Tensor) -> Tensor:
    """Gradient x input per position, ``|Σ_d g_d e_d|`` in float32: how much the loss moves, to first order, if that
    position's input embedding is scaled. The teacher of saliency distillation (``train.saliency_weight``): passed to
    :func:`patch_relevance` in place of an attention row, it gives each patch the mean over its visual tokens.

    Shapes: grad (B, L, E), embeds (B, L, E) → (B, L).
    """
    if grad.shape != embeds.shape:
        raise ValueError(f"grad {tuple(grad.shape)} and embeds {tuple(embeds.shape)} differ in shape")
    return (grad.detach().float() * embeds.detach().float()).sum(-1).abs()


def soft_cross_entropy(utility: Tensor, target: Tensor) -> Tensor:
    """Per row, ``-Σ_k p_k log softmax(u)_k`` in float32, with ``target`` ``p`` a fixed distribution (no gradient).

    Shapes: utility (B, K), target (B, K) → (B,).
    """
    return -(target.detach().to(utility.device) * F.log_softmax(utility.float(), dim=-1)).sum(-1)


def relevance_loss(utility: Tensor, relevance: Tensor) -> Tensor:
    """Mean over rows of the cross-entropy ``-Σ_k p_k log softmax(u)_k`` (``relevance`` ``p`` is a target, no grad).

    Shapes: utility (B, K), relevance (B, K) → scalar.
    """
    if utility.shape != relevance.shape:
        raise ValueError(f"utility {tuple(utility.shape)} and relevance {tuple(relevance.shape)} differ in shape")
    return soft_cross_entropy(utility, relevance).mean()
