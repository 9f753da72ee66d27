"""Token-reduction baselines: exact counts, valid positions, mass conservation, end-to-end generate, FastV's read."""

from __future__ import annotations

import copy

import pytest
import torch
from _images import random_images

from eval.baselines import (FastVBaseline, ToMeBaseline, VisionZipBaseline, _mask_keys, create_baseline, create_method,
                            full_token_count, full_tokens, list_baselines, list_methods, vision_features_and_attention)
from models.builders import build_model

# 2x2 patches of 4x4 fine tokens: N = 64 full tokens, and ARR-COC can spend 4..64 of them.
OVERRIDES = {"arr_coc": {"num_patches": 4, "patch_grid": [2, 2], "budget": 16, "min_tokens": 1, "max_tokens": 16}}
PRE_LLM = [n for n in list_baselines() if n != "fastv"]
QUESTIONS = ["what digit is in the red circle?", "how many triangles are there?"]


def _build(**extra):
    from models.builders import deep_merge, model_dict

    torch.manual_seed(0)
    model, processor = build_model(model_dict("tiny", deep_merge(OVERRIDES, extra)))
    return model.eval(), processor


@pytest.fixture(scope="module")
def tiny():
    return _build()


def _features(model, n: int = 2):
    pixels = torch.randn(n, 3, *model.vision.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return vision_features_and_attention(model.vision, pixels)


def test_registry_and_errors(tiny):
    model, _ = tiny
    assert list_baselines() == sorted(["fastv", "proportional", "threshold", "tome", "uniform", "visionzip"])
    assert list_methods()[0] == "arr_coc"
    with pytest.raises(ValueError, match="'nope'"):
        create_baseline("nope")
    with pytest.raises(ValueError, match="nope"):
        create_method("nope", model, 0.5)
    with pytest.raises(ValueError, match="1.5"):
        create_method("uniform", model, 1.5)
    with pytest.raises(ValueError, match="token_fraction"):
        create_method("tome", model, None)
    with pytest.raises(ValueError, match="K·min"):  # 2 tokens cannot cover 4 patches
        create_method("arr_coc", model, 2 / 64)
    with pytest.raises(ValueError, match="bogus"):
        create_baseline("visionzip", bogus=1)


@pytest.mark.parametrize("name", PRE_LLM)
@pytest.mark.parametrize("num_tokens", [4, 11, 16, 37, 64])
def test_exact_count_positions_and_mass(tiny, name, num_tokens):
    model, _ = tiny
    feats, attn = _features(model)
    grid = tuple(model.vision.patch_grid)
    full = full_tokens(feats.float(), grid)
    red = create_baseline(name).reduce(feats.float(), num_tokens, patch_grid=grid, attention=attn)
    b, n, d = full.tokens.shape
    assert n == full_token_count(model) == 64
    assert red.tokens.shape == (b, num_tokens, d)
    assert red.positions.shape == (b, num_tokens, 2)
    assert torch.isfinite(red.tokens).all() and torch.isfinite(red.positions).all()
    assert float(red.positions.min()) >= 0 and float(red.positions.max()) <= 1
    # Every full token is accounted for exactly once: sizes add up to N, and the size-weighted sums of features and
    # positions equal the full grid's (pooling and merging are averages of disjoint groups).
    torch.testing.assert_close(red.sizes.sum(1), torch.full((b,), float(n)))
    torch.testing.assert_close((red.tokens * red.sizes.unsqueeze(-1)).sum(1), full.tokens.sum(1), rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close((red.positions * red.sizes.unsqueeze(-1).to(red.positions.dtype)).sum(1),
                               full.positions.sum(1), rtol=1e-5, atol=1e-5)
    if num_tokens == n:  # nothing to reduce: the full token set (up to order)
        key = lambda p: (p[..., 0] * 1000 + p[..., 1]).sort(-1).values  # noqa: E731
        torch.testing.assert_close(key(red.positions.double()), key(full.positions.double()))


def test_allocator_baselines_need_a_token_per_patch(tiny):
    model, _ = tiny
    feats, attn = _features(model)
    with pytest.raises(ValueError, match="K·min_tokens"):
        create_baseline("uniform").reduce(feats, 3, patch_grid=(2, 2))
    with pytest.raises(ValueError, match="N=64"):
        create_baseline("tome").reduce(feats, 65, patch_grid=(2, 2))


def test_visionzip_keeps_the_most_attended_tokens(tiny):
    model, _ = tiny
    feats, _ = _features(model, 1)
    grid = tuple(model.vision.patch_grid)
    full = full_tokens(feats.float(), grid)
    # A class-token attention map with known maxima: cells (patch 3, row 1, col 2) and (patch 0, row 0, col 0).
    attn = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.01
    attn[0, 3, 1, 2], attn[0, 0, 0, 0] = 5.0, 4.0
    red = create_baseline("visionzip", dominant_fraction=0.25).reduce(feats.float(), 8, patch_grid=grid,
                                                                        attention=attn)
    dom_pos = red.positions[0, :2]  # 2 dominant tokens, in original (patch, Hilbert) order
    want = [(0.5 / 8, 0.5 / 8), ((4 + 1 + 0.5) / 8, (4 + 2 + 0.5) / 8)]  # an 8x8 cell image, patch 3 at (4, 4)
    torch.testing.assert_close(dom_pos.double(), torch.tensor(want, dtype=torch.float64))
    assert red.sizes[0, :2].tolist() == [1.0, 1.0]
    # Their features are the full tokens at those positions.
    for p, tok in zip(dom_pos, red.tokens[0, :2]):
        i = int(((full.positions[0] - p).abs().sum(-1)).argmin())
        torch.testing.assert_close(tok, full.tokens[0, i])


def test_tome_merges_the_most_similar_pair_first():
    # Token 1 (set B) is a near copy of token 0 (set A); everything else is orthogonal-ish.
    x = torch.eye(6).unsqueeze(0)
    x[0, 1] = x[0, 0] + 0.01 * x[0, 1]
    pos = torch.rand(1, 6, 2)
    out, out_pos, size = ToMeBaseline.merge_round(x, pos, torch.ones(1, 6), 1)
    assert out.shape == (1, 5, 6)
    merged = int(size[0].argmax())
    assert size[0, merged] == 2
    torch.testing.assert_close(out[0, merged], (x[0, 0] + x[0, 1]) / 2)
    torch.testing.assert_close(out_pos[0, merged], (pos[0, 0] + pos[0, 1]) / 2)


def _eager_attentions(model, method, batch):
    """Every LLM layer's eager attention probabilities (B, H, L, L) on the method's full-token prompt embeddings."""
    embeds, _, _ = method.embed(batch["pixel_values"], batch["input_ids"])
    model.llava.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                        output_attentions=True).attentions
    finally:
        model.llava.set_attn_implementation("sdpa")


@pytest.mark.parametrize("name", list_methods())
def test_generate_end_to_end(tiny, name):
    model, processor = tiny
    method = create_method(name, model, 0.25)
    proc = copy.copy(processor)
    proc.budget = method.placeholders
    batch = proc(random_images(2, size=(64, 64)), QUESTIONS)
    out = method.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.sequences.shape[0] == 2 and 1 <= out.sequences.shape[1] <= 3
    assert out.tokens.tolist() == [16, 16]
    assert out.positions.shape == (2, 16, 2)
    assert float(out.positions.min()) >= 0 and float(out.positions.max()) <= 1
    layers = method.visual_per_layer()
    assert layers == ([64, 16] if name == "fastv" else [16, 16])
    # A prompt with the wrong number of placeholders is refused, naming both counts.
    proc.budget = method.placeholders + 1
    bad = proc(random_images(2, size=(64, 64)), QUESTIONS)
    with pytest.raises(ValueError, match="mismatch"):
        method.generate(**bad, max_new_tokens=1, do_sample=False)
    # Right-padded prompts would continue after their padding (the LLM sees embeddings, so HF cannot warn).
    proc.budget = method.placeholders
    right = proc(random_images(2, size=(64, 64)), QUESTIONS, padding_side="right")
    assert not bool(right["attention_mask"][:, -1].all())  # the questions differ in length
    with pytest.raises(ValueError, match="left-padded prompts"):
        method.generate(**right, max_new_tokens=1, do_sample=False)


def test_fastv_drops_the_tokens_with_the_lowest_measured_attention():
    """The SDPA-compatible read must equal the attention HF's eager kernel reports, and drop its lowest entries."""
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3}})
    method = create_method("fastv", model, 0.25, layer=2)
    proc = copy.copy(processor)
    proc.budget = method.placeholders
    batch = proc(random_images(2, seed=3, size=(64, 64)), QUESTIONS)  # different lengths: left padding is exercised
    out = method.generate(**batch, max_new_tokens=2, do_sample=False)
    fv = method.baseline
    scores, keep = fv.last_scores, fv.last_keep
    # Measured: eager attention probabilities of layer 2 (index 1) for the last prompt position, heads averaged.
    att = _eager_attentions(model, method, batch)[1]
    measured = att[:, :, -1].mean(1)  # (B, L)
    torch.testing.assert_close(scores, measured, rtol=1e-4, atol=1e-6)
    image = batch["input_ids"] == model.image_token_id
    for b in range(2):
        img_pos = image[b].nonzero()[:, 0]
        lowest = img_pos[measured[b, img_pos].argsort()[:64 - 16]]
        dropped = (image[b] & ~keep[b]).nonzero()[:, 0]
        assert sorted(dropped.tolist()) == sorted(lowest.tolist())
    assert out.tokens.tolist() == [16, 16]


