"""Relevance distillation (models/relevance.py): the attention read, the per-patch target, the loss, the recipe."""

from __future__ import annotations

import csv

import pytest
import torch

from models.relevance import (default_layer, last_prompt_index, patch_relevance, read_attention, relevance_loss,
                              soft_cross_entropy)


def test_last_prompt_index_and_its_errors():
    labels = torch.tensor([[-100, -100, -100, 7, 8, -100], [-100, 5, 6, -100, -100, -100]])
    mask = torch.ones_like(labels)
    assert last_prompt_index(labels, mask).tolist() == [2, 0]
    with pytest.raises(ValueError, match="row 1 has no supervised label"):
        last_prompt_index(torch.tensor([[-100, 3], [-100, -100]]), torch.ones(2, 2))
    with pytest.raises(ValueError, match="row 0 is supervised from position 0"):
        last_prompt_index(torch.tensor([[3, 4]]), torch.ones(1, 2))


def test_patch_relevance_is_the_normalised_mean_attention_per_token():
    # Sequence: [text, img, img, img, text]; visual tokens 0,1 -> patch 0, token 2 -> patch 2; patch 1 has none.
    attention = torch.tensor([[0.1, 0.4, 0.2, 0.1, 0.2]])
    image_mask = torch.tensor([[False, True, True, True, False]])
    patch_index = torch.tensor([[0, 0, 2, -1]])  # one padding slot
    token_mask = torch.tensor([[True, True, True, False]])
    p = patch_relevance(attention, image_mask, patch_index, token_mask, 3)
    mean0, mean2 = (0.4 + 0.2) / 2, 0.1  # per-token means: a patch with more tokens does not win by count
    torch.testing.assert_close(p, torch.tensor([[mean0, 0.0, mean2]]) / (mean0 + mean2))


def test_relevance_loss_is_cross_entropy_and_moves_utility_toward_the_target():
    u = torch.zeros(1, 3, requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 0.0]])
    loss = relevance_loss(u, target)
    torch.testing.assert_close(loss, torch.log(torch.tensor(3.0)))
    loss.backward()
    assert u.grad[0, 1] < 0 < u.grad[0, 0]  # descent raises the attended patch's utility
    with pytest.raises(ValueError, match="differ in shape"):
        relevance_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def _tiny(attn):
    from models.builders import build_model

    torch.manual_seed(0)
    return build_model("tiny", [f"llm.attn_implementation={attn}"])


def _batch(processor):
    from PIL import Image

    from training.collate import VqaCollator

    rows = [{"image": Image.new("RGB", (64, 64), c), "question": q, "answers": [a]}
            for c, q, a in (("red", "what digit is in the red circle?", "3"), ("blue", "how many squares?", "2"))]
    return VqaCollator(processor, train=True)(rows)


def test_read_attention_matches_eager_attention_weights():
    # The read recomputes a layer's attention from q/k (SDPA never materialises it); eager attention gives the truth.
    model, processor = _tiny("eager")
    model.eval()
    b = _batch(processor)
    idx = last_prompt_index(b["labels"], b["attention_mask"])
    embeds, _ = model.embed_inputs(b["pixel_values"], b["input_ids"], query_input_ids=b["query_input_ids"],
                                   query_attention_mask=b["query_attention_mask"])
    layers = model.language_model.layers
    for k in range(len(layers)):
        with torch.no_grad(), read_attention(layers[k], idx, b["attention_mask"]) as state:
            out = model.llava(inputs_embeds=embeds, attention_mask=b["attention_mask"], output_attentions=True)
        truth = out.attentions[k].mean(1)[torch.arange(len(idx)), idx]  # (B, L): heads averaged, row idx
        torch.testing.assert_close(state["attention"], truth.float(), atol=1e-5, rtol=1e-4)


