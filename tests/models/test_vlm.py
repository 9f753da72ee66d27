"""ArrCocLlava (tiny preset): forward, backward, generate, batches, budgets, count checks, weights I/O."""

from __future__ import annotations

import pytest
import torch
from _images import random_images

from arr_coc import ArrCoc
from models.builders import build_model
from models.position import PositionEmbedding2d
from models.processing import IGNORE_INDEX, pad_sequences
from models.vlm import ArrCocLlava, full_token_count, load_state_dict_nonstrict, tokens_for_fraction

QUESTIONS = ["what digit is in the red circle?", "how many triangles?"]
ANSWERS = ["7", "3"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, processor = build_model("tiny")
    return model, processor


def _train_batch(processor, images, questions, answers):
    seqs, labels = [], []
    for q, a in zip(questions, answers):
        p, t = processor.encode_prompt(q), processor.encode_answer(a)
        seqs.append(p + t)
        labels.append([IGNORE_INDEX] * len(p) + t)
    ids, mask = pad_sequences(seqs, processor.tokenizer.pad_token_id, "right")
    lab, _ = pad_sequences(labels, IGNORE_INDEX, "right")
    q_ids, q_mask = processor.encode_queries(questions)
    return {"pixel_values": processor.preprocess_images(images), "input_ids": ids, "attention_mask": mask.long(),
            "labels": lab, "query_input_ids": q_ids, "query_attention_mask": q_mask}


def test_forward_backward_batch2_variable_budgets(tiny):
    model, processor = tiny
    model.train()
    model.zero_grad(set_to_none=True)
    batch = _train_batch(processor, random_images(2), QUESTIONS, ANSWERS)
    out = model(**batch)
    b, length = batch["input_ids"].shape
    assert out.logits.shape == (b, length, model.config.text_config.vocab_size)
    assert torch.isfinite(out.loss)
    budgets = out.arr_coc.budgets
    assert budgets.shape == (2, 16)
    assert budgets.sum(1).tolist() == [model.budget] * 2
    assert int(budgets.min()) >= 1 and int(budgets.max()) <= 6
    assert int(budgets.min()) < int(budgets.max()), "budgets should differ between patches"
    out.loss.backward()
    groups = model.parameter_groups()
    for part in ("vision", "arr_coc", "projector", "llm"):
        grads = [p.grad for _, p in groups[part] if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), f"no gradient reached {part}"
    # The straight-through gate carries the loss into knowing's query projection.
    assert float(model.arr_coc.knowing.q_proj.weight.grad.abs().sum()) > 0


def test_visual_tokens_land_on_placeholders(tiny):
    model, processor = tiny
    model.eval()
    batch = _train_batch(processor, random_images(2, seed=1), QUESTIONS, ANSWERS)
    with torch.no_grad():
        embeds, out = model.embed_inputs(batch["pixel_values"], batch["input_ids"],
                                         query_input_ids=batch["query_input_ids"],
                                         query_attention_mask=batch["query_attention_mask"])
        query = model.encode_query(batch["query_input_ids"], batch["query_attention_mask"])
        visual, _ = model.visual_tokens(batch["pixel_values"], query)
        text = model.get_input_embeddings()(batch["input_ids"])
    ph = batch["input_ids"] == processor.image_token_id
    assert ph.sum(1).tolist() == [model.budget] * 2
    torch.testing.assert_close(embeds[ph], visual[out.mask])
    torch.testing.assert_close(embeds[~ph], text[~ph])


def test_count_mismatch_names_both_counts(tiny):
    model, processor = tiny
    batch = _train_batch(processor, random_images(2), QUESTIONS, ANSWERS)
    ids = batch["input_ids"].clone()
    first = int((ids[1] == processor.image_token_id).nonzero()[0])
    ids[1, first] = processor.tokenizer.pad_token_id  # one placeholder short in sample 1
    with pytest.raises(ValueError, match=r"sample 1.*31 image tokens.*32 visual tokens"):
        model(batch["pixel_values"], ids, batch["attention_mask"], query_input_ids=batch["query_input_ids"])


def test_processor_requires_one_placeholder(tiny):
    _, processor = tiny
    ids = processor.tokenizer("no image here", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="exactly one"):
        processor.expand_image_tokens(ids)
    two = ids + [processor.image_token_id] * 2
    with pytest.raises(ValueError, match="found 2"):
        processor.expand_image_tokens(two)
    assert processor.encode_prompt("q").count(processor.image_token_id) == processor.budget


def test_right_padding_does_not_change_real_logits(tiny):
    model, processor = tiny
    model.eval()
    imgs = random_images(2, seed=2)
    with torch.no_grad():
        both = model(**_train_batch(processor, imgs, QUESTIONS, ANSWERS)).logits
        alone = model(**_train_batch(processor, imgs[1:], QUESTIONS[1:], ANSWERS[1:])).logits
    torch.testing.assert_close(both[1, :alone.shape[1]], alone[0], atol=1e-5, rtol=1e-5)


def test_generate_batch2_matches_single(tiny):
    model, processor = tiny
    model.eval()
    imgs = random_images(2, seed=3)
    questions = ["what colour is the shape holding a 7?", "is there a blue square?"]  # different prompt lengths
    batch = processor(imgs, questions)  # left-padded prompts
    assert batch["attention_mask"][1, 0] == 0 or batch["attention_mask"][0, 0] == 0
    new = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 5
    for i in range(2):
        one = model.generate(**processor(imgs[i:i + 1], questions[i:i + 1]), max_new_tokens=5, do_sample=False)
        n = one.shape[1]
        assert new[i, :n].tolist() == one[0].tolist()
    assert len(processor.batch_decode(new)) == 2


def test_trainable_flags(tiny):
    model, _ = tiny
    model.set_trainable(vision=False, llm=False, arr_coc=True, projector=True)
    groups = model.parameter_groups()
    assert not any(p.requires_grad for _, p in groups["vision"] + groups["llm"])
    assert all(p.requires_grad for _, p in groups["arr_coc"] + groups["projector"])
    model.set_trainable(vision=True, llm=True, arr_coc=True)  # back to the preset
    assert all(p.requires_grad for _, p in groups["vision"] + groups["llm"])


def test_state_dict_roundtrip_nonstrict(tiny):
    model, processor = tiny
    torch.manual_seed(1)
    fresh, _ = build_model("tiny")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["llava.model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(1)  # unused by design
    missing, unexpected = load_state_dict_nonstrict(fresh, sd)
    assert not missing and all(k.startswith("llava.model.vision_tower.") for k in unexpected)
    batch = _train_batch(processor, random_images(1, seed=4), QUESTIONS[:1], ANSWERS[:1])
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, model(**batch).logits)
    sd["llava.lm_head.bogus"] = torch.zeros(1)
    with pytest.raises(ValueError, match="bogus"):
        load_state_dict_nonstrict(fresh, sd)


def test_open_clip_query_and_hf_vision_backends():
    torch.manual_seed(0)
    model, processor = build_model("tiny", ["query.source=open_clip"])
    assert model.arr_coc.query_dim == 32 and model.query_encoder.__class__.__name__ == "OpenClipText"
    batch = _train_batch(processor, random_images(2), QUESTIONS, ANSWERS)
    assert batch["query_input_ids"].shape == (2, 32)  # the open_clip context length of the tiny config
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    hf = ('vision.hf_config={"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2, '
          '"num_attention_heads": 2, "image_size": 64, "patch_size": 8}')
    for backend in ("hf_clip", "hf_siglip"):
        model, processor = build_model("tiny", [f"vision.backend={backend}", hf])
        assert model.arr_coc.dim == 24
        out = model(**_train_batch(processor, random_images(2), QUESTIONS, ANSWERS))
        assert torch.isfinite(out.loss) and out.arr_coc.budgets.sum(1).tolist() == [32, 32]


def test_widths_must_agree(tiny):
    model, _ = tiny
    bad = PositionEmbedding2d(8, (4, 4))
    with pytest.raises(ValueError, match="pos_embed width 8"):
        ArrCocLlava(model.llava, model.vision, model.arr_coc, pos_embed=bad)


def test_position_embedding_bilinear():
    pe = PositionEmbedding2d(3, (2, 4), init_std=1.0)
    table = pe.table.detach().view(2, 4, 3)
    centres = torch.tensor([[[0.25, 0.125], [0.75, 0.875]]])  # cells (0, 0) and (1, 3)
    torch.testing.assert_close(pe(centres), torch.stack([table[0, 0], table[1, 3]])[None])
    mid = torch.tensor([[[0.25, 0.25]]])  # halfway between cells (0, 0) and (0, 1)
    torch.testing.assert_close(pe(mid)[0, 0], (table[0, 0] + table[0, 1]) / 2)
    mask = torch.tensor([[True, False]])
    assert float(pe(centres, mask)[0, 1].detach().abs().sum()) == 0.0
    zero = PositionEmbedding2d(3, (2, 2))
    out = zero(torch.rand(1, 5, 2))
    assert float(out.detach().abs().sum()) == 0.0  # zero-initialised: the identity on the features
    out.sum().backward()
    assert float(zero.table.grad.abs().sum()) > 0  # ...yet it learns


def test_alloc_context_is_the_bandit_allocators_context(tiny):
    """``alloc_context`` is the (B, K, C) context the ``bandit`` allocator chose with (what a trainer credits rewards
    to), and None for an allocator that uses none."""
    model, processor = tiny
    batch = _train_batch(processor, random_images(2), QUESTIONS, ANSWERS)
    with torch.no_grad():
        assert model(**batch).alloc_context is None
        torch.manual_seed(0)
        bandit, _ = build_model("tiny", ["arr_coc.allocator=bandit",
                                         'arr_coc.allocator_kwargs={"levels": [1, 2, 4, 6]}'])
        out = bandit.eval()(**batch)
    ctx = out.alloc_context
    assert ctx is not None and ctx is out.arr_coc.context and not ctx.requires_grad
    assert ctx.shape[:2] == (2, 16)


def test_position_embedding_saturates_at_the_image_borders():
    # Positions outside the outermost cell centres read the border entries (no wrap-around to the opposite side).
    pe = PositionEmbedding2d(3, (2, 4), init_std=1.0)
    table = pe.table.detach().view(2, 4, 3)
    corners = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.1, 0.0]]])
    want = torch.stack([table[0, 0], table[1, 3], table[0, 3], table[1, 0], table[0, 0]])[None]
    torch.testing.assert_close(pe(corners).detach(), want)


