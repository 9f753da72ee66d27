"""Processor for ``ArrCocLlava``: images to normalised pixels, text to ids with exactly ``budget`` image placeholders.

ARR-COC gives every image exactly ``budget`` visual tokens (the default allocators hit the total exactly), so the
prompt's single ``<image>`` is expanded to ``budget`` copies of the image token id, as the LLaVA processor does with
its fixed 576. The expansion happens on ids (the text is tokenised with one ``<image>`` special token, then that id is
repeated), so it costs nothing and cannot be split by a tokenizer merge.

``build_byte_tokenizer`` makes a tokenizer without any download: one token per UTF-8 byte plus the special tokens,
saved and reloaded like any ``PreTrainedTokenizerFast``. The tiny and bench presets use it; real checkpoints use
their own tokenizer (``AutoTokenizer.from_pretrained``), with ``<image>`` added when missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from arr_coc._utils import _grid_pair

__all__ = ["ArrCocProcessor", "IGNORE_INDEX", "build_byte_tokenizer", "pad_sequences", "to_rgb"]


def _token_count(budget: Any, requirement: str) -> int:
    """``budget`` as an int >= 1; ``ValueError`` ("budget must be <requirement>, got ...") for a bool, a number that
    is not whole (2.5 was truncated to 2) or one below 1."""
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ValueError(f"budget must be {requirement}, got {budget!r}")
    return int(budget)


#: Label value ignored by the loss (prompt, image and padding positions).
IGNORE_INDEX = -100


def build_byte_tokenizer(image_token: str = "<image>"):
    """A byte-level tokenizer: ids 0-3 are ``<pad>, <s>, </s>, image_token``, then one id per byte (vocab 260).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with pad/bos/eos set and ``image_token`` as a special token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ("<pad>", "<s>", "</s>", image_token)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({ch: len(specials) + i for i, ch in enumerate(alphabet)})
    # BPE with no merges is exactly a byte-level tokenizer in the GPT-2 byte-to-unicode alphabet.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=[image_token])
    fast.add_bos_token = True
    return fast


_RESIZE = ("squash", "pad", "crop")


def _check_image_batch(images: Any) -> None:
    """``ValueError`` unless ``images`` is a non-empty sequence (a lone image or array is not a batch)."""
    from PIL import Image

    if isinstance(images, (Image.Image, np.ndarray)):
        raise ValueError(f"images must be a non-empty sequence of images (one per sample), got one "
                         f"{type(images).__name__}; wrap it in a list")
    if len(images) == 0:
        raise ValueError("images must be a non-empty sequence of images (one per sample), got an empty sequence")


# 16-bit unsigned grey (16-bit PNG and TIFF files open in these modes): full scale 0..65535, so 8 bits is exact
# arithmetic. Other wide modes (32-bit integer "I", float "F", signed 16-bit) have no fixed scale.
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")


def _wide_mode(mode: str) -> bool:
    """Modes that ``convert("RGB")`` clips to 0..255 and that :func:`to_rgb` cannot scale: it raises for them."""
    return mode not in _GREY16 and (mode in ("I", "F") or mode.startswith(("I;", "F;")))


