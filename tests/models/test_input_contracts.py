"""Model-side contracts from a review of ``models/``: half-precision towers, LLaVA/SigLIP towers, tied embeddings,
loading with overrides, and inputs that used to give silent garbage or an unhelpful crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _images import random_images
from models.builders import build_model, dataclass_to_dict, load_model_cfg
from models.pretrained import load_pretrained, save_pretrained

QUESTIONS = ["what colour is the circle?", "how many shapes?"]
HF = ('vision.hf_config={"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2, '
      '"num_attention_heads": 2, "image_size": 64, "patch_size": 8}')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_open_clip_tower_in_bf16_takes_the_processors_float32_pixels():
    # build_model casts the tower to llm.dtype; the open_clip tower ran float32 pixels into bf16 weights and crashed.
    model, processor = build_model("tiny", ["llm.dtype=bfloat16"])
    assert model.vision.visual.conv1.weight.dtype == torch.bfloat16
    batch = processor(random_images(2), QUESTIONS)
    assert batch["pixel_values"].dtype == torch.float32
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.logits.float()).all() and out.arr_coc.budgets.sum(1).tolist() == [32, 32]


def test_uint8_pixels_are_refused_not_run_on_a_0_255_scale():
    model, processor = build_model("tiny", ["vision.backend=hf_clip", HF])
    batch = processor(random_images(2), QUESTIONS)
    batch["pixel_values"] = processor.preprocess_images(random_images(2), normalize=False)
    with pytest.raises(ValueError, match="pixels must be normalised floats, got dtype torch.uint8"):
        model(**batch)


def test_resampled_layout_in_bf16_on_cpu():
    # Antialiased resampling has no bf16 CPU kernel: the grid is resampled in float32 and cast back.
    from models.vision import hf_vision_from_config

    tower = hf_vision_from_config("clip", {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                           "num_attention_heads": 2, "image_size": 32, "patch_size": 4},
                                  patch_grid=(4, 4), fine_grid=(1, 1))
    grid = torch.randn(2, 16, 8, 8, dtype=torch.bfloat16)
    out = tower.to_patches(grid)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 16, 1, 1, 16)
    ref = tower.to_patches(grid.float())
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_hf_tower_feature_layer_zero_with_pruning():
    # feature_layer=0 is the embeddings: pruning every block left HF returning no hidden_states (IndexError).
    import transformers

    from models.vision import HFVision

    cfg = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                        num_attention_heads=2, image_size=32, patch_size=8)
    full = transformers.CLIPVisionModel(cfg).eval()
    pruned = transformers.CLIPVisionModel(cfg).eval()
    pruned.load_state_dict(full.state_dict())
    tower = HFVision(pruned, patch_grid=(2, 2), feature_layer=0, prune=True)
    assert len(tower._layers(tower.model)) == 1
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = tower(x)
        emb = full(pixel_values=x, output_hidden_states=True).hidden_states[0][:, 1:]  # (1, 16, D)
    assert feats.shape == (1, 4, 2, 2, 16)
    torch.testing.assert_close(feats[0, 0, 0, 0], emb[0, 0])


def _tiny_llava(directory, kind: str) -> None:
    import transformers

    from models.processing import build_byte_tokenizer

    tok = build_byte_tokenizer()
    vcls = transformers.CLIPVisionConfig if kind == "clip" else transformers.SiglipVisionConfig
    vc = vcls(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
              patch_size=8)
    tc = transformers.LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                  pad_token_id=0)
    cfg = transformers.LlavaConfig(vision_config=vc.to_dict(), text_config=tc.to_dict(),
                                   image_token_id=tok.convert_tokens_to_ids("<image>"),
                                   vision_feature_select_strategy="full" if kind == "siglip" else "default")
    transformers.LlavaForConditionalGeneration(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)


@pytest.mark.parametrize("kind, prefix", [("clip", 1), ("siglip", 0)])
def test_llava_backend_drops_a_class_token_only_where_there_is_one(tmp_path, kind, prefix):
    # The llava backend hard-coded one prefix token: a SigLIP tower (no class token) lost a patch and its grid broke.
    _tiny_llava(tmp_path, kind)
    cfg = dataclass_to_dict(load_model_cfg("tiny"))
    cfg["vision"]["backend"] = "llava"
    cfg["llm"].update(name_or_path=str(tmp_path), tokenizer=None, dtype="float32")
    cfg["arr_coc"].update(num_patches=4, patch_grid=[2, 2], budget=8, max_tokens=4)
    model, processor = build_model(cfg)
    assert model.vision.num_prefix_tokens == prefix
    with torch.no_grad():
        assert model.vision(torch.randn(1, 3, 32, 32)).shape == (1, 4, 2, 2, 32)
        out = model(**processor(random_images(1, size=(32, 32)), QUESTIONS[:1]))
    assert out.arr_coc.budgets.sum().item() == 8


def test_tied_embeddings_save_and_load(tmp_path):
    cfg = dataclass_to_dict(load_model_cfg("tiny", ["llm.text_config.tie_word_embeddings=true"]))
    model, processor = build_model(cfg)
    lm, emb = model.llava.lm_head.weight, model.llava.get_input_embeddings().weight
    assert lm.data_ptr() == emb.data_ptr()  # tied: safetensors refused the shared storage
    save_pretrained(model, processor, cfg, tmp_path / "tied")
    loaded, _ = load_pretrained(tmp_path / "tied")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.llava.lm_head.weight.data_ptr() == loaded.llava.get_input_embeddings().weight.data_ptr()


def test_load_with_overrides_gives_a_matching_processor(tmp_path):
    cfg = dataclass_to_dict(load_model_cfg("tiny"))
    model, processor = build_model(cfg)
    save_pretrained(model, processor, cfg, tmp_path / "m")
    m, p = load_pretrained(tmp_path / "m", model_overrides={"arr_coc": {"budget": 24}})
    assert m.budget == p.budget == 24
    with torch.no_grad():
        out = m(**p(random_images(2), QUESTIONS))
    assert out.arr_coc.budgets.sum(1).tolist() == [24, 24]


def test_hub_model_save_points_to_a_full_save():
    cfg = dataclass_to_dict(load_model_cfg("tiny"))
    model, processor = build_model(cfg)
    cfg["llm"]["name_or_path"] = "llava-hf/llava-1.5-7b-hf"
    with pytest.raises(ValueError, match="training checkpoint") as e:
        save_pretrained(model, processor, cfg, "/tmp/never_written")
    assert "model.llava.save_pretrained would leave out ArrCoc" in str(e.value)


def test_scatter_visual_refuses_more_images_than_prompts(tmp_path):
    model, processor = build_model("tiny")
    batch = processor(random_images(2), QUESTIONS)
    n = model.budget
    with pytest.raises(ValueError, match=r"must be \(B, T, E\) with B = 2"):
        model.scatter_visual(batch["input_ids"], torch.randn(3, n, model.config.text_config.hidden_size))


def test_arrays_must_be_uint8_images():
    _, processor = build_model("tiny")
    ok = processor.preprocess_images([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    assert ok.shape[:2] == (2, 3)
    for bad in (np.full((8, 8, 3), 0.5, np.float32), np.zeros((8, 8), np.uint16), np.zeros((8, 8, 2), np.uint8)):
        with pytest.raises(ValueError, match=f"dtype {bad.dtype} shape"):
            processor.preprocess_images([bad])


def test_llava_model_needs_an_exact_allocator():
    with pytest.raises(ValueError, match="needs an allocator that spends its budget exactly.*mode='at_most'"):
        build_model("tiny", ["arr_coc.allocator=bandit",
                             'arr_coc.allocator_kwargs={"levels": [1, 2, 4], "mode": "at_most"}'])


def _striped(w: int, h: int):
    """A ``w x h`` red image with a green stripe 4 px wide at the left edge."""
    from PIL import Image

    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 255
    a[:, :4] = (0, 255, 0)
    return Image.fromarray(a)


def test_image_resize_modes():
    # squash stretches (the stripe stays), crop centre-crops the wide image (the stripe goes), pad keeps the whole
    # image and fills the rest with the mean colour (LLaVA-1.5's image_aspect_ratio: pad).
    from models.processing import ArrCocProcessor

    _, base = build_model("tiny")
    kw = dict(budget=base.budget, image_size=(32, 32), image_mean=(0.5, 0.25, 0.75), image_std=(0.5, 0.5, 0.5))
    img = _striped(64, 32)  # twice as wide as tall
    out = {}
    for mode in ("squash", "crop", "pad"):
        p = ArrCocProcessor(base.tokenizer, image_resize=mode, **kw)
        out[mode] = p.preprocess_images([img], normalize=False)[0]  # (3, 32, 32) uint8
        assert out[mode].shape == (3, 32, 32)
    green = lambda x: (x[1] > 200) & (x[0] < 60)  # noqa: E731
    assert green(out["squash"])[:, :2].all() and not green(out["crop"]).any()
    pad = out["pad"]
    assert green(pad)[8:24, :2].all()  # the image, shrunk to 32x16, sits in the middle rows
    assert torch.equal(pad[:, 0, 16], torch.tensor([128, 64, 191], dtype=torch.uint8))  # mean-colour band on top
    assert torch.equal(pad[:, 31, 16], torch.tensor([128, 64, 191], dtype=torch.uint8))
    # A square image is the same in every mode; the setting survives save/load; unknown modes are refused.
    sq = _striped(32, 32)
    assert all(torch.equal(ArrCocProcessor(base.tokenizer, image_resize=m, **kw).preprocess_images([sq]),
                           ArrCocProcessor(base.tokenizer, **kw).preprocess_images([sq])) for m in ("crop", "pad"))
    with pytest.raises(ValueError, match="image_resize must be one of"):
        ArrCocProcessor(base.tokenizer, image_resize="letterbox", **kw)


def test_image_resize_round_trips_and_region_labels_need_squash(tmp_path):
    from models.processing import ArrCocProcessor
    from training.collate import VqaCollator

    model, processor = build_model("tiny", ["image_resize=pad"])
    assert processor.image_resize == "pad"
    processor.save_pretrained(tmp_path / "p")
    assert ArrCocProcessor.from_pretrained(tmp_path / "p").image_resize == "pad"
    row = {"image": random_images(1)[0], "question": "q?", "answers": ["1"], "target_box": [0, 0, 10, 10]}  # 90x70
    with pytest.raises(ValueError, match=r"pads or crops them \(image_resize='pad'\)"):
        VqaCollator(processor)([row])
    assert "target_box" in VqaCollator(build_model("tiny")[1])([row])  # squash: the boxes are exact
    assert "input_ids" in VqaCollator(processor, train=False)([row])  # evaluation does not use the batch's boxes
    square = {**row, "image": random_images(1, size=(48, 48))[0]}  # the tower's aspect: padding has nothing to do
    assert "target_box" in VqaCollator(processor)([square])
    assert processor.boxes_exact((48, 48)) and not processor.boxes_exact((90, 70))


def test_sequences_longer_than_the_llms_positions_are_refused():
    # A RoPE LLM runs past max_position_embeddings without a word: the visual budget plus the prompt must fit, and in
    # generate the new tokens too.
    model, processor = build_model("tiny", ["llm.text_config.max_position_embeddings=64"])
    batch = processor(random_images(1), ["q?"])
    length = batch["input_ids"].shape[1]
    assert length <= 64 < length + 40
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
        with pytest.raises(ValueError, match=rf"{length} prompt tokens \+ 40 new tokens .* max_position_embeddings=64"):
            model.generate(**batch, max_new_tokens=40)
        assert model.generate(**batch, max_new_tokens=64 - length, do_sample=False).shape == (1, 64 - length)
        from transformers import GenerationConfig  # the count may also come in a generation_config

        with pytest.raises(ValueError, match=rf"{length} prompt tokens \+ 40 new tokens"):
            model.generate(**batch, generation_config=GenerationConfig(max_new_tokens=40))
        long = processor(random_images(1), ["q" * 60 + "?"])
        with pytest.raises(ValueError, match=rf"{long['input_ids'].shape[1]} tokens .* max_position_embeddings=64"):
            model(**long)
        cache = model(**batch, use_cache=True).past_key_values  # a forward that continues a cache counts it too
        assert cache.get_seq_length() == length
        with pytest.raises(ValueError, match=rf"{2 * length} tokens .* max_position_embeddings=64"):
            model(**batch, past_key_values=cache)


def _assert_positions_for_full_detail(model, processor, what: str) -> None:
    # The accuracy benchmark evaluates fraction 1 (every patch at full detail) with 8 new tokens.
    from models.vlm import full_token_count

    text = processor(random_images(1), ["how many red shapes are in the top left?"])["input_ids"].shape[1]
    need = full_token_count(model) + text - model.budget + 8
    assert need <= model.config.text_config.max_position_embeddings, (what, need)


@pytest.mark.parametrize("preset", ["tiny", "small", "bench"])
def test_shipped_presets_have_positions_for_every_token_at_full_detail(preset):
    # bench's 512 positions held 196 visual tokens but not 784.
    _assert_positions_for_full_detail(*build_model(preset), preset)


@pytest.mark.parametrize("name", ["arr_coc_small", "arr_coc_small_25pct", "arr_coc_bench"])
def test_shipped_weights_have_positions_for_every_token_at_full_detail(name):
    # As for the presets: the shipped models can be evaluated at fraction 1 (the bench model's config said 512).
    from pathlib import Path

    _assert_positions_for_full_detail(*load_pretrained(Path(__file__).resolve().parents[2] / "weights" / name), name)
