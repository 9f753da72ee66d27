"""``ArrCocLlava``: ARR-COC as a drop-in visual-token layer for a Hugging Face LLaVA model.

LLaVA (Liu et al. 2023, "Visual Instruction Tuning"; LLaVA-1.5, Liu et al. 2024) feeds every vision-tower token
through a projector into the LLM. Here the path is

    pixels ─► vision tower ─► (B, K, h, w, Dv) ─► ArrCoc(query) ─► tokens (B, budget, Dv) + E_pos(row, col)
          ─► multi-modal projector ─► (B, budget, E) ─► masked_scatter into the input embeddings at <image> ids

so the LLM sees exactly ``budget`` visual tokens per image, spent where the question points. ``E_pos`` is the learned
2-D position embedding of :mod:`models.position` (why it is there and why zero-initialised is documented there).

Weights. The wrapped ``LlavaForConditionalGeneration`` keeps its projector, language model and LM head; its own
vision tower is either used (the ``hf``/``llava`` backend, moved into :class:`~models.vision.HFVision`) or dropped
(the ``open_clip`` backend). So a real checkpoint loads with
``LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf")`` and is wrapped by
``models.builders.build_model`` (see ``configs/models/llava15_7b.yaml``); our own checkpoints (``model.safetensors``)
load with :func:`load_state_dict_nonstrict`, which tolerates exactly the parameters LLaVA leaves unused.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from arr_coc import ArrCoc, ArrCocOutput
from models.position import FootprintEmbedding, PositionEmbedding2d
from models.text import LlmEmbeddingQuery
from models.vision import VisionTower, hf_checkpointing

__all__ = ["ArrCocLlava", "ArrCocLlavaOutput", "full_token_count", "load_state_dict_nonstrict", "tokens_for_fraction"]


def full_token_count(model: nn.Module) -> int:
    """``N = K·h·w``: visual tokens of the full-token model (every fine cell of every patch)."""
    (h, w) = model.vision.fine_grid
    return int(model.vision.num_patches * h * w)


def tokens_for_fraction(model: nn.Module, token_fraction: float) -> int:
    """``round(token_fraction · N)`` visual tokens per image.

    Raises:
        ValueError: a fraction outside (0, 1] or one that rounds to no token.
    """
    if isinstance(token_fraction, bool) or not isinstance(token_fraction, numbers.Real):
        raise ValueError(f"token_fraction must be a real number in (0, 1], got {token_fraction!r}")
    f = float(token_fraction)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"token_fraction must be in (0, 1], got {token_fraction!r}")
    n = full_token_count(model)
    t = int(round(f * n))
    if t < 1:
        raise ValueError(f"token_fraction={token_fraction} of N={n} full tokens rounds to {t} tokens")
    return t


@dataclass(frozen=True)
class ArrCocLlavaOutput:
    """Result of :meth:`ArrCocLlava.forward`.

    Attributes:
        loss: Mean next-token cross-entropy over the label tokens (``None`` without labels).
        logits: (B, L, V) next-token logits.
        arr_coc: The ArrCoc layer's output (budgets (B, K), scores, positions, ...).
        past_key_values: The LLM's cache, when it returns one.
        alloc_context: (B, K, C) the per-patch context a learning allocator (``bandit``) chose with, detached;
            ``None`` for the other allocators. Lets a trainer credit rewards gathered from several processes.
    """

    loss: Tensor | None
    logits: Tensor
    arr_coc: ArrCocOutput
    past_key_values: Any = None
    alloc_context: Tensor | None = None


class ArrCocLlava(nn.Module):
    """A LLaVA model whose visual tokens come from an :class:`~arr_coc.ArrCoc` layer.

    Args:
        llava: A ``transformers.LlavaForConditionalGeneration``. Its ``config.image_token_id`` marks the placeholders;
            its own vision tower should already be removed or moved into ``vision``.
        vision: The feature source, returning ``(B, K, h, w, Dv)``; ``Dv`` must equal ``arr_coc.dim`` and the
            projector's input width.
        arr_coc: The budget layer; ``arr_coc.budget`` visual tokens per image.
        query_encoder: ``None`` (or :class:`~models.text.LlmEmbeddingQuery`): the mean of the LLM's input embeddings
            of the question tokens. Otherwise a module ``(query_input_ids, query_attention_mask) → (B, Dq)``, e.g.
            :class:`~models.text.OpenClipText`.
        pos_embed: Learned 2-D position embedding added to the tokens before the projector (``None``: none).
        footprint_embed: Learned embedding of each token's footprint (fine cells per token) added with the position
            embedding (``None``: none); see :class:`~models.position.FootprintEmbedding`.
        use_pixel_entropy: Give ArrCoc the pixels, so its propositional score is the grey-level entropy.

    Shapes:
        pixel_values: (B, 3, H, W)
        input_ids, attention_mask, labels: (B, L); each row holds exactly ``budget`` image-token ids
        query_input_ids, query_attention_mask: (B, Lq)
    """

    def __init__(self, llava: nn.Module, vision: VisionTower, arr_coc: ArrCoc, *,
                 query_encoder: nn.Module | None = None, pos_embed: PositionEmbedding2d | None = None,
                 footprint_embed: FootprintEmbedding | None = None, use_pixel_entropy: bool = False):
        super().__init__()
        cfg = llava.config
        proj_in = llava.model.multi_modal_projector.linear_1.in_features
        if vision.feature_dim != arr_coc.dim or proj_in != arr_coc.dim:
            raise ValueError(f"widths disagree: vision features D={vision.feature_dim}, ArrCoc dim={arr_coc.dim}, "
                             f"projector input={proj_in}")
        if vision.num_patches != arr_coc.num_patches or tuple(vision.patch_grid) != tuple(arr_coc.patch_grid):
            raise ValueError(f"vision patch grid {vision.patch_grid} (K={vision.num_patches}) differs from ArrCoc's "
                             f"{arr_coc.patch_grid} (K={arr_coc.num_patches})")
        if pos_embed is not None and pos_embed.dim != arr_coc.dim:
            raise ValueError(f"pos_embed width {pos_embed.dim} != ArrCoc dim {arr_coc.dim}")
        if footprint_embed is not None and footprint_embed.dim != arr_coc.dim:
            raise ValueError(f"footprint_embed width {footprint_embed.dim} != ArrCoc dim {arr_coc.dim}")
        if getattr(arr_coc.attending, "mode", "exact") != "exact":
            # The prompt holds exactly `budget` image placeholders: an allocation with slack leaves some unfilled.
            raise ValueError(f"ArrCocLlava needs an allocator that spends its budget exactly; "
                             f"{type(arr_coc.attending).__name__} has mode={arr_coc.attending.mode!r} "
                             "(use mode='exact')")
        # LLaVA's own tower is either moved into ``vision`` (HF backend) or dead weight next to ours: one owner only.
        llava.model.vision_tower = None
        self.llava = llava
        self.vision = vision
        self.arr_coc = arr_coc
        self.query_encoder = query_encoder if query_encoder is not None else LlmEmbeddingQuery()
        self.pos_embed = pos_embed
        self.footprint_embed = footprint_embed
        self.use_pixel_entropy = use_pixel_entropy
        self.image_token_id = int(cfg.image_token_id)

    # -- parts ---------------------------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.llava.config

    @property
    def budget(self) -> int:
        return self.arr_coc.budget

    @property
    def projector(self) -> nn.Module:
        return self.llava.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.llava.model.language_model

    def get_input_embeddings(self) -> nn.Module:
        return self.llava.get_input_embeddings()

    def fsdp_blocks(self) -> list[nn.Module]:
        """Modules to shard one per FSDP group (LLM decoder layers, vision blocks); the rest joins the root."""
        layers = getattr(self.language_model, "layers", None)
        return list(self.vision.fsdp_blocks()) + (list(layers) if layers is not None else [])

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by part: ``vision``, ``arr_coc``, ``projector`` (with the position and footprint tables),
        ``query``,
        ``llm`` (everything of the LLaVA model that is not the projector)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in
                                                              ("vision", "arr_coc", "projector", "query", "llm")}
        proj = {id(p) for p in self.projector.parameters()}
        for name, p in self.named_parameters():
            if name.startswith("vision."):
                groups["vision"].append((name, p))
            elif name.startswith("arr_coc."):
                groups["arr_coc"].append((name, p))
            elif name.startswith(("pos_embed.", "footprint_embed.")) or id(p) in proj:
                groups["projector"].append((name, p))
            elif name.startswith("query_encoder."):
                groups["query"].append((name, p))
            else:
                groups["llm"].append((name, p))
        return groups

    def set_trainable(self, *, vision: bool, llm: bool, arr_coc: bool, projector: bool = True,
                      query: bool = False) -> None:
        """Freeze or unfreeze each part (see :meth:`parameter_groups`)."""
        flags = {"vision": vision, "llm": llm, "arr_coc": arr_coc, "projector": projector, "query": query}
        for part, params in self.parameter_groups().items():
            for _, p in params:
                p.requires_grad_(bool(flags[part]))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                      **kwargs: Any) -> None:
        """HF's ``gradient_checkpointing_enable``: the LLM's decoder layers and the vision tower's blocks recompute
        their activations in the backward pass. ``gradient_checkpointing_kwargs`` (for ``torch.utils.checkpoint``) and
        ``kwargs`` (``every_n_layers``, ...) go to the wrapped LLaVA's own method; ArrCoc and the projector are small
        and keep theirs."""
        hf_checkpointing(self.llava, True, gradient_checkpointing_kwargs, **kwargs)
        self.vision.set_grad_checkpointing(True, gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        hf_checkpointing(self.llava, False)
        self.vision.set_grad_checkpointing(False)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                        **kwargs: Any) -> None:
        """The newer transformers' name of :meth:`gradient_checkpointing_enable`."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.language_model, "gradient_checkpointing", False))

    # -- the ARR-COC path ----------------------------------------------------------------------------------------------
    def encode_query(self, query_input_ids: Tensor, query_attention_mask: Tensor | None = None) -> Tensor:
        """The question as one vector. Shapes (B, Lq), (B, Lq) → (B, Dq)."""
        if not isinstance(query_input_ids, Tensor) or query_input_ids.dim() != 2:
            shape = tuple(query_input_ids.shape) if isinstance(query_input_ids, Tensor) else query_input_ids
            raise ValueError(f"query_input_ids must have shape (B, Lq), got {shape}")
        if isinstance(self.query_encoder, LlmEmbeddingQuery):
            embeds = self.get_input_embeddings()(query_input_ids)  # (B, Lq, E)
            return self.query_encoder(embeds, query_attention_mask)
        return self.query_encoder(query_input_ids, query_attention_mask)

    def visual_tokens(self, pixel_values: Tensor, query: Tensor) -> tuple[Tensor, ArrCocOutput]:
        """Projected visual tokens. Shapes (B, 3, H, W), (B, Dq) → (B, T, E) with T = budget, plus ArrCoc's output."""
        feats = self.vision(pixel_values)  # (B, K, h, w, Dv)
        # ArrCoc runs in its own (float32) precision whatever the towers use: it is small, and its scores feed an
        # exact integer allocation that bf16 rounding would make jittery.
        # Autocast is switched off around it for the same reason (FSDP2's mixed precision leaves it alone too).
        dt = self.arr_coc.knowing.q_proj.weight.dtype
        feats, query = feats.to(dt), query.to(dt)
        with _no_autocast(feats.device.type):
            out = self.arr_coc(feats, query=query, pixels=pixel_values.to(dt) if self.use_pixel_entropy else None)
        footprint = None
        if self.footprint_embed is not None:
            # Patch k's tokens each average h*w / budgets[b, k] fine cells; padding (patch_index -1) is masked.
            per_token = out.budgets.gather(1, out.patch_index.clamp(min=0))  # (B, T)
            footprint = (feats.shape[2] * feats.shape[3]) / per_token.to(torch.float32)
        return self.project_visual(out.tokens, out.positions, out.mask, footprint=footprint), out  # (B, T, E)

    def project_visual(self, tokens: Tensor, positions: Tensor, mask: Tensor | None = None, *,
                       footprint: Tensor | None = None) -> Tensor:
        """Visual tokens into the LLM's embedding space: add the 2-D position (and footprint) embedding, then the
        projector.

        Shapes: (B, T, Dv) tokens, (B, T, 2) positions in [0, 1], optional (B, T) mask, optional (B, T) footprint
        (fine cells per token; ``None``: one cell each, i.e. full detail, whose footprint embedding is zero)
        → (B, T, E).
        """
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed(positions.to(tokens.dtype), mask).to(tokens.dtype)
        if self.footprint_embed is not None and footprint is not None:
            tokens = tokens + self.footprint_embed(footprint, mask).to(tokens.dtype)
        return self.projector(tokens.to(self.projector.linear_1.weight.dtype))

    def scatter_visual(self, input_ids: Tensor, image_embeds: Tensor, mask: Tensor | None = None, *,
                       source: str = "ArrCoc") -> Tensor:
        """The text embeddings of ``input_ids`` with ``image_embeds[mask]`` written into the image placeholders.

        Shapes: (B, L) ids, (B, T, E) visual embeddings, optional (B, T) mask of real tokens → (B, L, E).

        Raises:
            ValueError: when a sample's placeholder count differs from its visual-token count (both are named,
                with ``source``, the producer of the tokens).
        """
        if image_embeds.dim() != 3 or image_embeds.shape[0] != input_ids.shape[0]:
            raise ValueError(f"image_embeds of shape {tuple(image_embeds.shape)} must be (B, T, E) with B = "
                             f"{input_ids.shape[0]}, the batch of input_ids {tuple(input_ids.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(image_embeds.shape[:2]):
            raise ValueError(f"mask of shape {tuple(mask.shape)} must match image_embeds' (B, T) "
                             f"{tuple(image_embeds.shape[:2])}")
        placeholders = input_ids == self.image_token_id  # (B, L)
        n_ph = placeholders.sum(1)
        n_tok = (mask.sum(1) if mask is not None
                 else torch.full_like(n_ph, image_embeds.shape[1]))
        if not torch.equal(n_ph, n_tok):
            b = int((n_ph != n_tok).nonzero()[0, 0])
            raise ValueError(
                f"image placeholder / visual token count mismatch in sample {b}: input_ids hold {int(n_ph[b])} "
                f"image tokens (id {self.image_token_id}) but {source} produced {int(n_tok[b])} visual tokens; "
                "expand <image> with the model's processor")
        embeds = self.get_input_embeddings()(input_ids)  # (B, L, E)
        flat = image_embeds[mask] if mask is not None else image_embeds.reshape(-1, image_embeds.shape[-1])
        return embeds.masked_scatter(placeholders.unsqueeze(-1), flat.to(embeds.dtype))

    def embed_inputs(self, pixel_values: Tensor, input_ids: Tensor, *, query_input_ids: Tensor,
                     query_attention_mask: Tensor | None = None) -> tuple[Tensor, ArrCocOutput]:
        """Input embeddings with the visual tokens scattered into the image placeholders.

        Shapes:
            pixel_values: (B, 3, H, W)
            input_ids: (B, L)
            returns: (B, L, E) embeddings and the ArrCoc output

        Raises:
            ValueError: when a sample's placeholder count differs from its visual-token count (both are named).
        """
        if input_ids.dim() != 2 or pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"input_ids must be (B, L) with B = pixel_values' batch {pixel_values.shape[0]}, "
                             f"got {tuple(input_ids.shape)}")
        query = self.encode_query(query_input_ids, query_attention_mask)
        image_embeds, out = self.visual_tokens(pixel_values, query)
        return self.scatter_visual(input_ids, image_embeds, out.mask, source=f"ArrCoc (budget={self.budget})"), out

    # -- LLaVA API -----------------------------------------------------------------------------------------------------
    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                query_input_ids: Tensor, query_attention_mask: Tensor | None = None, labels: Tensor | None = None,
                **lm_kwargs: Any) -> ArrCocLlavaOutput:
        """Training / scoring forward: the LLaVA LM over the merged embeddings (HF's shifted loss with ``labels``).

        Raises:
            ValueError: when the prompt (plus a passed cache's length) exceeds the LLM's ``max_position_embeddings``.
        """
        _check_attention_mask(attention_mask, input_ids)
        cached = getattr(lm_kwargs.get("past_key_values"), "get_seq_length", None)  # a transformers Cache
        self._check_positions(input_ids.shape[1] + (int(cached()) if cached is not None else 0))
        embeds, out = self.embed_inputs(pixel_values, input_ids, query_input_ids=query_input_ids,
                                        query_attention_mask=query_attention_mask)
        lm = self.llava(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs)
        return ArrCocLlavaOutput(loss=lm.loss, logits=lm.logits, arr_coc=out,
                                 past_key_values=getattr(lm, "past_key_values", None),
                                 alloc_context=out.context)

    @torch.no_grad()
    def generate(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                 query_input_ids: Tensor, query_attention_mask: Tensor | None = None, **generate_kwargs: Any) -> Tensor:
        """Greedy/sampled continuation of left-padded prompts; returns only the new tokens, shape (B, N).

        Works on an FSDP2-sharded model too: the root group is gathered for the duration of the call. Without an
        ``attention_mask`` it is inferred from ``input_ids`` as HF's ``generate`` infers it (pad tokens masked when
        the pad id occurs and is not an EOS id): the LLM sees embeddings only, so it could not tell padding otherwise.

        Raises:
            ValueError: for right-padded prompts (a row whose mask ends in 0), which would continue after the padding;
                when the prompt plus ``max_new_tokens`` exceeds the LLM's ``max_position_embeddings``.
        """
        _check_attention_mask(attention_mask, input_ids)
        config = generate_kwargs.get("generation_config") or self.llava.generation_config
        new = generate_kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
        self._check_positions(input_ids.shape[1], int(new) if new is not None else 0)
        with self._unsharded():
            embeds, _ = self.embed_inputs(pixel_values, input_ids, query_input_ids=query_input_ids,
                                          query_attention_mask=query_attention_mask)
            generate_kwargs.setdefault("pad_token_id", self.config.text_config.pad_token_id
                                       if getattr(self.config.text_config, "pad_token_id", None) is not None else 0)
            if attention_mask is None:
                attention_mask = self._infer_attention_mask(input_ids, generate_kwargs)
            _check_left_padded(attention_mask)
            return self.llava.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    def _check_positions(self, length: int, new_tokens: int = 0) -> None:
        """Refuses a sequence the LLM has no positions for: a RoPE LLM would run past them without an error."""
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is None or length + new_tokens <= limit:
            return
        what = f"{length} prompt tokens + {new_tokens} new tokens" if new_tokens else f"{length} tokens"
        raise ValueError(f"{what} (of which {self.budget} visual) exceed the LLM's max_position_embeddings={limit}: "
                         f"shorten the prompt, lower the visual budget or max_new_tokens, or raise it (model config key "
                         f"llm.text_config.max_position_embeddings) where the LLM's position scheme supports it")

    def _infer_attention_mask(self, input_ids: Tensor, generate_kwargs: dict[str, Any]) -> Tensor | None:
        """HF's rule: mask the pad id where it occurs, unless it is also an EOS id (then nothing is masked)."""
        pad = generate_kwargs.get("pad_token_id")
        eos = generate_kwargs.get("eos_token_id", getattr(self.llava.generation_config, "eos_token_id", None))
        eos = [] if eos is None else [int(e) for e in (eos.tolist() if isinstance(eos, Tensor) else
                                                       eos if isinstance(eos, (list, tuple)) else [eos])]
        if pad is None or int(pad) in eos or not bool((input_ids == int(pad)).any()):
            return None
        return (input_ids != int(pad)).long()

    @contextlib.contextmanager
    def _unsharded(self) -> Iterator[None]:
        # An FSDP2 module gathers its root group only in its own forward; generate() calls sub-modules directly.
        unshard = getattr(self, "unshard", None)
        if callable(unshard) and hasattr(self, "reshard"):
            unshard()
            try:
                yield
            finally:
                self.reshard()
        else:
            yield


