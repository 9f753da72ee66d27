"""Query encoders: the question as one vector ``(B, Dq)`` for ARR-COC's participatory (query ↔ patch) score.

Two sources:

- :class:`OpenClipText`: the open_clip text tower (Radford et al. 2021). Its embedding lives in the same space as the
  CLIP image embedding, which makes it a strong zero-shot relevance signal when the vision tower is the matching
  CLIP. Costs a second text encoder and its tokenizer.
- :class:`LlmEmbeddingQuery`: the mean of the LLM's own input embeddings over the question tokens. Free (no extra
  weights, one embedding lookup), always available, and trained end to end with the LLM; weaker at initialisation
  because input embeddings carry no context. This is the default in the presets.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

__all__ = ["LlmEmbeddingQuery", "OpenClipText", "masked_mean"]


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the sequence of the positions where ``mask`` is true; an all-false row gives zeros.

    Shapes:
        x: (B, L, E)
        mask: (B, L)
        returns: (B, E)
    """
    if mask is None:
        return x.mean(1)
    w = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1)


class LlmEmbeddingQuery(nn.Module):
    """Mean-pooled LLM input embeddings of the question tokens. Parameter-free.

    Shapes:
        embeds: (B, L, E) the LLM's input embeddings of the question tokens
        attention_mask: (B, L) true at real question tokens
        returns: (B, E)
    """

    def forward(self, embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if embeds.dim() != 3:
            raise ValueError(f"embeds must have shape (B, L, E), got {tuple(embeds.shape)}")
        if attention_mask is not None and attention_mask.shape != embeds.shape[:2]:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match embeds "
                             f"(B, L) = {tuple(embeds.shape[:2])}")
        return masked_mean(embeds, attention_mask)


class OpenClipText(nn.Module):
    """The text tower of an open_clip model as a query encoder.

    Args:
        clip: An open_clip ``CLIP`` / ``CustomTextCLIP``; its ``visual`` tower is detached here (it belongs to the
            vision backend), so the module holds the text weights only.
        tokenizer: The model's open_clip tokenizer (``open_clip.get_tokenizer(name)``); used by :meth:`tokenize`.
        normalize: L2-normalise the embedding (as CLIP's contrastive head does).

    Shapes:
        input_ids: (B, L) open_clip token ids, as returned by :meth:`tokenize`
        returns: (B, E) with E the CLIP embedding width
    """

    def __init__(self, clip: nn.Module, tokenizer: Callable[[Sequence[str]], Tensor] | None = None, *,
                 normalize: bool = False):
        super().__init__()
        if not hasattr(clip, "encode_text"):
            raise ValueError(f"OpenClipText needs an open_clip model with encode_text, got {type(clip).__name__}")
        clip.visual = None  # the vision backend owns the visual tower
        if hasattr(clip, "logit_scale"):
            # Contrastive temperature/bias are not used for encoding; keep them out of training and checkpoints.
            clip.logit_scale = None
            clip.logit_bias = None
        self.clip = clip
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.output_dim = int(self._output_dim(clip))

    @staticmethod
    def _output_dim(clip: nn.Module) -> int:
        proj = getattr(clip, "text_projection", None)
        if isinstance(proj, Tensor):
            return proj.shape[1]
        if isinstance(proj, nn.Linear):
            return proj.out_features
        text = getattr(clip, "text", None)
        if text is not None and getattr(text, "output_dim", None):
            return text.output_dim
        raise ValueError(f"cannot tell the text embedding width of {type(clip).__name__}")

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """open_clip token ids for a batch of strings. Shape (B, context_length)."""
        if self.tokenizer is None:
            raise ValueError("OpenClipText was built without a tokenizer")
        return self.tokenizer(list(texts))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        # open_clip pools at the end-of-text token (or its configured rule); padding needs no mask.
        del attention_mask
        return self.clip.encode_text(input_ids, normalize=self.normalize)