@pytest.mark.parametrize("rows", [1, 2])
def test_fastv_generates_from_an_unpadded_batch(rows):
    """With no row padded, SDPA passes no attention mask, at decoding steps too: the dropped keys must stay masked.

    The reference is the same prompts under eager attention, which always builds an explicit mask.
    """
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3}})
    method = create_method("fastv", model, 0.25, layer=2)
    proc = copy.copy(processor)
    proc.budget = method.placeholders
    batch = proc(random_images(rows, seed=5, size=(64, 64)), [QUESTIONS[0]] * rows)
    assert bool(batch["attention_mask"].all())  # no padding
    kw = {"max_new_tokens": 4, "do_sample": False}
    out = method.generate(**batch, **kw)
    model.llava.set_attn_implementation("eager")
    try:
        ref = method.generate(**batch, **kw)
    finally:
        model.llava.set_attn_implementation("sdpa")
    assert out.tokens.tolist() == [16] * rows
    assert torch.equal(out.sequences, ref.sequences)


def test_fastv_keeps_the_tokens_a_constructed_query_attends_to():
    """A hand-built case: layer 1's keys make the last position attend to exactly two known image tokens."""
    model, processor = _build()
    layer = model.language_model.layers[0]
    hidden = model.config.text_config.hidden_size
    fv = FastVBaseline(layer=1)
    prompt_len, img = 12, list(range(2, 10))
    image_mask = torch.zeros(1, prompt_len, dtype=torch.bool)
    image_mask[0, img] = True
    embeds = torch.randn(1, prompt_len, hidden, generator=torch.Generator().manual_seed(0)) * 0.1
    # Identity q/k projections (head_dim wide) and two image tokens aligned with the last position's query.
    with torch.no_grad():
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            proj.weight.zero_()
            proj.weight[: proj.out_features, : proj.out_features] = torch.eye(proj.out_features) * 30
        embeds[0, -1] = 0
        embeds[0, -1, 7] = 1.0
        embeds[0, 4] = embeds[0, -1]
        embeds[0, 7] = embeds[0, -1]
    mask = torch.ones(1, prompt_len, dtype=torch.long)
    with fv.llm_hooks(model.language_model.layers, image_mask, mask, 2), torch.no_grad():
        model.language_model(inputs_embeds=embeds, attention_mask=mask)
    assert fv.last_keep[0].nonzero()[:, 0].tolist() == [4, 7]