def test_position_embedding_refuses_bad_sizes_and_shapes():
    for dim, grid in [(3, (0, 4)), (3, (2, 0)), (0, (2, 2)), (3, (2,))]:
        with pytest.raises(ValueError, match="PositionEmbedding2d needs"):
            PositionEmbedding2d(dim, grid)
    pe = PositionEmbedding2d(3, (2, 2))
    for shape in [(1, 2, 3), (2, 2)]:
        with pytest.raises(ValueError, match="positions must have shape"):
            pe(torch.rand(*shape))


def test_tokens_for_fraction_rounds_and_bounds(tiny):
    model, _ = tiny
    assert full_token_count(model) == 64
    assert tokens_for_fraction(model, 1.0) == 64  # the full-token count itself is allowed
    assert tokens_for_fraction(model, 0.305) == 20  # round(19.52), not floor
    for bad in (0.0, 1.5, -0.25):
        with pytest.raises(ValueError, match=rf"in \(0, 1\], got {bad}"):
            tokens_for_fraction(model, bad)
    with pytest.raises(ValueError, match="token_fraction=0.005 of N=64 full tokens rounds to 0 tokens"):
        tokens_for_fraction(model, 0.005)


def test_patch_grid_must_agree(tiny):
    model, _ = tiny
    a = model.arr_coc
    wide = ArrCoc(a.dim, a.query_dim, num_patches=16, budget=32, min_tokens=1, max_tokens=6, patch_grid=(2, 8),
                  attn_dim=16, num_prototypes=8)
    with pytest.raises(ValueError, match=r"vision patch grid \(4, 4\) \(K=16\) differs from ArrCoc's \(2, 8\)"):
        ArrCocLlava(model.llava, model.vision, wide)


