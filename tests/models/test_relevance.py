"""Relevance distillation (models/relevance.py): the attention read, the per-patch target, the loss, the recipe."""

from __future__ import annotations

import csv

import pytest
import torch

from models.relevance import last_prompt_index, patch_relevance, read_attention, relevance_loss


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
