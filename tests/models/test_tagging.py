"""UtilityTag: per-token standardised patch utility times a learned vector, added before the projector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.builders import build_model
from models.processing import IGNORE_INDEX, pad_sequences
from models.tagging import UtilityTag, standardise_utility
from models.vlm import load_state_dict_nonstrict


def test_standardise_utility_is_a_per_image_z_score():
    u = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    z = standardise_utility(u)
    mean = u[0].mean()
    std = ((u[0] - mean) ** 2).mean().sqrt()
    torch.testing.assert_close(z[0], (u[0] - mean) / (std + 1e-6))
    assert torch.equal(z[1], torch.zeros(4)), "tied patches carry no tag"
    # Scale- and shift-free: the tag depends on the ranking geometry, not on the utility's units.
    torch.testing.assert_close(standardise_utility(10 * u + 3)[0], z[0], atol=1e-5, rtol=1e-5)


def test_tag_adds_the_token_patch_value_and_skips_padding():
    tag = UtilityTag(3)
    with torch.no_grad():
        tag.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
    tokens = torch.zeros(1, 4, 3)
    utility = torch.tensor([[0.0, 1.0, 2.0]])
    patch_index = torch.tensor([[0, 2, 2, -1]])  # the last token is padding
    out = tag(tokens, utility, patch_index)
    z = standardise_utility(utility)[0]
    expect = torch.stack([z[0] * tag.weight, z[2] * tag.weight, z[2] * tag.weight, torch.zeros(3)]).detach()
    torch.testing.assert_close(out[0], expect)


def test_tag_starts_as_the_identity_and_learns():
    tag = UtilityTag(4)
    tokens = torch.randn(2, 5, 4)
    utility = torch.randn(2, 3, requires_grad=True)
    patch_index = torch.randint(0, 3, (2, 5))
    out = tag(tokens, utility, patch_index)
    assert torch.equal(out, tokens), "zero-initialised: no change at step 0"
    (out * torch.randn_like(out)).sum().backward()
    assert float(tag.weight.grad.abs().sum()) > 0, "the learned vector gets a gradient at step 0"


@pytest.mark.parametrize("bad", ["tokens", "utility", "patch_index"])
def test_tag_refuses_bad_shapes_by_name(bad):
    tag = UtilityTag(4)
    args = {"tokens": torch.zeros(2, 5, 4), "utility": torch.zeros(2, 3),
            "patch_index": torch.zeros(2, 5, dtype=torch.int64)}
    args[bad] = {"tokens": torch.zeros(2, 5, 3), "utility": torch.zeros(3, 3),
                 "patch_index": torch.zeros(2, 5, dtype=torch.int32)}[bad]
    with pytest.raises(ValueError, match=bad):
        tag(**args)


def _batch(processor, n=2):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]
    questions = ["what digit is on the red circle?", "what colour is the square?"][:n]
    seqs, labels = [], []
    for q, a in zip(questions, ["7", "red"][:n]):
        p, t = processor.encode_prompt(q), processor.encode_answer(a)
        seqs.append(p + t)
        labels.append([IGNORE_INDEX] * len(p) + t)
    ids, mask = pad_sequences(seqs, processor.tokenizer.pad_token_id, "right")
    lab, _ = pad_sequences(labels, IGNORE_INDEX, "right")
    q_ids, q_mask = processor.encode_queries(questions)
    return {"pixel_values": processor.preprocess_images(images), "input_ids": ids, "attention_mask": mask.long(),
            "labels": lab, "query_input_ids": q_ids, "query_attention_mask": q_mask}


def test_tagged_model_trains_the_tag_and_reaches_the_utility_through_it():
    torch.manual_seed(0)
    model, processor = build_model("tiny", ["utility_tag=true"])
    model.arr_coc.straight_through = False  # isolate the tag's own path into the utility
    assert model.utility_tag is not None
    assert "utility_tag.weight" in [n for n, _ in model.parameter_groups()["projector"]]
    batch = _batch(processor)
    with torch.no_grad():
        model.utility_tag.weight.normal_()  # a trained tag: non-zero, so gradients flow through z into the utility
    model.train()
    model(**batch).loss.backward()
    assert float(model.utility_tag.weight.grad.abs().sum()) > 0
    # Without the straight-through gate, the tag is the only way the answer loss reaches knowing's query projection.
    assert float(model.arr_coc.knowing.q_proj.weight.grad.abs().sum()) > 0
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.utility_tag.weight.zero_()
    model(**batch).loss.backward()
    grad = model.arr_coc.knowing.q_proj.weight.grad
    assert grad is None or float(grad.abs().sum()) == 0, "a zero tag and no gate: no path from the loss to knowing"


def test_tag_changes_the_visual_tokens_only_when_set():
    torch.manual_seed(0)
    tagged, processor = build_model("tiny", ["utility_tag=true"])
    plain, _ = build_model("tiny")
    load_state_dict_nonstrict(plain, {k: v for k, v in tagged.state_dict().items() if not k.startswith("utility_tag")})
    tagged.eval(), plain.eval()
    batch = _batch(processor)
    with torch.no_grad():
        q = tagged.encode_query(batch["query_input_ids"], batch["query_attention_mask"])
        same, _ = tagged.visual_tokens(batch["pixel_values"], q)
        ref, _ = plain.visual_tokens(batch["pixel_values"], q)
        torch.testing.assert_close(same, ref)  # zero tag: identical to the untagged model
        tagged.utility_tag.weight.fill_(1.0)
        moved, out = tagged.visual_tokens(batch["pixel_values"], q)
    assert not torch.allclose(moved, ref)
    # A checkpoint of the tagged model does not load into an untagged one: the key is not silently dropped.
    with pytest.raises(ValueError, match="utility_tag"):
        load_state_dict_nonstrict(plain, tagged.state_dict())