def test_project_visual_masks_padding_positions():
    """Padding tokens (mask False) get neither a position nor a footprint embedding; real ones get both."""
    torch.manual_seed(0)
    model, _ = build_model("tiny", ["footprint_embed=true"])
    with torch.no_grad():
        model.pos_embed.table.normal_()
        model.footprint_embed.table.normal_()
        tokens, positions = torch.randn(2, 3, model.arr_coc.dim), torch.rand(2, 3, 2)
        mask = torch.tensor([[True, True, False], [True, False, True]])
        footprint = torch.full((2, 3), 4.0)
        out = model.project_visual(tokens, positions, mask, footprint=footprint)
        no_fp = model.project_visual(tokens, positions, mask)
        bare = model.projector(tokens)
    torch.testing.assert_close(out[~mask], bare[~mask])
    assert float((out[mask] - no_fp[mask]).abs().min()) > 0 and float((no_fp[mask] - bare[mask]).abs().min()) > 0


def test_scatter_visual_counts_masked_tokens_and_names_the_first_bad_sample(tiny):
    model, processor = tiny
    batch = _train_batch(processor, random_images(2), QUESTIONS, ANSWERS)
    ids, n, e = batch["input_ids"].clone(), model.budget, model.config.text_config.hidden_size
    embeds = torch.randn(2, n, e)
    with pytest.raises(ValueError, match=rf"mask of shape \(2, {n - 1}\) must match image_embeds' .* \(2, {n}\)"):
        model.scatter_visual(ids, embeds, torch.ones(2, n - 1, dtype=torch.bool))
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[0, 3] = False  # sample 0 has one padding token: it needs one placeholder fewer
    with pytest.raises(ValueError, match=rf"sample 0: input_ids hold {n} image tokens .* produced {n - 1} visual"):
        model.scatter_visual(ids, embeds, mask)
    short = ids.clone()
    short[0, (ids[0] == processor.image_token_id).nonzero()[-1, 0]] = processor.tokenizer.pad_token_id
    with torch.no_grad():
        out = model.scatter_visual(short, embeds, mask)
    torch.testing.assert_close(out[short == processor.image_token_id], embeds[mask])
    for row, k in ((0, 1), (1, 2)):  # both samples short of placeholders: the first is named
        where = (ids[row] == processor.image_token_id).nonzero()[:k, 0]
        ids[row, where] = processor.tokenizer.pad_token_id
    with pytest.raises(ValueError, match=rf"sample 0: input_ids hold {n - 1} image tokens .* produced {n} visual"):
        model.scatter_visual(ids, embeds)


