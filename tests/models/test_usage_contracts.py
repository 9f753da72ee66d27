"""ArrCocLlava as a user drops it into HF-style training and evaluation: generate without a mask, padding masks of
the wrong shape, autocast, and the processor's refusals of inputs it would otherwise mangle silently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _images import random_images
from PIL import Image

from models.builders import build_model
from models.processing import ArrCocProcessor, build_byte_tokenizer, pad_sequences, to_rgb

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


@pytest.mark.parametrize("array", [np.arange(64, dtype=np.int32).reshape(8, 8) * 1000,
                                   np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)])
def test_wide_pil_images_without_a_fixed_scale_are_refused(array):
    """A 32-bit (I) or float (F) PIL image became all-white or all-black in convert('RGB'), as the arrays already
    refused would have. to_rgb refuses them too: the lmms-eval task and adapter call it without the processor."""
    img = Image.fromarray(array)
    with pytest.raises(ValueError, match=f"image 0: PIL mode '{img.mode}'"):
        _processor().preprocess_images([img])
    with pytest.raises(ValueError, match=f"PIL mode '{img.mode}'"):
        to_rgb(img)
    ok = Image.fromarray((array.astype(np.float64) / array.max() * 255).astype(np.uint8))  # the 8-bit version
    assert _processor().preprocess_images([ok], normalize=False).shape == (1, 3, 8, 8)
    assert _processor().preprocess_images([Image.new("RGBA", (5, 9), (1, 2, 3, 0))]).shape == (1, 3, 8, 8)


def test_sixteen_bit_grey_files_are_scaled_to_eight_bits_not_clipped(tmp_path):
    """16-bit grey PNG and TIFF files open as I;16, which convert('RGB') clipped to 255 above 255: all white but the
    black pixels. Full scale is 65535, so each value v becomes round(v * 255 / 65535) = round(v / 257)."""
    v = np.array([[0, 128, 129, 257], [385, 386, 32896, 65535]], np.uint16)
    want = np.array([[0, 0, 1, 1], [1, 2, 128, 255]], np.uint8)  # 128/257 = 0.498, 129/257 = 0.502, 385/257 = 1.498
    for ext in ("png", "tif"):
        Image.fromarray(v).save(tmp_path / f"g.{ext}")
        with Image.open(tmp_path / f"g.{ext}") as img:
            assert img.mode == "I;16", (ext, img.mode)
            out = np.asarray(to_rgb(img))
        assert out.shape == (2, 4, 3) and np.array_equal(out, np.repeat(want[..., None], 3, -1)), ext
    big = Image.frombytes("I;16B", (4, 2), v.astype(">u2").tobytes())  # big-endian storage, same values
    assert np.array_equal(np.asarray(to_rgb(big))[..., 0], want)
    # Through the processor (its default squash resize keeps a 2x4 image at 2x4 exactly).
    got = _processor(image_size=(2, 4)).preprocess_images([Image.fromarray(v)], normalize=False)[0]
    assert np.array_equal(got.permute(1, 2, 0).numpy(), np.repeat(want[..., None], 3, -1))


def test_transparency_is_composited_over_white_not_dropped():
    """convert('RGB') dropped alpha: a transparent pixel showed the colour stored under it (black for most
    transparent-background charts). Alpha now blends over white, for every mode that carries transparency."""
    px = np.zeros((4, 4, 4), np.uint8)
    px[..., :3] = (10, 20, 30)
    px[:, :2, 3] = 0  # left half transparent, right half half-transparent
    px[:, 2:, 3] = 128
    out = np.asarray(to_rgb(Image.fromarray(px, "RGBA")), np.int32)
    assert (out[:, :2] == 255).all()
    a = 128 / 255
    want = np.round(np.array([10, 20, 30]) * a + 255 * (1 - a))
    assert np.abs(out[:, 2:] - want).max() <= 1
    # A 4-channel array reaches the processor as RGBA, and a grey image with alpha (LA) blends the same way.
    proc = _processor(image_size=(4, 4))
    got = proc.preprocess_images([px], normalize=False)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, out)
    la = np.asarray(to_rgb(Image.fromarray(px[..., [0, 3]], "LA")))
    assert (la[:, :2] == 255).all() and (np.abs(la[:, 2:].astype(int) - round(10 * a + 255 * (1 - a))) <= 1).all()
    # Premultiplied modes (PIL converts La only to LA; convert('RGB') raised on it): alpha 0 is white too.
    for mode in ("RGBa", "La", "PA"):
        white = to_rgb(Image.new(mode, (2, 2)))
        assert white.mode == "RGB" and (np.asarray(white) == 255).all(), mode
    # A palette image whose transparent index is 0: those pixels turn white, the others keep their colour.
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal)).tolist() == [[[255] * 3, [200, 100, 50]], [[200, 100, 50], [255] * 3]]
    # Opaque images are unchanged: RGB as is, grey and palette without transparency as PIL converts them.
    rgb = Image.fromarray(px[..., :3])
    assert to_rgb(rgb) is rgb
    grey = Image.fromarray(px[..., 0])
    assert np.array_equal(np.asarray(to_rgb(grey)), np.asarray(grey.convert("RGB")))


def test_processor_misuse_is_a_value_error_naming_the_value():
    with pytest.raises(ValueError, match="budget must be an integer >= 1, got 2.5"):
        _processor(budget=2.5)
    with pytest.raises(ValueError, match=r"std must be > 0.*std \(0.0, 0.0, 0.0\)"):
        _processor(image_std=(0.0,) * 3)
    with pytest.raises(ValueError, match=r"3 values each.*mean \(0.5, 0.5\)"):
        _processor(image_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"image_size \(0, 8\) entry must be >= 1, got 0"):
        _processor(image_size=(0, 8))
    # Non-integer entries were truncated ((8.5, 8) -> (8, 8)) and True taken as 1.
    for bad, name in [(8.5, "float: 8.5"), (True, "bool: True")]:
        with pytest.raises(ValueError, match=rf"image_size \({bad}, 8\) entry must be an integer, got {name}"):
            _processor(image_size=(bad, 8))
    with pytest.raises(ValueError, match=r"image_size must be two positive ints \(H, W\), got \(8, 8, 3\)"):
        _processor(image_size=(8, 8, 3))
    p, img = _processor(), random_images(1)[0]
    with pytest.raises(ValueError, match="got one Image; wrap it in a list"):
        p(img, ["q"])
    with pytest.raises(ValueError, match="got the string 'q'"):
        p([img], "q")
    with pytest.raises(ValueError, match="non-empty sequence of images"):
        p([], [])


def test_processor_refuses_zero_budgets_and_templates_with_two_images():
    with pytest.raises(ValueError, match="budget must be an integer >= 1, got 0"):
        _processor(budget=0)
    with pytest.raises(ValueError, match="exactly one '<image>'"):
        _processor(prompt_template="<image><image>{question}")
    p = _processor()
    ids = p.tokenizer("<image> a", add_special_tokens=False)["input_ids"]
    assert p.expand_image_tokens(ids, budget=2).count(p.image_token_id) == 2
    with pytest.raises(ValueError, match=r"budget must be >= 1 image token.*, got 0"):
        p.expand_image_tokens(ids, budget=0)
    with pytest.raises(ValueError, match="got 2 images but 1 questions"):
        p(random_images(2), ["q"])


def test_prompt_has_bos_and_answer_ends_with_eos():
    p = _processor()
    tok = p.tokenizer
    prompt = p.encode_prompt("hi")
    assert prompt[0] == tok.bos_token_id and prompt.count(p.image_token_id) == 4
    ans = p.encode_answer("7")
    assert ans[-1] == tok.eos_token_id and tok.decode(ans[:-1]) == " 7"
    assert p.batch_decode([[tok.bos_token_id] + ans + [tok.pad_token_id]]) == ["7"]  # special tokens dropped


def test_left_padding_masks_the_left():
    ids, mask = pad_sequences([[5, 6, 7], [8]], 0, "left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[True] * 3, [False, False, True]]
    ids, mask = pad_sequences([[5, 6, 7], [8]], 0, "right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]


def test_normalize_uses_mean_and_std_per_channel():
    p = _processor(image_mean=(0.5, 0.25, 0.0), image_std=(0.5, 0.25, 2.0))
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    torch.testing.assert_close(p.normalize(x)[0, :, 0], torch.tensor([[-1.0, 1.0], [-1.0, 3.0], [0.0, 0.5]]))


def test_single_channel_arrays_are_grey_images():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    p = _processor()
    assert torch.equal(p.preprocess_images([grey[..., None]]), p.preprocess_images([grey]))


def test_tokenizer_without_pad_or_image_token_is_completed():
    tok = build_byte_tokenizer("<img>")
    tok.pad_token = None
    p = ArrCocProcessor(tok, budget=4, image_size=(8, 8), image_mean=(0.0,) * 3, image_std=(1.0,) * 3)
    assert tok.pad_token == tok.eos_token
    assert tok.convert_ids_to_tokens(p.image_token_id) == "<image>" and p.image_token_id >= 260
    batch = p(random_images(2), ["a?", "longer?"])
    assert (batch["input_ids"] == p.image_token_id).sum(1).tolist() == [4, 4]
    assert batch["input_ids"][0, 0] == tok.eos_token_id and not batch["attention_mask"][0, 0]


def test_resize_modes_keep_the_aspect_for_a_non_square_tower():
    # image_size is (H, W) = (32, 48): a tall image cropped loses its top and bottom; pad reaches the target aspect
    # even when it is not a whole number of pixels (it rounds the canvas up, never stretching the image).
    a = np.zeros((64, 32, 3), np.uint8)
    a[..., 0] = 255
    a[:4] = (0, 255, 0)  # a green band along the top of a tall image
    crop = _processor(image_size=(32, 48), image_resize="crop").preprocess_images([a], normalize=False)[0]
    assert crop.shape == (3, 32, 48)
    assert not ((crop[1] > 200) & (crop[0] < 60)).any()  # the centre crop dropped the top band
    red = np.zeros((33, 50, 3), np.uint8)
    red[..., 0] = 255  # 50 x 33 needs a canvas 50 x 34 (33.3 rounded up) to reach 3:2
    pad = _processor(image_size=(32, 48), image_resize="pad", image_mean=(0.0, 0.0, 1.0)).preprocess_images(
        [red], normalize=False)[0]
    assert int(pad[2, -1].min()) > 100  # the bottom row is the (blue) fill
    p = _processor(image_size=(32, 48), image_resize="pad")
    assert p.boxes_exact((96, 64)) and not p.boxes_exact((64, 96))  # boxes_exact takes (W, H)


@pytest.mark.parametrize("bad", [2.5, True, "3"])
def test_expand_image_tokens_refuses_non_integer_budgets(bad):
    # 2.5 gave 2 placeholders, True 1 and "3" 3, silently, where the processor's own budget refuses them.
    p = _processor()
    with pytest.raises(ValueError, match=rf"budget must be >= 1 image token \(an integer\), got {bad!r}"):
        p.encode_prompt("q", bad)