def test_recipe_trains_with_relevance_distillation(tmp_path):
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark
    from training.train import load_train_cfg, main

    data = tmp_path / "bench"
    make_benchmark(data, seed=0, sizes={"train": 8}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    base = ["--config", "configs/train/tiny.yaml", f"data.path={data}", "data.generate=false", "dist.fsdp=off",
            "train.max_steps=2", "train.batch_size=4", "train.save_every=null"]
    plain = main(base + [f"output_dir={tmp_path / 'plain'}"])
    distilled = main(base + [f"output_dir={tmp_path / 'rel'}", "train.relevance_weight=1.0"])
    with open(tmp_path / "rel" / "log.csv", newline="") as f:
        logged = list(csv.DictReader(f))
    assert all(float(r["relevance_loss"]) > 0 for r in logged)  # a cross-entropy over 16 patches
    assert all(r["relevance_loss"] == 0.0 for r in plain)
    assert distilled[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-6)  # same start: the LM loss is unchanged
    assert distilled[1]["loss"] != pytest.approx(plain[1]["loss"], rel=1e-9)  # the extra gradient changed step 1
    with pytest.raises(ValueError, match="relevance_weight must be a finite number >= 0, got -1"):
        load_train_cfg("configs/train/tiny.yaml", ["train.relevance_weight=-1"])
    with pytest.raises(ValueError, match=r"train.relevance_layer=5 must be in 1..2"):
        main(base + [f"output_dir={tmp_path / 'bad'}", "train.relevance_weight=1.0", "train.relevance_layer=5"])


def test_default_layer_is_the_middle_one_and_at_least_the_first():
    assert [default_layer(n) for n in (1, 2, 3, 4, 5, 32)] == [1, 1, 1, 2, 2, 16]


def test_last_prompt_index_honours_ignore_index_and_names_the_row_without_a_prompt():
    labels = torch.tensor([[9, 9, 2, 9], [9, 0, 1, 9]])  # 9 ignored; 0..2 supervised (below the ignore index)
    assert last_prompt_index(labels, torch.ones_like(labels), ignore_index=9).tolist() == [1, 0]
    with pytest.raises(ValueError, match="row 1 is supervised from position 0"):  # row 0 has a prompt
        last_prompt_index(torch.tensor([[-100, 3], [4, 5]]), torch.ones(2, 2))


def test_patch_relevance_edge_rows_and_half_precision():
    attention = torch.tensor([[0.1, 0.4, 0.2, 0.1, 0.2], [1.0, 0.0, 0.0, 0.0, 0.0]])
    image_mask = torch.tensor([[False, True, True, True, False]] * 2)
    patch_index = torch.tensor([[0, 0, 0, -1]] * 2)
    token_mask = torch.tensor([[True, True, True, False]] * 2)
    # One patch takes all the relevance; a row whose visual tokens receive no attention is zero, not NaN.
    p = patch_relevance(attention, image_mask, patch_index, token_mask, 1)
    torch.testing.assert_close(p, torch.tensor([[1.0], [0.0]]))
    # Half-precision attention is accumulated in float32.
    patch_index = torch.tensor([[0, 1, 1, -1]] * 2)
    half = patch_relevance(attention.bfloat16(), image_mask, patch_index, token_mask, 2)
    assert half.dtype == torch.float32
    ref = patch_relevance(attention.bfloat16().float(), image_mask, patch_index, token_mask, 2)
    torch.testing.assert_close(half, ref)


def test_soft_cross_entropy_is_float32_stable_and_leaves_the_target_alone():
    u = torch.tensor([[0.0, 200.0], [1.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [0.25, 0.75]], requires_grad=True)
    ce = soft_cross_entropy(u, target)
    expect = -(target.detach() * torch.log_softmax(u.detach(), -1)).sum(-1)
    torch.testing.assert_close(ce, expect)
    assert ce[0].item() == pytest.approx(200.0)  # far beyond where softmax underflows to 0 in float32
    loss = relevance_loss(u, target)
    torch.testing.assert_close(loss, expect.mean())  # the mean over rows, not the sum
    loss.backward()
    assert target.grad is None and u.grad is not None
    low = soft_cross_entropy(u.detach().bfloat16(), target.detach())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, soft_cross_entropy(u.detach().bfloat16().float(), target.detach()))


def _decoder_layer():
    import transformers
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    layer, rope = LlamaDecoderLayer(cfg, layer_idx=0), LlamaRotaryEmbedding(cfg)

    def run(h):
        pos = torch.arange(h.shape[1])[None].expand(h.shape[0], -1)
        return layer(h, attention_mask=None, position_ids=pos, position_embeddings=rope(h, pos))

    return layer, run


def test_read_attention_keeps_the_first_full_length_forward_without_gradient_then_unhooks():
    layer, run = _decoder_layer()
    mask, idx = torch.ones(2, 5, dtype=torch.long), torch.tensor([4, 2])
    first, second = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 5, 16)
    with read_attention(layer, idx, mask) as ref:
        run(first)
    with read_attention(layer, idx, mask) as other:
        run(second)
    assert not torch.allclose(ref["attention"], other["attention"])
    with read_attention(layer, idx, mask) as state:
        run(first[:, :3])  # a shorter forward (a decoding step) is not the prompt's
        assert "attention" not in state
        run(first)
        run(second)  # a later forward does not overwrite the read
    torch.testing.assert_close(state["attention"], ref["attention"])
    assert not state["attention"].requires_grad
    torch.testing.assert_close(state["attention"].sum(1), torch.ones(2))
    assert state["attention"][1, 3:].abs().sum() == 0  # row 1 reads position 2: later keys are masked
    state.clear()
    run(first)  # outside the context nothing is read
    assert state == {}


def test_gradient_saliency_is_the_absolute_gradient_times_input_per_position():
    from models.relevance import gradient_saliency

    g = torch.tensor([[[1.0, -2.0], [0.5, 0.5], [3.0, 0.0]]])
    e = torch.tensor([[[2.0, 1.0], [-4.0, 2.0], [1.0, 9.0]]], dtype=torch.bfloat16)
    s = gradient_saliency(g.requires_grad_(), e)
    assert s.dtype == torch.float32 and not s.requires_grad
    assert s.tolist() == [[0.0, 1.0, 3.0]]  # |2 - 2|, |-2 + 1|, |3 + 0|
    with pytest.raises(ValueError, match=r"grad \(1, 3, 2\) and embeds \(1, 3, 1\) differ"):
        gradient_saliency(g, e[..., :1])