def test_mask_keys_rebuilds_the_causal_mask():
    drop = torch.tensor([[False, True, False, False]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    m = _mask_keys(None, drop, valid, 4)[0, 0]
    want = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    want[:, 1] = False
    assert torch.equal(m, want)
    # A decoding step (q = 1 over 5 keys) with an explicit bool mask: the dropped prompt key stays hidden.
    step = _mask_keys(torch.ones(1, 1, 1, 5, dtype=torch.bool), drop, valid, 1)
    assert step[0, 0, 0].tolist() == [True, False, True, True, True]
    additive = _mask_keys(torch.zeros(1, 1, 1, 5), drop, valid, 1)
    assert additive[0, 0, 0, 1] == torch.finfo(torch.float32).min and additive[0, 0, 0, 0] == 0


def _fastv_batch(method, processor, padding_side="left", seed=7):
    proc = copy.copy(processor)
    proc.budget = method.placeholders
    questions = QUESTIONS + ["and the colour?"]
    images = random_images(3, seed=seed, size=(64, 64))
    return proc(images, questions, padding_side=padding_side), [proc([im], [q]) for im, q in zip(images, questions)]


def test_fastv_ranks_right_padded_rows_from_their_last_real_position():
    """Without score_index, logits of a right-padded batch rank each row as that row alone (not from a pad)."""
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3}})
    method = create_method("fastv", model, 0.25, layer=2)
    batch, singles = _fastv_batch(method, processor, "right")
    assert not bool(batch["attention_mask"].all())  # rows of different lengths: pads at the end
    logits = method.logits(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    keep = method.baseline.last_keep.clone()
    for i, one in enumerate(singles):
        length = one["input_ids"].shape[1]
        alone = method.logits(one["pixel_values"], one["input_ids"], one["attention_mask"])
        assert torch.equal(keep[i, :length], method.baseline.last_keep[0])
        torch.testing.assert_close(logits[i, :length], alone[0], rtol=1e-4, atol=1e-5)


def test_fastv_generates_with_beams_and_several_sequences():
    """generate repeats each prompt for beams / num_return_sequences: rows must match the prompt generated alone."""
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3}})
    method = create_method("fastv", model, 0.25, layer=2)
    batch, singles = _fastv_batch(method, processor)
    kw = {"max_new_tokens": 3, "do_sample": False, "num_beams": 2, "num_return_sequences": 2}
    out = method.generate(**batch, **kw)
    assert out.sequences.shape[0] == 6 and out.tokens.tolist() == [16] * 3 and out.positions.shape == (3, 16, 2)
    for i, one in enumerate(singles):
        alone = method.generate(**one, **kw)
        n = alone.sequences.shape[1]
        assert torch.equal(out.sequences[2 * i: 2 * i + 2, :n], alone.sequences)
        torch.testing.assert_close(out.positions[i], alone.positions[0])