def test_embed_inputs_names_the_batch_mismatch(tiny):
    model, processor = tiny
    batch = _train_batch(processor, random_images(2), QUESTIONS, ANSWERS)
    with pytest.raises(ValueError, match=r"input_ids must be \(B, L\) with B = pixel_values' batch 1"):
        model.embed_inputs(batch["pixel_values"][:1], batch["input_ids"], query_input_ids=batch["query_input_ids"][:1])


def test_inferred_attention_mask_follows_hf_pad_and_eos_rule(tiny):
    model, _ = tiny
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 6]])
    torch.testing.assert_close(model._infer_attention_mask(ids, {"pad_token_id": 0}),
                               torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    assert model._infer_attention_mask(ids, {"pad_token_id": 0, "eos_token_id": [2, 0]}) is None  # pad is an EOS
    assert model._infer_attention_mask(ids, {"pad_token_id": 3}) is None  # pad never occurs
    gc = model.llava.generation_config
    old = gc.eos_token_id
    gc.eos_token_id = 0  # the EOS may come from the generation config
    try:
        assert model._infer_attention_mask(ids, {"pad_token_id": 0}) is None
    finally:
        gc.eos_token_id = old


def test_state_dict_missing_keys_are_refused_unless_tolerated(tiny):
    model, _ = tiny
    torch.manual_seed(1)
    fresh, _ = build_model("tiny")
    sd = dict(model.state_dict())
    del sd["arr_coc.knowing.q_proj.weight"]
    with pytest.raises(ValueError, match=r"missing \['arr_coc.knowing.q_proj.weight'\] \(1 total\)"):
        load_state_dict_nonstrict(fresh, sd)


def test_position_table_is_in_the_projector_group(tiny):
    model, _ = tiny
    groups = model.parameter_groups()
    assert [n for n, _ in groups["projector"] if n.startswith("pos_embed.")] == ["pos_embed.table"]
    others = [n for part in ("vision", "arr_coc", "query", "llm") for n, _ in groups[part]]
    assert not any(n.startswith("pos_embed.") for n in others)


def test_footprint_counts_the_cells_of_a_non_square_fine_grid():
    # Each token of patch k averages h * w / budgets[b, k] fine cells: with h != w, both sides count.
    torch.manual_seed(0)
    model, processor = build_model("tiny", ["footprint_embed=true", "vision.fine_grid=[4,2]"])
    seen = {}
    hook = model.footprint_embed.register_forward_pre_hook(lambda mod, args: seen.update(fp=args[0]))
    pixels = processor.preprocess_images(random_images(2))
    q_ids, q_mask = processor.encode_queries(QUESTIONS)
    try:
        with torch.no_grad():
            _, out = model.visual_tokens(pixels, model.encode_query(q_ids, q_mask))
    finally:
        hook.remove()
    per_token = out.budgets.gather(1, out.patch_index.clamp(min=0)).float()
    torch.testing.assert_close(seen["fp"][out.mask], (8.0 / per_token)[out.mask])


def test_llm_query_ignores_the_padding_of_shorter_questions(tiny):
    model, processor = tiny
    q_ids, q_mask = processor.encode_queries(QUESTIONS)
    assert not bool(q_mask[1].all())  # the second question is right-padded in the batch
    alone = processor.encode_queries(QUESTIONS[1:])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_query(q_ids, q_mask)[1], model.encode_query(*alone)[0])


