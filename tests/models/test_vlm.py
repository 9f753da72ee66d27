"""ArrCocLlava (tiny preset): forward, backward, generate, batches, budgets, count checks, weights I/O."""

from __future__ import annotations

import pytest
import torch
from _images import random_images

from models.builders import build_model
from models.position import PositionEmbedding2d
from models.processing import IGNORE_INDEX, pad_sequences
from models.vlm import ArrCocLlava, load_state_dict_nonstrict

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