def test_fastv_refuses_attention_it_cannot_mask():
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3}})
    method = create_method("fastv", model, 0.25, layer=2)
    batch, _ = _fastv_batch(method, processor)
    model.llava.set_attn_implementation("flex_attention")
    try:
        with pytest.raises(ValueError, match="flex_attention"):
            method.generate(**batch, max_new_tokens=1, do_sample=False)
    finally:
        model.llava.set_attn_implementation("sdpa")


@pytest.mark.parametrize("index", [[5, 5], [5, 5, 500], [5, 5, 0], [5.0, 5.0, 5.0]])
def test_fastv_bad_score_index(index):
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3}})
    method = create_method("fastv", model, 0.25, layer=2)
    batch, _ = _fastv_batch(method, processor)  # left padded: row 1 is padded at position 0
    assert not bool(batch["attention_mask"][1, 0])
    with pytest.raises(ValueError, match="score_index"):
        method.logits(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                      score_index=torch.tensor(index))


def test_bad_counts_and_shapes_raise(tiny):
    model, _ = tiny
    feats, attn = _features(model)
    grid = tuple(model.vision.patch_grid)
    for name in PRE_LLM:
        with pytest.raises(ValueError, match="16.5"):
            create_baseline(name).reduce(feats.float(), 16.5, patch_grid=grid, attention=attn)
    # An attention map that does not cover the features cell for cell (a different grid or batch).
    for bad in (attn[:, :, :, :2], attn[:1]):
        for baseline in (create_baseline("visionzip"), create_baseline("proportional", utility="attention")):
            with pytest.raises(ValueError, match=r"attention of shape"):
                baseline.reduce(feats.float(), 16, patch_grid=grid, attention=bad)
    with pytest.raises(ValueError, match="1.5"):
        create_baseline("uniform", min_tokens=1.5)
    with pytest.raises(ValueError, match="2.5"):
        create_baseline("fastv", layer=2.5)