def test_wrapping_drops_llavas_own_vision_tower(tiny):
    model, _ = tiny
    llava = model.llava
    llava.model.vision_tower = torch.nn.Linear(2, 2)  # as a LLaVA checkpoint loads it
    try:
        ArrCocLlava(llava, model.vision, model.arr_coc)
        assert llava.model.vision_tower is None  # one owner: its weights would otherwise train and save twice
    finally:
        llava.model.vision_tower = None


def test_position_embedding_interpolates_between_rows():
    pe = PositionEmbedding2d(3, (2, 4), init_std=1.0)
    table = pe.table.detach().view(2, 4, 3)
    between = torch.tensor([[[0.5, 0.125], [0.5, 0.75]]])  # halfway between rows 0 and 1; the second also between
    corners = (table[0, 2] + table[0, 3] + table[1, 2] + table[1, 3]) / 4  # columns 2 and 3
    torch.testing.assert_close(pe(between)[0], torch.stack([(table[0, 0] + table[1, 0]) / 2, corners]))


@pytest.mark.parametrize("backend", ["open_clip", "hf_clip"])
def test_gradient_checkpointing_keeps_the_gradients_and_saves_fewer_activations(backend):
    """``gradient_checkpointing_enable()``, as a user calls it on HF's LLaVA, was an AttributeError; it checkpoints
    the LLM's layers and the vision tower's blocks, with the gradients of a plain backward."""
    hf = ('vision.hf_config={"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2, '
          '"num_attention_heads": 2, "image_size": 64, "patch_size": 8}')
    torch.manual_seed(0)
    model, processor = build_model("tiny", [] if backend == "open_clip" else [f"vision.backend={backend}", hf])
    model.train()
    batch = _train_batch(processor, random_images(2), QUESTIONS, ANSWERS)

    def backward():
        model.zero_grad(set_to_none=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved

    loss, grads, saved = backward()
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    try:
        assert model.is_gradient_checkpointing
        loss_gc, grads_gc, saved_gc = backward()
    finally:
        model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    torch.testing.assert_close(loss_gc, loss)
    assert grads_gc.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_gc[name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert len(saved_gc) < len(saved)
    vision_saved = []
    model.gradient_checkpointing_enable()
    try:  # the tower checkpoints its blocks too (as HF LLaVA's own tower does)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: vision_saved.append(t) or t, lambda t: t):
            model.vision(batch["pixel_values"])
    finally:
        model.gradient_checkpointing_disable()
    plain = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: plain.append(t) or t, lambda t: t):
        model.vision(batch["pixel_values"])
    assert len(vision_saved) < len(plain)


def test_generate_refuses_right_padded_prompts(tiny):
    """Right-padded prompts continued after their padding: batched greedy tokens differed from one-at-a-time, with
    no warning (HF's right-padding warning looks at input_ids, and the LLM gets embeddings)."""
    model, processor = tiny
    model.eval()
    imgs = random_images(2, seed=3)
    questions = ["a?", "what colour is the shape holding a 7?"]
    right = processor(imgs, questions, padding_side="right")
    assert not bool(right["attention_mask"][0, -1])
    with pytest.raises(ValueError, match=r"left-padded prompts, but row 0 of attention_mask ends in padding"):
        model.generate(**right, max_new_tokens=3)
    with pytest.raises(ValueError, match="row 0"):  # the mask inferred from the pad ids
        model.generate(**{**right, "attention_mask": None}, max_new_tokens=3)
    new = model.generate(**processor(imgs, questions), max_new_tokens=3, do_sample=False)
    one = model.generate(**processor(imgs[:1], questions[:1]), max_new_tokens=3, do_sample=False)
    assert new[0, :one.shape[1]].tolist() == one[0].tolist()