def _check_attention_mask(attention_mask: Tensor | None, input_ids: Tensor) -> None:
    """A (B, L) padding mask must match ``input_ids``: HF slices or broadcasts a wrong one silently."""
    if (isinstance(attention_mask, Tensor) and attention_mask.dim() == 2
            and tuple(attention_mask.shape) != tuple(input_ids.shape)):
        raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} must match input_ids' "
                         f"{tuple(input_ids.shape)}")


def _check_left_padded(attention_mask: Tensor | None) -> None:
    """Generation continues every row at its right end: a right-padded prompt would continue after its padding (HF
    warns only when it sees ``input_ids``; here it sees embeddings, so the batch silently generated other tokens)."""
    if isinstance(attention_mask, Tensor) and attention_mask.dim() == 2 and not bool(attention_mask[:, -1].all()):
        b = int((attention_mask[:, -1] == 0).nonzero()[0, 0])
        raise ValueError(f"generate needs left-padded prompts, but row {b} of attention_mask ends in padding "
                         "(right-padded); pad on the left: processor(..., padding_side='left'), the default")


@contextlib.contextmanager
def _no_autocast(device_type: str) -> Iterator[None]:
    """Autocast off for ``device_type`` inside the block (a no-op where it is off or the device has none)."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # device types without autocast (e.g. meta)
        on = False
    with torch.autocast(device_type, enabled=False) if on else contextlib.nullcontext():
        yield


def load_state_dict_nonstrict(model: nn.Module, state_dict: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """Load weights, tolerating only the keys LLaVA leaves unused; anything else missing or unexpected raises.

    Tolerated: ``llava.model.vision_tower.*`` (dropped for the open_clip backend) and the open_clip heads that
    :class:`~models.vision.OpenClipVision` prunes. Returns the ignored (missing, unexpected) keys.

    Raises:
        ValueError: on any other missing or unexpected key (the first few are named).
    """
    tolerated = ("llava.model.vision_tower.", "vision.visual.proj", "vision.visual.ln_post", "vision.visual.attn_pool",
                 "query_encoder.clip.logit_")
    res = model.load_state_dict(state_dict, strict=False)
    bad_missing = [k for k in res.missing_keys if not k.startswith(tolerated)]
    bad_unexpected = [k for k in res.unexpected_keys if not k.startswith(tolerated)]
    if bad_missing or bad_unexpected:
        raise ValueError(f"state dict does not fit the model: missing {bad_missing[:8]} "
                         f"({len(bad_missing)} total), unexpected {bad_unexpected[:8]} ({len(bad_unexpected)} total)")
    return ([k for k in res.missing_keys if k.startswith(tolerated)],
            [k for k in res.unexpected_keys if k.startswith(tolerated)])