@pytest.mark.parametrize("model_type", ["qwen3", "olmo2"])  # q/k norms per head (Qwen3), over the whole width (OLMo-2)
def test_fastv_read_with_query_key_norms(model_type):
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3, "model_type": model_type}})
    method = create_method("fastv", model, 0.25, layer=2)
    batch, _ = _fastv_batch(method, processor)
    method.generate(**batch, max_new_tokens=1, do_sample=False)
    att = _eager_attentions(model, method, batch)[1]
    torch.testing.assert_close(method.baseline.last_scores, att[:, :, -1].mean(1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("bad", ["0.5", True, None, [0.5]])
def test_tokens_for_fraction_refuses_non_numbers(tiny, bad):
    # "0.5" was parsed by float() and True taken as 1.0 (every token) instead of refused.
    from models.vlm import tokens_for_fraction
    model, _ = tiny
    assert tokens_for_fraction(model, 0.5) == 32
    with pytest.raises(ValueError, match="token_fraction must be a real number"):
        tokens_for_fraction(model, bad)


# -- tests added from a mutation audit of eval/baselines.py -----------------------------------------------------------
@pytest.mark.parametrize("num_tokens", [0, -3])
def test_zero_or_negative_token_counts_are_refused(tiny, num_tokens):
    # visionzip returned 1 token for num_tokens=0 and tome crashed if the lower bound of the check slipped.
    model, _ = tiny
    feats, attn = _features(model)
    grid = tuple(model.vision.patch_grid)
    for name in PRE_LLM:
        with pytest.raises(ValueError, match=f"num_tokens={num_tokens} must be in"):
            create_baseline(name).reduce(feats.float(), num_tokens, patch_grid=grid, attention=attn)


def test_open_clip_attention_is_the_class_token_row(tiny):
    """The recomputed attention equals what the block's own nn.MultiheadAttention reports: class-token row (query 0),
    heads averaged, over the spatial keys only, resampled into the patch layout like the features."""
    model, _ = tiny
    vision = model.vision
    block = vision.visual.transformer.resblocks[vision.layer_index]
    seen = {}
    hook = block.register_forward_pre_hook(lambda m, a, k: seen.update(x=a[0] if a else k["q_x"]), with_kwargs=True)
    pixels = torch.randn(2, 3, *vision.image_size, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            _, attn = vision_features_and_attention(vision, pixels)
    finally:
        hook.remove()
    hg, wg = vision.token_grid
    y = block.ln_1(seen["x"])
    assert y.shape[1] == hg * wg + 1  # one class token in front
    with torch.no_grad():
        _, probs = block.attn(y, y, y, need_weights=True, average_attn_weights=True)  # (B, L, L)
    want = vision.to_patches(probs[:, 0, 1:].reshape(-1, 1, hg, wg))[..., 0]
    torch.testing.assert_close(attn, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", ["hf_clip", "hf_siglip"])
def test_hf_attention_matches_eager_attentions(backend):
    """HF towers: the feature layer's attention, as HF's eager kernel reports it (CLIP: class-token row; SigLIP, no
    class token: the mean over queries). Unpruned, so that a read of the wrong layer would show."""
    hf = ('vision.hf_config={"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 3, '
          '"num_attention_heads": 2, "image_size": 64, "patch_size": 8}')
    torch.manual_seed(0)
    model, _ = build_model("tiny", [f"vision.backend={backend}", hf, "vision.prune=false"])
    vision = model.vision
    assert len(vision._layers(vision.model)) > vision.hidden_index
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, attn = vision_features_and_attention(vision, pixels)
        vision.model.set_attn_implementation("eager")
        probs = vision.model(pixel_values=pixels, output_attentions=True).attentions[vision.hidden_index - 1].mean(1)
    hg, wg = vision.token_grid
    row = probs[:, 0] if vision.num_prefix_tokens else probs.mean(1)
    want = vision.to_patches(row[:, -hg * wg:].reshape(-1, 1, hg, wg))[..., 0]
    torch.testing.assert_close(attn, want, rtol=1e-5, atol=1e-7)


def test_norm_utility_is_the_mean_norm_of_the_cells():
    # Patch 0's cells alternate +v / -v: large norms that cancel in the mean. Its utility is |v|, not 0.
    feats = torch.zeros(1, 2, 2, 2, 3)
    feats[0, 0, 0, 0], feats[0, 0, 0, 1] = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([-3.0, 0.0, -4.0])
    feats[0, 0, 1, 0], feats[0, 0, 1, 1] = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([-3.0, 0.0, -4.0])
    feats[0, 1] = torch.tensor([0.0, 1.0, 0.0])
    utility = create_baseline("proportional").patch_utility(feats, None)
    torch.testing.assert_close(utility, torch.tensor([[5.0, 1.0]]))


def test_allocator_kwargs_reach_the_allocator(tiny):
    model, _ = tiny
    feats, _ = _features(model, 1)
    grid = tuple(model.vision.patch_grid)
    # The row-mean threshold splits the patches; a threshold above every utility leaves them all low: uniform.
    split = create_baseline("threshold").reduce(feats.float(), 16, patch_grid=grid)
    flat = create_baseline("threshold", allocator_kwargs={"threshold": 1e9}).reduce(feats.float(), 16, patch_grid=grid)
    assert sorted(set(split.sizes[0].tolist())) != [4.0]
    assert flat.sizes[0].tolist() == [4.0] * 16


def test_visionzip_keeps_one_dominant_token_at_a_tiny_fraction(tiny):
    model, _ = tiny
    feats, _ = _features(model, 1)
    grid = tuple(model.vision.patch_grid)
    attn = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.01
    attn[0, 0, 0, 0] = 5.0  # the cell at (0.5 / 8, 0.5 / 8)
    red = create_baseline("visionzip", dominant_fraction=0.05).reduce(feats.float(), 8, patch_grid=grid,
                                                                        attention=attn)  # round(0.4) = 0 dominant
    assert red.sizes[0, 0] == 1.0
    torch.testing.assert_close(red.positions[0, 0], torch.tensor([0.5 / 8, 0.5 / 8]))


def test_visionzip_contextual_tokens_join_their_most_similar_target():
    # Patches 0-1 hold positive multiples of e0, patches 2-3 of e1. One dominant token (in patch 1); the two
    # contextual targets are the first and last remaining tokens (patch 0 and patch 3), so each group is one direction.
    scale = torch.rand(1, 4, 4, 4, 1, generator=torch.Generator().manual_seed(0)) + 0.5
    feats = torch.zeros(1, 4, 4, 4, 2)
    feats[:, :2, ..., 0:1], feats[:, 2:, ..., 1:2] = scale[:, :2], scale[:, 2:]
    attn = torch.zeros(1, 4, 4, 4)
    attn[0, 1, 2, 2] = 1.0
    red = create_baseline("visionzip", dominant_fraction=1 / 3).reduce(feats, 3, patch_grid=(2, 2), attention=attn)
    assert red.sizes[0].tolist() == [1.0, 31.0, 32.0]
    assert red.tokens[0, 1, 1] == 0 and red.tokens[0, 2, 0] == 0  # pure e0 / pure e1 means
    torch.testing.assert_close(red.tokens[0, 1, 0], scale[0, :2].sum() / 31 - scale[0, 1, 2, 2, 0] / 31)
    torch.testing.assert_close(red.tokens[0, 2, 1], scale[0, 2:].mean())


def test_tome_keeps_unmerged_tokens_in_their_original_order():
    # A = tokens 0, 2, 4, 6; their edges to B are strongest for 6, then 2, then 4, then 0 (orthogonal).
    e = torch.eye(8)
    x = e.clone()
    x[7], x[3], x[5] = e[6] + 0.1 * e[7], e[2] + 0.5 * e[3], e[4] + 1.0 * e[5]
    x[6], x[2], x[4] = e[6], e[2], e[4]
    out, _, size = ToMeBaseline.merge_round(x[None], torch.rand(1, 8, 2), torch.ones(1, 8), 1)
    torch.testing.assert_close(out[0, :3], x[[0, 2, 4]])  # unmerged A, original order
    assert size[0].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]  # 6 merged into 7


def test_tome_small_max_ratio_still_merges_every_round(tiny):
    # int(n · max_ratio) = 0 here: a round must still merge one token (r = 0 would loop forever).
    model, _ = tiny
    feats, _ = _features(model, 1)
    tome = ToMeBaseline(max_ratio=0.01)
    rounds = []

    def counted(x, pos, size, r):
        assert r >= 1, "a merge round that merges nothing"
        rounds.append(r)
        return ToMeBaseline.merge_round(x, pos, size, r)

    tome.merge_round = counted
    red = tome.reduce(feats.float(), 60, patch_grid=tuple(model.vision.patch_grid))
    assert rounds == [1, 1, 1, 1] and red.tokens.shape[1] == 60


def test_fastv_mean_score_is_the_mean_attention_from_later_real_queries():
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3}})
    method = create_method("fastv", model, 0.25, layer=2, score="mean")
    batch, _ = _fastv_batch(method, processor)  # left padded
    method.generate(**batch, max_new_tokens=1, do_sample=False)
    att = _eager_attentions(model, method, batch)[1].mean(1)  # (B, L, L) query x key
    real = batch["attention_mask"].bool()
    length = real.shape[1]
    later = torch.ones(length, length, dtype=torch.bool).tril()[None] & real[:, :, None]  # real query i >= key j
    want = (att * later).sum(1) / later.sum(1).clamp_min(1)
    torch.testing.assert_close(method.baseline.last_scores[real], want[real], rtol=1e-4, atol=1e-6)


