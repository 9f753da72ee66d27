"""The footprint embedding: its table read, its zero at full detail, its validation, and its wiring in the VLM."""

from __future__ import annotations

import math

import pytest
import torch
from _images import random_images

from models.builders import build_model
from models.position import FootprintEmbedding
from models.vlm import ArrCocLlava


def test_table_read_and_zero_at_one_cell():
    fe = FootprintEmbedding(3, (-2, 3), init_std=1.0)
    t = fe.table.detach()  # nodes log2 f = -2, -1, 0, 1, 2, 3 -> rows 0..5; f = 1 is row 2
    fp = torch.tensor([[1.0, 4.0, 0.25, 2 ** 0.5, 8.0]])
    out = fe(fp).detach()
    assert float(out[0, 0].abs().max()) == 0.0  # E(1) = 0 exactly, whatever the table
    torch.testing.assert_close(out[0, 1], t[4] - t[2])  # log2 4 = 2
    torch.testing.assert_close(out[0, 2], t[0] - t[2])  # log2 1/4 = -2, the lower end node
    torch.testing.assert_close(out[0, 3], (t[2] + t[3]) / 2 - t[2])  # halfway between nodes 0 and 1
    torch.testing.assert_close(out[0, 4], t[5] - t[2])  # the upper end node
    # Beyond the end nodes the read saturates at the end entries.
    far = fe(torch.tensor([[2.0 ** 7, 2.0 ** -9]])).detach()
    torch.testing.assert_close(far[0, 0], t[5] - t[2])
    torch.testing.assert_close(far[0, 1], t[0] - t[2])


def test_zero_init_is_identity_yet_learns_but_not_from_full_detail():
    fe = FootprintEmbedding(4)
    fp = torch.tensor([[1.0, 3.0, 9.0, 4.5]])
    out = fe(fp)
    assert float(out.detach().abs().sum()) == 0.0
    out.sum().backward()
    assert float(fe.table.grad.abs().sum()) > 0
    # Only full-detail tokens (one cell each): the table gets no gradient at all, so a full-token model never
    # trains it.
    fe.table.grad = None
    fe(torch.ones(2, 5)).square().sum().backward()
    assert float(fe.table.grad.abs().sum()) == 0.0


def test_mask_zeroes_padding_and_skips_its_footprint():
    fe = FootprintEmbedding(2, init_std=1.0)
    fp = torch.tensor([[4.0, 0.0, float("nan")]])  # padding may hold anything
    mask = torch.tensor([[True, False, False]])
    out = fe(fp, mask).detach()
    assert torch.isfinite(out).all()
    assert float(out[0, 1:].abs().sum()) == 0.0
    assert float(out[0, 0].abs().sum()) > 0


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_bad_footprint_is_named(bad):
    fe = FootprintEmbedding(2)
    with pytest.raises(ValueError, match="finite and > 0"):
        fe(torch.tensor([[1.0, bad]]))


