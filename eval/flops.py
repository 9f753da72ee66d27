"""How much LLM compute the visual tokens cost: the "visual-token FLOPs fraction" that every evaluation reports.

Definition (prefill of one prompt, multiply-adds counted as 2 FLOPs, the LM head and the vision tower excluded):
the *visual-token FLOPs* of a decoder layer are all the FLOPs that exist only because visual tokens are in the
sequence, namely

- the per-token linear work of every visual token: the q/k/v/o projections and the MLP (SwiGLU: gate, up, down);
- the attention work ``QKᵀ`` and ``AV`` of every (query, key) pair of the causal mask in which the query or the key
  (or both) is a visual token.

The *visual-token FLOPs fraction* of a method is its visual-token FLOPs summed over the layers divided by those of
the full-token model (every fine token in every layer), for the same text prompt. A method that keeps ``T`` of ``N``
tokens in every layer scores a little below ``T / N`` (attention is quadratic); FastV, whose first ``K`` layers still
see all ``N`` tokens, scores higher than its kept fraction (Chen et al. 2024 count FLOPs the same way, per layer).

The vision tower is the same for every method here (all of them read the full fine grid) and ARR-COC's own scoring
layer costs O(K·D) per image, negligible next to the LLM, so neither enters the fraction.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any, Sequence

__all__ = ["layer_dims", "visual_flops", "visual_flops_fraction"]


def layer_dims(text_config: Any) -> dict[str, int]:
    """Widths of one decoder layer from an HF text config (Llama-style names).

    Returns:
        ``hidden``, ``q`` (heads x head_dim), ``kv`` (kv heads x head_dim), ``ffn`` and ``layers``.
    """
    hidden = int(text_config.hidden_size)
    heads = int(text_config.num_attention_heads)
    head_dim = int(getattr(text_config, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
    return {"hidden": hidden, "q": heads * head_dim, "kv": kv_heads * head_dim,
            "ffn": int(text_config.intermediate_size), "layers": int(text_config.num_hidden_layers)}


def _count(value: Any, what: str) -> int:
    """A token count as an int: Python, NumPy and 0-d integer tensor values pass; floats, bools and strings are
    refused (``int()`` truncated 16.7 to 16, read "7" as 7 and True as 1)."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ValueError(f"{what} must be an integer, got {value!r}")


def _layer_visual_flops(dims: dict[str, int], n_before: int, n_visual: int, n_after: int) -> float:
    """Visual-token FLOPs of one layer for a prompt laid out as ``[n_before text][n_visual image][n_after text]``."""
    d, q, kv, ffn = dims["hidden"], dims["q"], dims["kv"], dims["ffn"]
    linear = 2 * (d * q + 2 * d * kv + q * d) + 2 * 3 * d * ffn  # per token: q, k, v, o projections + SwiGLU MLP
    # Causal (query, key) pairs touching a visual token: visual queries see the prefix and the visual tokens up to
    # themselves; text queries after the image see all visual keys.
    pairs = n_visual * n_before + n_visual * (n_visual + 1) // 2 + n_after * n_visual
    attn = 2 * 2 * q * pairs  # QKᵀ and AV, each 2·head_dim·heads FLOPs per pair
    return float(n_visual * linear + attn)


def visual_flops(text_config: Any, visual_per_layer: Sequence[int] | int, *, n_before: int = 0,
                 n_after: int = 0) -> float:
    """Visual-token FLOPs of a prefill (see the module docstring).

    Args:
        text_config: The LLM's HF text config.
        visual_per_layer: Visual tokens each layer sees: one int for all layers, or one per layer (FastV).
        n_before: Text tokens before the image in the prompt.
        n_after: Text tokens after the image.

    Raises:
        ValueError: a per-layer list whose length differs from the layer count, or a count that is negative or not
            an integer.
    """
    dims = layer_dims(text_config)
    if isinstance(visual_per_layer, numbers.Integral) and not isinstance(visual_per_layer, bool):  # NumPy ints too
        counts = [int(visual_per_layer)] * dims["layers"]
    elif hasattr(visual_per_layer, "__iter__") and not isinstance(visual_per_layer, str):
        counts = [_count(v, "visual_per_layer entries") for v in visual_per_layer]
    else:
        raise ValueError(f"visual_per_layer must be an integer or one integer per layer, got {visual_per_layer!r}")
    if len(counts) != dims["layers"]:
        raise ValueError(f"visual_per_layer has {len(counts)} entries but the LLM has {dims['layers']} layers")
    n_before, n_after = _count(n_before, "n_before"), _count(n_after, "n_after")
    if min(counts + [n_before, n_after]) < 0:
        raise ValueError(f"token counts must be >= 0, got visual={counts}, n_before={n_before}, n_after={n_after}")
    return sum(_layer_visual_flops(dims, n_before, v, n_after) for v in counts)


def visual_flops_fraction(text_config: Any, visual_per_layer: Sequence[int] | int, full_tokens: int, *,
                          n_before: int = 0, n_after: int = 0) -> float:
    """Visual-token FLOPs of a method over those of the full-token model (``full_tokens`` in every layer)."""
    full_tokens = _count(full_tokens, "full_tokens")
    if full_tokens < 1:
        raise ValueError(f"full_tokens must be >= 1, got {full_tokens}")
    full = visual_flops(text_config, full_tokens, n_before=n_before, n_after=n_after)
    return visual_flops(text_config, visual_per_layer, n_before=n_before, n_after=n_after) / full