def test_fastv_score_index_past_the_prompt_is_refused():
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3}})
    method = create_method("fastv", model, 0.25, layer=2)
    batch, _ = _fastv_batch(method, processor)
    length = batch["input_ids"].shape[1]
    with pytest.raises(ValueError, match="score_index"):
        method.logits(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                      score_index=torch.tensor([length - 1, length - 1, length]))


def test_fastv_read_with_grouped_query_attention():
    # 4 query heads over 2 kv heads: query heads 0-1 use kv head 0, heads 2-3 kv head 1 (the tiny preset has 1 kv head,
    # where any head mapping agrees).
    model, processor = _build(llm={"text_config": {"num_hidden_layers": 3, "num_attention_heads": 4,
                                                   "num_key_value_heads": 2}})
    method = create_method("fastv", model, 0.25, layer=2)
    batch, _ = _fastv_batch(method, processor)
    method.generate(**batch, max_new_tokens=1, do_sample=False)
    att = _eager_attentions(model, method, batch)[1]
    torch.testing.assert_close(method.baseline.last_scores, att[:, :, -1].mean(1), rtol=1e-4, atol=1e-6)


def test_visionzip_contextual_targets_stay_distinct_on_a_large_grid():
    # N = 34·95 = 3230 cells, one dominant token (round(3229 · 1e-4) = 0, raised to 1), so r = 3229 remaining tokens
    # and n_ctx = 3228 targets. float32 linspace(0, 3228, 3228) rounded two neighbours to the same index: that group
    # was empty (0 / 0 = NaN token, size 0). With distinct targets, exactly one remaining token is not a target and
    # joins one group: sizes are 1 (dominant), 3227 times 1 and once 2, summing to N; every token is finite.
    feats = torch.randn(1, 1, 34, 95, 2, generator=torch.Generator().manual_seed(0))
    attn = torch.zeros(1, 1, 34, 95)
    attn[0, 0, 0, 0] = 1.0
    red = create_baseline("visionzip", dominant_fraction=1e-4).reduce(feats, 3229, patch_grid=(1, 1), attention=attn)
    assert red.tokens.shape == (1, 3229, 2) and bool(torch.isfinite(red.tokens).all())
    assert sorted(red.sizes[0].tolist()) == [1.0] * 3228 + [2.0]


@pytest.mark.parametrize("bad", ["0.5", True, None])
def test_fraction_arguments_must_be_real_numbers(bad):
    # VisionZipBaseline(True) kept every token dominant (True == 1.0); strings and None raised a TypeError from "<".
    with pytest.raises(ValueError, match=f"dominant_fraction must be in \\(0, 1\\], got {bad!r}"):
        VisionZipBaseline(bad)
    with pytest.raises(ValueError, match=f"max_ratio must be in \\(0, 0.5\\], got {bad!r}"):
        ToMeBaseline(bad)
