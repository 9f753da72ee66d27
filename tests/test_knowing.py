"""Tests for the knowing stage: three standardised relevance scores per patch.

Each score is checked against hand-made inputs whose answer is known: a two-valued patch has exactly ln 2 nats of
pixel entropy, an odd-one-out patch is the most salient, the patch equal to the query is the most query-relevant.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arr_coc import Knowing
from arr_coc.knowing import pixel_entropy, standardize

PROP, PERSP, PART = 0, 1, 2


def _features(b=2, k=16, h=3, w=3, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, h, w, d, generator=g, dtype=dtype)


def _query(b=2, dq=8, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, dq, generator=g, dtype=dtype)


# -- output contract ---------------------------------------------------------------------------------------------------


def test_output_shape_and_per_sample_standardisation():
    torch.manual_seed(0)
    kn = Knowing(8, 6, attn_dim=4, num_prototypes=5)
    s = kn(_features(b=3, k=12), query=_query(b=3, dq=6))
    assert s.shape == (3, 12, 3)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s.mean(1), torch.zeros(3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.std(1, unbiased=False), torch.ones(3, 3), atol=1e-3, rtol=0)


def test_standardize_constant_row_is_zero_and_differentiable():
    s = torch.full((2, 7), 3.5, requires_grad=True)
    z = standardize(s, dim=1)
    assert torch.equal(z, torch.zeros(2, 7))
    (z * torch.arange(7.0)).sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("value,k", [(-2.4849066, 6), (123.456, 200), (3333.3333, 576)])
def test_standardize_maps_a_constant_row_to_zeros_whatever_its_value(value, k):
    # These values' row means round away from the value: the rows came out as 0.24, -7.6 and 244 everywhere (3-D: 732).
    assert torch.equal(standardize(torch.full((2, k), value), dim=1), torch.zeros(2, k))
    assert torch.equal(standardize(torch.full((2, k, 3), value), dim=1), torch.zeros(2, k, 3))


def test_identical_patches_score_zero():
    # Six identical patches: the participatory column was 0.119 for every patch instead of 0.
    kn = Knowing(4, 4)
    feats = torch.randn(1, 1, 2, 2, 4, generator=torch.Generator().manual_seed(0)).expand(2, 6, 2, 2, 4)
    assert torch.equal(kn(feats, query=_query(dq=4)), torch.zeros(2, 6, 3))


def test_single_patch_gives_zero_scores_not_nan():
    kn = Knowing(8, 8)
    s = kn(_features(b=2, k=1), query=_query(b=2))
    assert torch.equal(s, torch.zeros(2, 1, 3))


def test_samples_are_scored_independently():
    torch.manual_seed(0)
    kn = Knowing(8, 8, attn_dim=8)
    f, q = _features(b=3), _query(b=3)
    full = kn(f, query=q)
    for i in range(3):
        torch.testing.assert_close(kn(f[i:i + 1], query=q[i:i + 1])[0], full[i], atol=1e-5, rtol=1e-5)


# -- propositional: pixel entropy --------------------------------------------------------------------------------------


def test_pixel_entropy_flat_half_and_four_level_patches():
    # Grid (1, 3) over a 4x12 image: patch 0 flat, patch 1 half black / half white, patch 2 four equal-sized levels.
    img = torch.zeros(1, 3, 4, 12)
    img[..., 4:6] = 1.0  # patch 1: columns 4..7, left half white
    levels = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    img[..., 8:12] = levels  # patch 2: every row has the four levels once
    ent = pixel_entropy(img, (1, 3), bins=32)
    assert ent.shape == (1, 3)
    torch.testing.assert_close(ent[0], torch.tensor([0.0, math.log(2), math.log(4)]), atol=1e-6, rtol=0)


def test_pixel_entropy_noise_scores_higher_than_flat():
    g = torch.Generator().manual_seed(0)
    img = torch.full((2, 3, 16, 16), 0.5)
    img[:, :, :, 8:] = torch.rand(2, 3, 16, 8, generator=g)  # right column of patches is noisy
    ent = pixel_entropy(img, (2, 2))  # (B, 4): patches 0, 2 flat; 1, 3 noisy
    assert torch.all(ent[:, [0, 2]] == 0)
    assert torch.all(ent[:, [1, 3]] > 1.0)


def test_pixel_entropy_is_invariant_to_the_intensity_range_and_uses_the_grey_level():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 12, 12, generator=g)
    ent = pixel_entropy(img, (3, 3))
    torch.testing.assert_close(pixel_entropy(img * 255.0 + 7.0, (3, 3)), ent, atol=1e-5, rtol=0)
    # Only the channel mean matters: permuting channels changes nothing.
    torch.testing.assert_close(pixel_entropy(img[:, [2, 0, 1]], (3, 3)), ent, atol=1e-6, rtol=0)


def test_pixel_entropy_uses_every_bin_for_an_image_of_tiny_range():
    # Grid (1, 2) over a 1x8 image, bins=4, intensities of order 1e-7: patch 0 holds the four levels 0, 1/3, 2/3, 1
    # (times 1e-7), which the image's own min..max put in bins 0, 1, 2, 3, one pixel each: ln 4 nats. Patch 1 is flat
    # (0.5e-7): 0. The range 1e-7 was clamped to 1e-6, which squeezed all four levels into bin 0 (entropy 0).
    img = torch.full((1, 1, 1, 8), 0.5e-7)
    img[0, 0, 0, :4] = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]) * 1e-7
    ent = pixel_entropy(img, (1, 2), bins=4)
    torch.testing.assert_close(ent[0], torch.tensor([math.log(4), 0.0]), atol=1e-6, rtol=0)


def test_pixel_entropy_keeps_float64_pixels_in_float64():
    # Grid (1, 2) over a 1x4 float64 image at an offset of 1e5: patch 0 holds 1e5 and 1e5 + 1e-3 (two levels, one
    # pixel each: ln 2 nats), patch 1 is flat at 1e5: 0. float32's spacing at 1e5 is 2^-7 ~ 7.8e-3, so casting to
    # float32 first made both levels 1e5 (a flat image, entropy 0 everywhere).
    img = torch.tensor([1e5, 1e5 + 1e-3, 1e5, 1e5], dtype=torch.float64).view(1, 1, 1, 4)
    ent = pixel_entropy(img, (1, 2), bins=4)
    torch.testing.assert_close(ent[0].double(), torch.tensor([math.log(2), 0.0], dtype=torch.float64), atol=1e-6,
                               rtol=0)


def test_pixel_entropy_accepts_uint8_images():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=torch.uint8)
    torch.testing.assert_close(pixel_entropy(img, (2, 2)), pixel_entropy(img.float() / 255, (2, 2)), atol=1e-5, rtol=0)


def test_pixel_entropy_grid_need_not_divide_the_image():
    # H=5 over 2 patch rows: rows 0..2 go to patch row 0 (floor(r*2/5)), rows 3..4 to patch row 1.
    img = torch.zeros(1, 1, 5, 2)
    img[0, 0, 3, :] = 1.0  # half of patch 1's 4 pixels are white
    ent = pixel_entropy(img, (2, 1))
    torch.testing.assert_close(ent[0], torch.tensor([0.0, math.log(2)]), atol=1e-6, rtol=0)


@settings(deadline=None, max_examples=25)
@given(gh=st.integers(1, 3), gw=st.integers(1, 3), ph=st.integers(1, 4), pw=st.integers(1, 4),
       bins=st.integers(2, 40), seed=st.integers(0, 2**16))
def test_pixel_entropy_bounds(gh, gw, ph, pw, bins, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 3, gh * ph, gw * pw, generator=g)
    ent = pixel_entropy(img, (gh, gw), bins=bins)
    assert ent.shape == (1, gh * gw)
    # Entropy of a histogram with at most min(bins, pixels per patch) occupied bins.
    assert torch.all(ent >= 0)
    assert torch.all(ent <= math.log(min(bins, ph * pw)) + 1e-5)


def test_knowing_uses_pixel_entropy_when_pixels_are_given():
    torch.manual_seed(0)
    kn = Knowing(8, 8, hist_bins=16)
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(2, 3, 16, 16, generator=g)
    pixels[0, :, :8, :8] = 0.2  # one flat patch in sample 0
    s = kn(_features(b=2, k=4), query=_query(b=2), pixels=pixels)
    want = standardize(pixel_entropy(pixels, (2, 2), bins=16), dim=1)
    torch.testing.assert_close(s[..., PROP], want, atol=1e-5, rtol=0)
    assert int(s[0, :, PROP].argmin()) == 0


# -- propositional: feature entropy ------------------------------------------------------------------------------------


def test_feature_entropy_constant_patch_scores_lower_than_random():
    torch.manual_seed(0)
    kn = Knowing(16, 16, num_prototypes=16)
    f = _features(b=4, k=9, h=4, w=4, d=16)
    f[:, 4] = f[:, 4, :1, :1]  # patch 4: every token equal to its first token
    raw = kn.propositional(f, None, (3, 3))
    assert raw.shape == (4, 9)
    others = torch.cat([raw[:, :4], raw[:, 5:]], dim=1)
    assert torch.all(raw[:, 4] < others.min(1).values)
    assert torch.equal(kn(f, query=_query(b=4, dq=16))[:, :, PROP].argmin(1), torch.full((4,), 4))


def test_feature_entropy_of_a_flat_patch_tends_to_zero_with_a_sharp_codebook():
    torch.manual_seed(0)
    kn = Knowing(16, 16, num_prototypes=8)
    with torch.no_grad():
        kn.log_proto_temp.fill_(6.0)  # near-hard assignment: one token -> one prototype
    f = _features(b=1, k=4, h=4, w=4, d=16)
    f[:, 0] = f[:, 0, :1, :1]
    raw = kn.propositional(f, None, (2, 2))
    assert raw[0, 0] < 1e-3
    assert torch.all(raw[0, 1:] > 0.3)  # 16 random tokens over 8 sharp bins occupy several


def test_feature_entropy_uses_only_the_prototype_directions():
    # Each prototype is scaled to norm sqrt(D) before the assignment, so rescaling one prototype changes nothing.
    torch.manual_seed(0)
    kn = Knowing(8, 8, num_prototypes=5)
    f = _features(b=2, k=4, h=2, w=2, d=8)
    before = kn.propositional(f, None, (2, 2))
    with torch.no_grad():
        kn.prototypes.mul_(torch.tensor([0.1, 1.0, 3.0, 7.0, 0.5])[:, None])
    torch.testing.assert_close(kn.propositional(f, None, (2, 2)), before, atol=1e-6, rtol=0)


# -- perspectival: centre-surround salience ----------------------------------------------------------------------------


@pytest.mark.parametrize("odd", [0, 3, 5, 14])  # corner, corner, interior, edge of a 4x4 grid
def test_perspectival_odd_one_out_is_most_salient(odd):
    a, b = torch.zeros(8), torch.ones(8)
    f = a.expand(1, 16, 2, 2, 8).clone()
    f[0, odd] = b
    kn = Knowing(8, 8)
    raw = kn.perspectival(f, (4, 4))
    assert int(raw[0].argmax()) == odd
    # The odd patch's contrast is the full distance |b - a|; its neighbours see it diluted by their surround.
    torch.testing.assert_close(raw[0, odd], (b - a).norm(), atol=1e-6, rtol=0)
    scores = kn(f, query=_query(b=1))
    assert int(scores[0, :, PERSP].argmax()) == odd


def test_perspectival_counts_within_patch_contrast():
    # Every patch has the same mean, so centre-surround contrast is 0; only patch 6's tokens vary.
    f = torch.zeros(1, 9, 2, 2, 4)
    f[0, 6, 0] = 1.0
    f[0, 6, 1] = -1.0
    raw = Knowing(4, 4).perspectival(f, (3, 3))
    assert int(raw[0].argmax()) == 6
    torch.testing.assert_close(raw[0, 6], torch.tensor(2.0), atol=1e-6, rtol=0)  # rms distance to the mean: sqrt(4)
    assert torch.all(raw[0, torch.arange(9) != 6] == 0)


def test_perspectival_neighbours_follow_the_row_major_grid_layout():
    # On a 2x4 grid patch 3 (row 0, col 3) has neighbours 2, 6 and 7: only they and patch 3 see any contrast. Read as
    # a 4x2 layout, patch 3 would sit at (1, 1), next to 0, 1, 2, 4, 5, 6, 7.
    f = torch.zeros(1, 8, 2, 2, 4)
    f[0, 3] = 1.0
    raw = Knowing(4, 4).perspectival(f, (2, 4))
    assert (raw[0] > 0).nonzero().flatten().tolist() == [2, 3, 6, 7]
    torch.testing.assert_close(raw[0, 3], torch.tensor(2.0), atol=1e-6, rtol=0)  # |1 - 0| over D=4
    torch.testing.assert_close(raw[0, 2], torch.tensor(2.0 / 5), atol=1e-6, rtol=0)  # 1 of its 5 neighbours is odd


# -- participatory: query cross-attention ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0, 7, 11])
def test_participatory_identity_init_finds_the_patch_equal_to_the_query(target):
    d, k = 16, 12
    g = torch.Generator().manual_seed(target)
    pf = torch.nn.functional.normalize(torch.randn(2, k, d, generator=g), dim=-1) * math.sqrt(d)  # equal norms
    f = pf[:, :, None, None, :].expand(2, k, 2, 3, d).contiguous()
    q = pf[:, target]
    kn = Knowing(d, d, attn_dim=d, identity_init=True)
    torch.testing.assert_close(kn.q_proj.weight, torch.eye(d))
    s = kn(f, query=q)
    assert torch.equal(s[:, :, PART].argmax(1), torch.full((2,), target))
    # The raw score is the log attention mass, so the masses over patches sum to one.
    raw = kn.participatory(f, q)
    torch.testing.assert_close(raw.exp().sum(1), torch.ones(2), atol=1e-5, rtol=0)


def test_participatory_identity_init_with_wider_attention():
    # attn_dim > dim pads the identity with zero rows: the similarity is unchanged.
    d = 8
    g = torch.Generator().manual_seed(0)
    pf = torch.nn.functional.normalize(torch.randn(1, 6, d, generator=g), dim=-1) * 3
    f = pf[:, :, None, None, :].expand(1, 6, 2, 2, d).contiguous()
    kn = Knowing(d, d, attn_dim=20, identity_init=True)
    assert int(kn(f, query=pf[:, 4])[0, :, PART].argmax()) == 4


def test_participatory_is_the_log_of_scaled_dot_product_attention():
    # One fine token per patch and identity projections: the score is log softmax_k(f_k . q / sqrt(attn_dim)).
    d = 8
    g = torch.Generator().manual_seed(0)
    f, q = torch.randn(2, 5, 1, 1, d, generator=g), torch.randn(2, d, generator=g)
    kn = Knowing(d, d, attn_dim=d, identity_init=True)
    want = torch.log_softmax((f[:, :, 0, 0] @ q[:, :, None])[..., 0] / math.sqrt(d), dim=-1)
    torch.testing.assert_close(kn.participatory(f, q), want, atol=1e-5, rtol=0)


# -- gradients ---------------------------------------------------------------------------------------------------------


def test_gradients_reach_projections_and_prototypes():
    torch.manual_seed(0)
    kn = Knowing(8, 6, attn_dim=4, num_prototypes=5)
    f = _features(b=2, k=9).requires_grad_(True)
    s = kn(f, query=_query(b=2, dq=6))
    (s * torch.randn(s.shape, generator=torch.Generator().manual_seed(9))).sum().backward()
    for name in ("q_proj.weight", "k_proj.weight", "prototypes", "log_proto_temp"):
        grad = kn.get_parameter(name).grad
        assert grad is not None, name
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_with_pixels_the_codebook_gets_no_gradient():
    torch.manual_seed(0)
    kn = Knowing(8, 8)
    s = kn(_features(b=2, k=4), query=_query(b=2), pixels=torch.rand(2, 3, 8, 8))
    (s * torch.randn_like(s)).sum().backward()
    assert kn.prototypes.grad is None
    assert kn.q_proj.weight.grad.abs().sum() > 0


def test_float64_and_meta_construction():
    kn = Knowing(8, 8, dtype=torch.float64)
    s = kn(_features(k=4, dtype=torch.float64), query=_query(dtype=torch.float64))
    assert s.dtype == torch.float64
    meta = Knowing(8, 8, identity_init=True, device="meta")
    assert all(p.is_meta for p in meta.parameters())


# -- bad input ---------------------------------------------------------------------------------------------------------


def _bad(where, value):
    t = where.clone()
    t.view(-1)[3] = value
    return t


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_raise(value):
    kn = Knowing(8, 8)
    f, q, px = _features(k=4), _query(), torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"features contains 1 non-finite"):
        kn(_bad(f, value), query=q)
    with pytest.raises(ValueError, match=r"query contains 1 non-finite"):
        kn(f, query=_bad(q, value))
    with pytest.raises(ValueError, match=r"pixels contains 1 non-finite"):
        kn(f, query=q, pixels=_bad(px, value))


def test_shape_dtype_and_device_errors():
    kn = Knowing(8, 6)
    f, q = _features(k=4), _query(dq=6)
    with pytest.raises(ValueError, match=r"features must have 5 dims .*\(2, 4, 3, 8\)"):
        kn(f[:, :, 0], query=q)
    with pytest.raises(ValueError, match=r"query must have 2 dims"):
        kn(f, query=q[0])
    with pytest.raises(ValueError, match=r"D=5 does not match Knowing\(dim=8\)"):
        kn(f[..., :5], query=q)
    with pytest.raises(ValueError, match=r"query shape \(2, 5\) does not match \(B=2, Dq=6\)"):
        kn(f, query=q[:, :5])
    with pytest.raises(ValueError, match=r"query shape \(3, 6\) does not match \(B=2"):
        kn(f, query=_query(b=3, dq=6))
    with pytest.raises(ValueError, match=r"query dtype torch.float64 differs from features dtype torch.float32"):
        kn(f, query=q.double())
    with pytest.raises(ValueError, match=r"features dtype torch.float64 differs from Knowing's parameter dtype"):
        kn(f.double(), query=q.double())
    with pytest.raises(ValueError, match=r"features must be a floating-point tensor"):
        kn(f.long(), query=q.long())
    with pytest.raises(ValueError, match=r"pixels batch 3 does not match features batch 2"):
        kn(f, query=q, pixels=torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match=r"pixels must have 4 dims"):
        kn(f, query=q, pixels=torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match=r"pixels \(1, 8\) smaller than the patch grid \(2, 2\)"):
        kn(f, query=q, pixels=torch.rand(2, 3, 1, 8))
    with pytest.raises(ValueError, match=r"different devices"):
        kn(f.to("meta"), query=q)
    with pytest.raises(ValueError, match=r"patch_grid \(3, 3\) does not multiply to num_patches=4"):
        Knowing(8, 6, patch_grid=(3, 3))(f, query=q)


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"identity_init needs query_dim == dim, got 6 != 8"):
        Knowing(8, 6, identity_init=True)
    with pytest.raises(ValueError, match=r"attn_dim must be >= 1, got 0"):
        Knowing(8, 8, attn_dim=0)
    # Non-integers failed with a TypeError deep in nn.Linear (or, for hist_bins, only at the first forward with pixels).
    with pytest.raises(ValueError, match=r"attn_dim must be an integer, got float: 2.5"):
        Knowing(8, 8, attn_dim=2.5)
    with pytest.raises(ValueError, match=r"hist_bins must be an integer, got str: '8'"):
        Knowing(8, 8, hist_bins="8")
    with pytest.raises(ValueError, match=r"patch_grid \(-2, -2\) entry must be >= 1, got -2"):
        Knowing(8, 8, patch_grid=(-2, -2))(_features(k=4), query=_query())
    # A bare int (as if K were meant) failed with a TypeError from tuple(3) ('int' object is not iterable).
    with pytest.raises(ValueError, match=r"patch_grid must be two positive ints \(rows, cols\), got 4"):
        Knowing(8, 8, patch_grid=4)


def test_autocast_accepts_low_precision_features():
    kn = Knowing(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = kn(_features(k=4).bfloat16(), query=_query().bfloat16())
    assert s.shape == (2, 4, 3) and torch.isfinite(s.float()).all()


def test_flat_patch_gives_finite_gradients():
    """A patch whose fine tokens are all equal (always so on a 1x1 fine grid) has zero within-patch contrast, where
    sqrt has an infinite slope: the backward must stay finite."""
    f = _features(h=1, w=1).requires_grad_()
    knowing = Knowing(8, 8)
    q = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    (knowing(f, query=q) * torch.arange(3.0)).sum().backward()
    assert bool(torch.isfinite(f.grad).all())
    g = _features(h=3, w=3)
    g[:, 0] = g[:, 0, :1, :1]  # one flat patch in an otherwise textured image
    g.requires_grad_()
    knowing.perspectival(g, (4, 4)).sum().backward()
    assert bool(torch.isfinite(g.grad).all())


def test_non_tensor_empty_grid_and_channel_less_pixels_raise_value_error():
    kn, f, q = Knowing(8, 8), _features(k=4), _query()
    # Non-tensors raised AttributeError ('list' object has no attribute 'dim').
    for kw, name in (({"features": [1.0], "query": q}, "features"), ({"features": f, "query": [1.0]}, "query"),
                     ({"features": f, "query": q, "pixels": [[1.0]]}, "pixels")):
        feats = kw.pop("features")
        with pytest.raises(ValueError, match=rf"{name} must be a torch.Tensor, got list"):
            kn(feats, **kw)
    # An empty fine grid was reported as "scores contains 24 non-finite value(s)".
    with pytest.raises(ValueError, match=r"features' fine grid must be at least 1x1, got h=0, w=3"):
        kn(torch.zeros(2, 4, 0, 3, 8), query=q)
    with pytest.raises(ValueError, match=r"features' fine grid must be at least 1x1, got h=3, w=0"):
        kn(torch.zeros(2, 4, 3, 0, 8), query=q)  # was NaN scores throughout
    # No channel: the grey level was NaN and every patch silently scored an entropy of 0.
    with pytest.raises(ValueError, match=r"pixels must be real with at least one channel, got shape \(2, 0, 8, 8\)"):
        kn(f, query=q, pixels=torch.rand(2, 0, 8, 8))
    with pytest.raises(ValueError, match=r"pixels must be real .* dtype torch.complex64"):
        kn(f, query=q, pixels=torch.rand(2, 3, 8, 8, dtype=torch.complex64))


def test_pixel_entropy_refuses_bad_arguments_by_value():
    # Called directly (it is public): a grid taller than the image gave its empty patches an entropy of 0 silently;
    # bins=0 or a zero grid failed with an IndexError-like RuntimeError, bins=2.5 with a TypeError.
    px = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"pixels \(8, 8\) smaller than the patch grid \(16, 2\)"):
        pixel_entropy(px, (16, 2))
    with pytest.raises(ValueError, match=r"bins must be >= 1, got 0"):
        pixel_entropy(px, (2, 2), 0)
    with pytest.raises(ValueError, match=r"bins must be an integer, got float: 2.5"):
        pixel_entropy(px, (2, 2), 2.5)
    with pytest.raises(ValueError, match=r"patch_grid \(0, 2\) entry must be >= 1, got 0"):
        pixel_entropy(px, (0, 2))
    with pytest.raises(ValueError, match=r"pixels must have 4 dims \(B, C, H, W\), got shape \(3, 8, 8\)"):
        pixel_entropy(px[0], (2, 2))
    # One NaN or inf pixel made the image's range NaN and every patch of it scored an entropy of 0, silently.
    for value in (float("nan"), float("inf")):
        bad = px.clone()
        bad[0, 1, 2, 3] = value
        with pytest.raises(ValueError, match=r"pixels contains 1 non-finite value\(s\); first at index \(0, 1, 2, 3\)"):
            pixel_entropy(bad, (2, 2))
