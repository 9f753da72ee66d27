"""ArrCocLlava as a user drops it into HF-style training and evaluation: generate without a mask, padding masks of
the wrong shape, autocast, and the processor's refusals of inputs it would otherwise mangle silently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _images import random_images
from PIL import Image

from models.builders import build_model
from models.processing import ArrCocProcessor, build_byte_tokenizer

QUESTIONS = ["a?", "what colour is the shape holding a 7?"]  # different lengths: row 0 is left-padded


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, processor = build_model("tiny")
    return model.eval(), processor


def _processor(**kw):
    args = {"budget": 4, "image_size": (8, 8), "image_mean": (0.0,) * 3, "image_std": (1.0,) * 3, **kw}
    return ArrCocProcessor(build_byte_tokenizer(), **args)


def test_generate_without_attention_mask_masks_the_left_padding(tiny):
    """HF's generate infers the padding mask from input_ids; ours hands the LLM embeddings only, so it must infer it
    itself (before: the padded row attended to its 36 pad tokens, first-step logits off by 0.04)."""
    model, processor = tiny
    batch = processor(random_images(2, seed=3), QUESTIONS)
    assert not bool(batch["attention_mask"][0].all())
    kw = {"max_new_tokens": 2, "output_scores": True, "return_dict_in_generate": True}
    masked = model.generate(**batch, **kw)
    inferred = model.generate(**{**batch, "attention_mask": None}, **kw)
    torch.testing.assert_close(inferred.scores[0], masked.scores[0])
    assert inferred.sequences.tolist() == masked.sequences.tolist()


def test_attention_mask_of_the_wrong_shape_is_refused(tiny):
    model, processor = tiny
    batch = processor(random_images(2, seed=3), QUESTIONS)
    short = batch["attention_mask"][:, :5]
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 5\) must match input_ids' \(2, \d+\)"):
        model(**{**batch, "attention_mask": short})
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 5\)"):
        model.generate(**{**batch, "attention_mask": short}, max_new_tokens=1)


def test_arr_coc_keeps_float32_under_autocast(tiny):
    """ArrCoc computes in float32 whatever the towers use (as under FSDP2's mixed precision): under a user's or the
    single-process trainer's autocast its utilities were bf16 and the integer budgets moved."""
    model, processor = tiny
    batch = processor(random_images(2, seed=5), QUESTIONS)
    seen = {}
    hook = model.vision.register_forward_hook(lambda mod, args, out: seen.update(feats=out))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model(**batch).arr_coc
    finally:
        hook.remove()
    with torch.no_grad():  # the same (bf16 tower) features through ArrCoc without autocast
        query = model.encode_query(batch["query_input_ids"], batch["query_attention_mask"])
        ref = model.arr_coc(seen["feats"].float(), query=query.float())
    assert amp.utility.dtype == torch.float32 and amp.tokens.dtype == torch.float32
    torch.testing.assert_close(amp.utility, ref.utility)
    assert torch.equal(amp.budgets, ref.budgets)


@pytest.mark.parametrize("array", [np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000,
                                   np.arange(64, dtype=np.int32).reshape(8, 8) * 1000,
                                   np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)])
def test_high_bit_depth_pil_images_are_refused(array):
    """A 16-bit PNG (mode I;16), 32-bit (I) or float (F) PIL image became all-white or all-black in convert('RGB'),
    as the arrays already refused would have."""
    img = Image.fromarray(array)
    with pytest.raises(ValueError, match=f"image 0: PIL mode '{img.mode}'"):
        _processor().preprocess_images([img])
    ok = Image.fromarray((array.astype(np.float64) / array.max() * 255).astype(np.uint8))  # the 8-bit version
    assert _processor().preprocess_images([ok], normalize=False).shape == (1, 3, 8, 8)
    assert _processor().preprocess_images([Image.new("RGBA", (5, 9), (1, 2, 3, 0))]).shape == (1, 3, 8, 8)


def test_processor_misuse_is_a_value_error_naming_the_value():
    with pytest.raises(ValueError, match="budget must be an integer >= 1, got 2.5"):
        _processor(budget=2.5)
    with pytest.raises(ValueError, match=r"std must be > 0.*std \(0.0, 0.0, 0.0\)"):
        _processor(image_std=(0.0,) * 3)
    with pytest.raises(ValueError, match=r"3 values each.*mean \(0.5, 0.5\)"):
        _processor(image_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"image_size must be two positive ints \(H, W\), got \(0, 8\)"):
        _processor(image_size=(0, 8))
    p, img = _processor(), random_images(1)[0]
    with pytest.raises(ValueError, match="got one Image; wrap it in a list"):
        p(img, ["q"])
    with pytest.raises(ValueError, match="got the string 'q'"):
        p([img], "q")
    with pytest.raises(ValueError, match="non-empty sequence of images"):
        p([], [])