def to_rgb(img):
    """A PIL image as 8-bit ``RGB``; transparency is composited over white (as transformers' ``convert_to_rgb``).

    ``img.convert("RGB")`` drops an alpha channel and shows whatever colour the transparent pixels happen to hold
    (often black: a transparent-background chart or logo turns black where it should be blank). Images with an alpha
    channel (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``) and palette or grey images with a ``transparency`` entry are
    blended over white by their alpha first. 16-bit grey (``I;16*``: 16-bit PNG and TIFF files) is scaled to 8 bits,
    ``round(v * 255 / 65535)``, where ``convert`` would clip every value above 255 to white. 32-bit integer (``I``)
    and float (``F``) images have no fixed scale: ``ValueError`` (scale them to 8 bits first). Every other mode
    converts as PIL does.
    """
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in _GREY16:
        v = np.asarray(img).astype(np.uint32)  # native order whatever the mode's byte order
        return Image.fromarray(((v + 128) // 257).astype(np.uint8), "L").convert("RGB")  # round(v / 257)
    if _wide_mode(img.mode):
        raise ValueError(f"PIL mode {img.mode!r} (32-bit integer or float pixels, no fixed range) would be clipped to "
                         "0..255 by convert('RGB'); scale it to 8 bits (mode 'L' or 'RGB') first")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        # Premultiplied grey (La) converts only to LA in PIL; every other mode here converts to RGBA directly.
        rgba = (img.convert("LA") if img.mode == "La" else img).convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


class ArrCocProcessor:
    """Images and prompts → model inputs for ``ArrCocLlava``.

    Args:
        tokenizer: The LLM's tokenizer; must know ``image_token`` as a single token (added if missing).
        budget: Visual tokens per image; each ``image_token`` is expanded to this many ids.
        image_size: ``(H, W)`` the vision tower expects.
        image_mean: Per-channel mean for normalisation.
        image_std: Per-channel std.
        image_token: The placeholder in prompts.
        image_resize: How an image of another aspect ratio reaches ``image_size``: ``"squash"`` (resize, stretching
            it), ``"pad"`` (pad to the target aspect with the mean colour, then resize: LLaVA-1.5's
            ``image_aspect_ratio: pad``) or ``"crop"`` (resize to cover, then centre-crop: CLIP's preprocessing).
        prompt_template: Prompt with ``{question}`` and exactly one ``image_token``.
        answer_template: Target text with ``{answer}``; the tokenizer's EOS is appended.
        query_tokenizer: For an open_clip query encoder: strings → ``(B, L)`` ids. ``None``: the question is
            tokenised with ``tokenizer`` (for the LLM-embedding query).

    Shapes (of :meth:`__call__`'s result):
        pixel_values: (B, 3, H, W)
        input_ids, attention_mask: (B, L)
        query_input_ids, query_attention_mask: (B, Lq)
    """

    def __init__(self, tokenizer: Any, *, budget: int, image_size: Sequence[int], image_mean: Sequence[float],
                 image_std: Sequence[float], image_token: str = "<image>", image_resize: str = "squash",
                 prompt_template: str = "USER: <image>\n{question} ASSISTANT:", answer_template: str = " {answer}",
                 query_tokenizer: Callable[[list[str]], Tensor] | None = None):
        budget = _token_count(budget, "an integer >= 1")
        # Each entry an integer: int() truncated (8.5, 8) to (8, 8) and took True for 1.
        image_size = _grid_pair(image_size, "image_size", "(H, W)")
        if len(image_mean) != 3 or len(image_std) != 3 or not all(float(v) > 0 for v in image_std):
            raise ValueError(f"image_mean and image_std must hold 3 values each (one per RGB channel) and the std "
                             f"must be > 0, got mean {tuple(image_mean)}, std {tuple(image_std)}")
        if image_resize not in _RESIZE:
            raise ValueError(f"image_resize must be one of {_RESIZE}, got {image_resize!r}")
        self.image_resize = image_resize
        if prompt_template.count(image_token) != 1 or "{question}" not in prompt_template:
            raise ValueError(f"prompt_template must hold exactly one {image_token!r} and a {{question}} field, "
                             f"got {prompt_template!r}")
        if "{answer}" not in answer_template:
            raise ValueError(f"answer_template must hold an {{answer}} field, got {answer_template!r}")
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.budget = budget
        self.image_size = image_size
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.image_token = image_token
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(image_token))
        self.prompt_template = prompt_template
        self.answer_template = answer_template
        self.query_tokenizer = query_tokenizer

    # -- images --------------------------------------------------------------------------------------------------------
    def preprocess_images(self, images: Sequence[Any], *, normalize: bool = True) -> Tensor:
        """PIL images (or HWC uint8 arrays) → ``(B, 3, H, W)``, bicubic-resized to ``image_size``; transparency
        (RGBA, LA, a palette's transparent index, a 4-channel array) is blended over white and 16-bit grey is scaled to
        8 bits (:func:`to_rgb`).

        With ``normalize=True`` (default) the result is float32 normalised with ``image_mean`` / ``image_std``. With
        ``normalize=False`` it is the resized uint8 pixels, for data-loader workers that leave the float conversion to
        the accelerator (:meth:`normalize`): a quarter of the bytes to pin and copy, and about 3x less CPU per image
        (measured by ``scripts/bench_data.py``). Both paths give bit-identical float32 results.
        """
        from PIL import Image

        _check_image_batch(images)
        out = []
        for i, img in enumerate(images):
            if isinstance(img, np.ndarray):
                # PIL would turn floats in [0, 1] into a black image and uint16 into a white one, silently.
                if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
                    raise ValueError(f"image {i}: arrays must be HWC (or HW) uint8 with 1, 3 or 4 channels, got "
                                     f"dtype {img.dtype} shape {img.shape}; scale floats to 0..255 and cast to uint8")
                img = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img)
            if not isinstance(img, Image.Image):
                raise ValueError(f"image {i} must be a PIL image or an HWC uint8 array, got {type(img).__name__}")
            if _wide_mode(img.mode):
                # As for arrays: convert("RGB") clips 32-bit values to 255 (white) and floats in [0, 1] to black.
                raise ValueError(f"image {i}: PIL mode {img.mode!r} (32-bit integer or float pixels) would be "
                                 "clipped to 0..255 by convert('RGB'); scale it to 8 bits (mode 'L' or 'RGB') first")
            img = self._fit(to_rgb(img))
            out.append(np.asarray(img, dtype=np.uint8))
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8, a view
        return self.normalize(x) if normalize else x.contiguous()

    def _fit(self, img):
        """One RGB PIL image at ``image_size`` by :attr:`image_resize`."""
        from PIL import Image

        (th, tw), (w, h) = self.image_size, img.size
        if self.image_resize == "pad" and w * th != h * tw:  # pad to the target aspect, centred
            pw, ph = max(w, -(-h * tw // th)), max(h, -(-w * th // tw))
            fill = tuple(int(round(255 * m)) for m in self.image_mean)
            canvas = Image.new("RGB", (pw, ph), fill)
            canvas.paste(img, ((pw - w) // 2, (ph - h) // 2))
            img, (w, h) = canvas, (pw, ph)
        elif self.image_resize == "crop" and w * th != h * tw:  # resize to cover, then centre-crop
            scale = max(tw / w, th / h)
            rw, rh = max(tw, round(w * scale)), max(th, round(h * scale))
            img = img.resize((rw, rh), Image.BICUBIC)
            left, top = (rw - tw) // 2, (rh - th) // 2
            return img.crop((left, top, left + tw, top + th))
        return img if (w, h) == (tw, th) else img.resize((tw, th), Image.BICUBIC)

    def boxes_exact(self, size: Sequence[int]) -> bool:
        """Whether pixel boxes of an image of ``size = (W, H)``, normalised by that size, land where its pixels do in
        the tower's image: always when squashed, and for pad/crop when the image already has the tower's aspect."""
        (th, tw), (w, h) = self.image_size, size
        return self.image_resize == "squash" or w * th == h * tw

    def normalize(self, pixels: Tensor) -> Tensor:
        """uint8 ``(B, 3, H, W)`` pixels (any device) → float32 normalised with ``image_mean`` / ``image_std``."""
        if not isinstance(pixels, Tensor) or pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
            what = f"{pixels.dtype} {tuple(pixels.shape)}" if isinstance(pixels, Tensor) else type(pixels).__name__
            raise ValueError(f"normalize expects uint8 pixels of shape (B, 3, H, W), got {what}")
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(1, 3, 1, 1).to(pixels.device)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(1, 3, 1, 1).to(pixels.device)
        return ((pixels.to(torch.float32) / 255.0 - mean) / std).contiguous()

    # -- text ----------------------------------------------------------------------------------------------------------
    def prompt(self, question: str) -> str:
        return self.prompt_template.replace("{question}", question)

    def answer(self, answer: str) -> str:
        return self.answer_template.replace("{answer}", answer)

    def expand_image_tokens(self, ids: Sequence[int], budget: int | None = None) -> list[int]:
        """Replace the single image placeholder id by ``budget`` copies (default: the processor's ``budget``).

        Raises:
            ValueError: if ``ids`` hold no placeholder or more than one (one image per sample), or ``budget`` is not
                an integer >= 1.
        """
        n = sum(1 for t in ids if t == self.image_token_id)
        if n != 1:
            raise ValueError(f"a prompt must hold exactly one {self.image_token!r} placeholder, found {n}")
        count = self.budget if budget is None else _token_count(budget, ">= 1 image token (an integer)")
        out: list[int] = []
        for t in ids:
            out.extend([t] * count if t == self.image_token_id else [t])
        return out

    def encode_prompt(self, question: str, budget: int | None = None) -> list[int]:
        """Prompt ids (with BOS if the tokenizer adds one) and the image placeholder expanded to ``budget``."""
        ids = self.tokenizer(self.prompt(question), add_special_tokens=True)["input_ids"]
        return self.expand_image_tokens(ids, budget)

    def encode_answer(self, answer: str) -> list[int]:
        """Target ids: the answer text without special tokens, then EOS."""
        ids = self.tokenizer(self.answer(answer), add_special_tokens=False)["input_ids"]
        return list(ids) + [int(self.tokenizer.eos_token_id)]

    def encode_queries(self, questions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Query-encoder ids and mask for a batch of questions. Shapes (B, Lq), (B, Lq)."""
        if self.query_tokenizer is not None:
            ids = self.query_tokenizer(list(questions)).long()
            return ids, torch.ones_like(ids, dtype=torch.bool)
        enc = [self.tokenizer(q, add_special_tokens=False)["input_ids"] for q in questions]
        return pad_sequences(enc, int(self.tokenizer.pad_token_id), "right")

    def __call__(self, images: Sequence[Any], questions: Sequence[str], *, padding_side: str = "left") -> dict:
        """Inputs for generation: prompts only, left-padded (decoder-only generation continues at the right end)."""
        _check_image_batch(images)  # before len(): a single image has none
        if isinstance(questions, str):
            raise ValueError(f"questions must be a sequence of strings (one per image), got the string {questions!r}")
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions")
        ids, mask = pad_sequences([self.encode_prompt(q) for q in questions], int(self.tokenizer.pad_token_id),
                                  padding_side)
        q_ids, q_mask = self.encode_queries(questions)
        return {"pixel_values": self.preprocess_images(images), "input_ids": ids, "attention_mask": mask,
                "query_input_ids": q_ids, "query_attention_mask": q_mask}

    def batch_decode(self, ids: Tensor | Sequence[Sequence[int]]) -> list[str]:
        return [s.strip() for s in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # -- persistence ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "image_size": list(self.image_size), "image_mean": list(self.image_mean),
                "image_std": list(self.image_std), "image_token": self.image_token, "image_resize": self.image_resize,
                "prompt_template": self.prompt_template, "answer_template": self.answer_template}

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the tokenizer and ``arr_coc_processor.json`` (the query tokenizer is rebuilt from the model config)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(d))
        (d / "arr_coc_processor.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], *, query_tokenizer=None) -> "ArrCocProcessor":
        from transformers import AutoTokenizer

        d = Path(directory)
        params = json.loads((d / "arr_coc_processor.json").read_text())
        return cls(AutoTokenizer.from_pretrained(str(d)), query_tokenizer=query_tokenizer, **params)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right",
                  value_dtype: torch.dtype = torch.int64) -> tuple[Tensor, Tensor]:
    """Pad id lists into a ``(B, L)`` tensor and a bool mask, on the ``right`` or the ``left``."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    length = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), length), pad_id, dtype=value_dtype)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        sl = slice(length - len(s), length) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.as_tensor(list(s), dtype=value_dtype)
        mask[i, sl] = True
    return ids, mask