def test_bad_shapes_dtypes_and_ranges():
    fe = FootprintEmbedding(2)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        fe(torch.ones(3))
    with pytest.raises(ValueError, match="floating"):
        fe(torch.ones(1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="mask shape"):
        fe(torch.ones(1, 3), torch.ones(1, 2, dtype=torch.bool))
    for rng in [(1, 4), (-3, -1), (0, 0), (1,)]:
        with pytest.raises(ValueError, match="log2_range"):
            FootprintEmbedding(2, rng)


@pytest.fixture(scope="module")
def tiny_fp():
    torch.manual_seed(0)
    model, processor = build_model("tiny", ["footprint_embed=true", "footprint_log2_range=[-2,4]"])
    with torch.no_grad():
        model.footprint_embed.table.normal_()
    return model, processor


def test_vlm_adds_each_tokens_footprint(tiny_fp):
    model, processor = tiny_fp
    assert isinstance(model.footprint_embed, FootprintEmbedding) and model.footprint_embed.dim == model.arr_coc.dim
    assert any(n.startswith("footprint_embed.") for n, _ in model.parameter_groups()["projector"])
    pixels = processor.preprocess_images(random_images(2))
    q_ids, q_mask = processor.encode_queries(["what digit is in the red circle?", "what colour is the square?"])
    model.eval()
    with torch.no_grad():
        query = model.encode_query(q_ids, q_mask)
        embeds, out = model.visual_tokens(pixels, query)
        feats = model.vision(pixels)
        n_cells = feats.shape[2] * feats.shape[3]
        assert out.budgets.min() < out.budgets.max(), "the check needs patches of different budgets"
        # Recompute by hand: token t of sample b comes from patch p = patch_index[b, t], and averages
        # n_cells / budgets[b, p] cells.
        fp = torch.ones(out.mask.shape)
        for b in range(fp.shape[0]):
            for t in range(fp.shape[1]):
                p = int(out.patch_index[b, t])
                if p >= 0:
                    fp[b, t] = n_cells / int(out.budgets[b, p])
        expect = model.project_visual(out.tokens, out.positions, out.mask, footprint=fp)
        torch.testing.assert_close(embeds, expect)
        # ...and it does change the embeddings (the table is non-zero and footprints differ from one cell).
        plain = model.project_visual(out.tokens, out.positions, out.mask)
        assert float((embeds - plain)[out.mask].abs().max()) > 1e-3
        # No footprint (the training-free baselines' path) is the same as one cell per token.
        torch.testing.assert_close(plain, model.project_visual(out.tokens, out.positions, out.mask,
                                                               footprint=torch.ones(out.mask.shape)))
    assert math.isclose(float(fp[out.mask].min()), n_cells / int(out.budgets.max()), rel_tol=1e-6)


def test_vlm_footprint_table_trains_and_width_is_checked(tiny_fp):
    model, processor = tiny_fp
    model.train()
    model.zero_grad(set_to_none=True)
    q = ["what digit is in the red circle?", "what colour is the square?"]
    seqs = [processor.encode_prompt(x) + processor.encode_answer("2") for x in q]
    n = min(len(s) for s in seqs)
    ids = torch.tensor([s[:n] for s in seqs])
    q_ids, q_mask = processor.encode_queries(q)
    out = model(pixel_values=processor.preprocess_images(random_images(2, seed=1)), input_ids=ids, labels=ids,
                query_input_ids=q_ids, query_attention_mask=q_mask)
    out.loss.backward()
    assert float(model.footprint_embed.table.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="footprint_embed width 5"):
        ArrCocLlava(model.llava, model.vision, model.arr_coc, footprint_embed=FootprintEmbedding(5))
    # Off by default: existing checkpoints keep loading strictly.
    plain, _ = build_model("tiny")
    assert plain.footprint_embed is None
    assert not any("footprint" in k for k in plain.state_dict())


def test_range_may_start_or_end_at_one_cell():
    # lo = 0 (no sub-cell footprints) and hi = 0 are valid ends of the range.
    up = FootprintEmbedding(2, (0, 3), init_std=1.0)
    t = up.table.detach()
    out = up(torch.tensor([[1.0, 8.0, 0.5]])).detach()
    assert float(out[0, 0].abs().max()) == 0.0
    torch.testing.assert_close(out[0, 1], t[3] - t[0])
    assert float(out[0, 2].abs().max()) == 0.0  # below the lower end node: saturates at f = 1
    down = FootprintEmbedding(2, (-2, 0), init_std=1.0)
    t = down.table.detach()
    torch.testing.assert_close(down(torch.tensor([[0.25]])).detach()[0, 0], t[0] - t[2])


def test_read_interpolates_at_a_quarter_step_and_in_full_precision():
    fe = FootprintEmbedding(3, (-2, 3), init_std=1.0)
    t = fe.table.detach()
    out = fe(torch.tensor([[2 ** 0.75, 2 ** -0.25]])).detach()  # log2 f = 0.75 and -0.25: not halfway
    torch.testing.assert_close(out[0, 0], 0.25 * t[2] + 0.75 * t[3] - t[2])
    torch.testing.assert_close(out[0, 1], 0.25 * t[1] + 0.75 * t[2] - t[2])
    # A half-precision footprint (exact small integers) is read in float32, not on the bf16 log2 grid.
    fp = torch.tensor([[3.0, 5.0, 12.0]])
    torch.testing.assert_close(fe(fp.bfloat16()).detach(), fe(fp).detach())


def test_validation_reads_only_each_samples_own_real_tokens():
    fe = FootprintEmbedding(2, init_std=1.0)
    fp = torch.tensor([[4.0, 2.0], [0.0, 8.0]])  # sample 1 pads column 0, where sample 0 has a real token
    mask = torch.tensor([[True, True], [False, True]])
    out = fe(fp, mask).detach()
    assert torch.isfinite(out).all() and float(out[1, 0].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="finite and > 0"):
        fe(fp, torch.ones(2, 2, dtype=torch.bool))


def test_zero_width_is_refused():
    with pytest.raises(ValueError, match="dim >= 1"):
        FootprintEmbedding(0)
