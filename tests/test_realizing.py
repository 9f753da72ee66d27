"""Tests for the realizing stage: exact token counts, mean preservation, positions, padding/packing, gradients."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from arr_coc.realizing import Realizing, RealizingOutput, hilbert_order


def _reference_tokens(curve_feats: torch.Tensor, budget: int) -> torch.Tensor:
    """Brute-force float64 segment means with exact integer overlaps: (n, D) cells in curve order -> (budget, D)."""
    n = curve_feats.shape[0]
    out = torch.zeros(budget, curve_feats.shape[1], dtype=torch.float64)
    for j in range(budget):
        # In units of 1 / budget of a cell: token j covers [j n, (j + 1) n), cell c covers [c budget, (c + 1) budget).
        for c in range(n):
            overlap = min((j + 1) * n, (c + 1) * budget) - max(j * n, c * budget)
            if overlap > 0:
                out[j] += overlap / n * curve_feats[c].double()
    return out


def _patch_means(out: RealizingOutput, K: int) -> torch.Tensor:
    """(B, K, D) mean of each patch's tokens, read through patch_index."""
    B, _, D = out.tokens.shape
    sums = torch.zeros(B, K, D, dtype=torch.float64)
    counts = torch.zeros(B, K, dtype=torch.float64)
    for b in range(B):
        idx = out.patch_index[b][out.mask[b]]
        sums[b].index_add_(0, idx, out.tokens[b][out.mask[b]].double())
        counts[b].index_add_(0, idx, torch.ones(idx.shape[0], dtype=torch.float64))
    return sums / counts.unsqueeze(-1)


# ---------------------------------------------------------------------------------------------------------------- curve


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (3, 5), (20, 20), (24, 24), (7, 2)])
def test_hilbert_order_is_a_permutation(hw):
    h, w = hw
    order = hilbert_order(h, w)
    assert order.dtype == torch.int64
    assert torch.equal(order.sort().values, torch.arange(h * w))


@pytest.mark.parametrize("side", [2, 4, 8, 16])
def test_hilbert_order_steps_between_neighbours_on_power_of_two_grids(side):
    order = hilbert_order(side, side)
    r, c = order // side, order % side
    steps = (r.diff().abs() + c.diff().abs())
    assert bool((steps == 1).all()), "a Hilbert curve moves to a 4-neighbour at every step"
    assert int(order[0]) == 0


def test_hilbert_order_uses_the_smallest_enclosing_grid():
    # The cells are ranked on the smallest enclosing 2^m x 2^m grid, as documented. A grid twice as large ranks them
    # by its first quadrant, a transposed curve: still a permutation of 4-neighbour steps, but another order.
    assert hilbert_order(2, 2).tolist() == [0, 2, 3, 1]
    assert hilbert_order(4, 4).tolist() == [0, 1, 5, 4, 8, 12, 13, 9, 10, 14, 15, 11, 7, 6, 2, 3]
    assert hilbert_order(2, 3).tolist() == [0, 1, 4, 3, 5, 2]


# --------------------------------------------------------------------------------------------------------------- counts


def test_counts_match_budgets_exactly_including_one_and_above_hw():
    g = torch.Generator().manual_seed(0)
    B, K, h, w, D = 3, 6, 3, 4, 5
    n = h * w
    budgets = torch.randint(1, 3 * n, (B, K), generator=g)
    budgets[0, 0], budgets[1, 2], budgets[2, 5] = 1, n, 2 * n + 1  # budget 1, identity and interpolation
    feats = torch.randn(B, K, h, w, D, generator=g)
    out = Realizing()(feats, budgets)

    assert out.tokens.shape == (B, int(budgets.sum(1).max()), D)
    assert torch.equal(out.mask.sum(1), budgets.sum(1))
    for b in range(B):
        idx = out.patch_index[b][out.mask[b]]
        assert torch.equal(torch.bincount(idx, minlength=K), budgets[b])
        # Patch-major stream: patch indices never decrease along a row.
        assert bool((idx.diff() >= 0).all())


def test_matches_brute_force_reference():
    g = torch.Generator().manual_seed(1)
    B, K, h, w, D = 2, 3, 3, 5, 4
    n = h * w
    feats = torch.randn(B, K, h, w, D, generator=g, dtype=torch.float64)
    budgets = torch.tensor([[1, 7, 15], [16, 40, 4]])
    out = Realizing()(feats, budgets)
    order = hilbert_order(h, w)
    for b in range(B):
        curve = feats[b].reshape(K, n, D)[:, order]  # (K, n, D)
        expected = torch.cat([_reference_tokens(curve[k], int(budgets[b, k])) for k in range(K)])
        got = out.tokens[b][out.mask[b]]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------------- mean property


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    D=st.integers(1, 5),
    data=st.data(),
)
def test_mean_of_patch_tokens_equals_patch_mean(h, w, D, data):
    B, K = 2, 3
    n = h * w
    budgets = torch.tensor(
        data.draw(st.lists(st.integers(1, 3 * n + 2), min_size=B * K, max_size=B * K)), dtype=torch.int64
    ).reshape(B, K)
    seed = data.draw(st.integers(0, 2**31 - 1))
    feats = torch.randn(B, K, h, w, D, generator=torch.Generator().manual_seed(seed))
    out = Realizing()(feats, budgets)
    assert torch.equal(out.mask.sum(1), budgets.sum(1))
    torch.testing.assert_close(_patch_means(out, K), feats.double().mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)


def test_budget_one_gives_patch_mean_at_patch_centre():
    B, K, h, w, D = 2, 6, 4, 3, 2
    feats = torch.randn(B, K, h, w, D, dtype=torch.float64)
    out = Realizing(patch_grid=(2, 3))(feats, torch.ones(B, K, dtype=torch.int64))
    torch.testing.assert_close(out.tokens, feats.mean(dim=(2, 3)))
    k = torch.arange(K, dtype=torch.float64)
    centre = torch.stack([(k // 3 + 0.5) / 2, (k % 3 + 0.5) / 3], dim=-1)
    torch.testing.assert_close(out.positions, centre.expand(B, K, 2))


# ------------------------------------------------------------------------------------------------------------- identity


def test_budget_equal_to_cells_reproduces_fine_grid_in_hilbert_order():
    B, K, h, w, D = 2, 4, 5, 3, 6
    n = h * w
    feats = torch.randn(B, K, h, w, D)
    out = Realizing()(feats, torch.full((B, K), n, dtype=torch.int64))
    order = hilbert_order(h, w)
    expected = feats.reshape(B, K, n, D)[:, :, order].reshape(B, K * n, D)
    assert torch.equal(out.tokens, expected)  # one whole cell at weight 1: exact, not just close

    gh, gw = 2, 2  # default_patch_grid(4)
    k = torch.arange(K).repeat_interleave(n)
    cell = order.repeat(K)
    row = ((k // gw) * h + cell // w + 0.5) / (gh * h)
    col = ((k % gw) * w + cell % w + 0.5) / (gw * w)
    torch.testing.assert_close(out.positions, torch.stack([row, col], -1).expand(B, -1, -1), rtol=0, atol=1e-7)
    # The tokens are a permutation of the grid: each cell appears once.
    assert torch.equal(out.tokens[0].sort(0).values, feats[0].reshape(K * n, D).sort(0).values)


# ------------------------------------------------------------------------------------------------------------ positions


def test_positions_lie_inside_their_patch_rectangle():
    g = torch.Generator().manual_seed(3)
    B, K, h, w, D = 2, 12, 4, 5, 3
    gh, gw = 3, 4
    budgets = torch.randint(1, 50, (B, K), generator=g)
    out = Realizing(patch_grid=(gh, gw))(torch.randn(B, K, h, w, D, generator=g), budgets)
    pos, k = out.positions[out.mask], out.patch_index[out.mask]
    row, col = pos[:, 0], pos[:, 1]
    pr, pc = (k // gw).float(), (k % gw).float()
    assert out.positions.dtype == torch.float32
    assert bool(((row >= pr / gh) & (row <= (pr + 1) / gh)).all())
    assert bool(((col >= pc / gw) & (col <= (pc + 1) / gw)).all())
    assert bool(((pos > 0) & (pos < 1)).all())
    # Positions of a patch average to its centre, since the segments tile the patch uniformly.
    for b in range(B):
        for kk in range(K):
            sel = out.patch_index[b] == kk
            centre = torch.tensor([((kk // gw) + 0.5) / gh, ((kk % gw) + 0.5) / gw])
            torch.testing.assert_close(out.positions[b][sel].mean(0), centre, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- padding and packing


def test_padding_mask_packed_and_cu_seqlens():
    B, K, h, w, D = 3, 4, 2, 2, 3
    budgets = torch.tensor([[1, 2, 3, 4], [1, 1, 1, 1], [9, 1, 2, 1]])
    feats = torch.randn(B, K, h, w, D)
    out = Realizing()(feats, budgets)
    totals = budgets.sum(1)  # 10, 4, 13
    T = int(totals.max())
    assert out.tokens.shape == (B, T, D) and out.mask.shape == (B, T)
    assert out.positions.shape == (B, T, 2) and out.patch_index.shape == (B, T)
    for b in range(B):
        t = int(totals[b])
        assert bool(out.mask[b, :t].all()) and not bool(out.mask[b, t:].any())
        assert bool((out.tokens[b, t:] == 0).all()) and bool((out.positions[b, t:] == 0).all())
        assert bool((out.patch_index[b, t:] == -1).all()) and bool((out.patch_index[b, :t] >= 0).all())

    assert out.cu_seqlens.dtype == torch.int32
    assert out.cu_seqlens.tolist() == [0, 10, 14, 27]
    tok, pos, cu = out.packed()
    assert tok.shape == (27, D) and pos.shape == (27, 2)
    assert torch.equal(tok, out.tokens[out.mask]) and torch.equal(pos, out.positions[out.mask])
    for b in range(B):
        assert torch.equal(tok[cu[b]:cu[b + 1]], out.tokens[b, : int(totals[b])])


# ---------------------------------------------------------------------------------------------------- default preset


@pytest.mark.parametrize("uneven", [False, True])
def test_default_preset_end_to_end(uneven):
    B, K, h, w, D = 2, 200, 20, 20, 64
    budgets = torch.full((B, K), 64, dtype=torch.int64)
    budgets[0] += 2  # 400 free tokens spread as +2 on all 200 patches
    if uneven:
        budgets[1, :1] = 400  # +336
        budgets[1, 1:33] += 2  # +64
    else:
        budgets[1] += 2
    assert budgets.sum(1).tolist() == [13_200, 13_200]
    feats = torch.randn(B, K, h, w, D)
    out = Realizing()(feats, budgets)
    assert out.tokens.shape == (B, 13_200, D)
    assert bool(out.mask.all())
    assert out.cu_seqlens.tolist() == [0, 13_200, 26_400]
    assert torch.equal(torch.bincount(out.patch_index[1], minlength=K), budgets[1])
    torch.testing.assert_close(_patch_means(out, K).float(), feats.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    assert bool(torch.isfinite(out.tokens).all())


# ----------------------------------------------------------------------------------------------------------- dtypes


def test_half_precision_keeps_dtype_and_float32_positions():
    feats = torch.randn(1, 2, 3, 3, 4).to(torch.bfloat16)
    out = Realizing()(feats, torch.tensor([[2, 11]]))
    assert out.tokens.dtype == torch.bfloat16 and out.positions.dtype == torch.float32
    torch.testing.assert_close(_patch_means(out, 2).float(), feats.float().mean(dim=(2, 3)), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype, half_ulp", [(torch.bfloat16, 2 ** -8), (torch.float16, 2 ** -11)])
def test_half_precision_accumulates_in_float32(dtype, half_ulp):
    # One token pools a 24 x 24 patch: accumulated in float32 it is the true mean (in [1, 2)) rounded once to the half
    # type, within half an ulp; accumulated in the half type itself it drifts further.
    feats = (1 + torch.rand(1, 1, 24, 24, 16, generator=torch.Generator().manual_seed(0))).to(dtype)
    out = Realizing()(feats, torch.tensor([[1]]))
    want = feats.double().mean(dim=(2, 3))[0]
    assert (out.tokens[0, :1].double() - want).abs().max() <= half_ulp * (1 + 1e-3)


# ------------------------------------------------------------------------------------------------------------ gradients


def test_gradients_reach_features_and_gate():
    g = torch.Generator().manual_seed(4)
    B, K, h, w, D = 2, 4, 3, 3, 5
    feats = torch.randn(B, K, h, w, D, generator=g, requires_grad=True)
    alloc = (torch.rand(B, K, generator=g) * 10 + 1).requires_grad_()  # a continuous allocation
    gate = alloc / alloc.detach()  # straight-through: value 1, gradient of the allocation
    budgets = torch.tensor([[1, 5, 9, 20], [2, 2, 3, 4]])
    out = Realizing()(feats, budgets, gate=gate)
    plain = Realizing()(feats.detach(), budgets)
    torch.testing.assert_close(out.tokens, plain.tokens, rtol=0, atol=0)  # the gate does not change the forward
    weights = torch.randn(out.tokens.shape, generator=g)
    (out.tokens * weights).sum().backward()
    assert feats.grad is not None and bool((feats.grad != 0).all()), "every fine feature contributes"
    assert alloc.grad is not None and bool((alloc.grad != 0).all())


def test_gradcheck_tiny_float64():
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 2, 2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(2, 2, generator=g, dtype=torch.float64).add(0.5).requires_grad_()
    budgets = torch.tensor([[1, 8], [6, 3]])
    module = Realizing()
    assert torch.autograd.gradcheck(lambda f, gt: module(f, budgets, gate=gt).tokens, (feats, gate))


# ------------------------------------------------------------------------------------------------------------ bad input


def _ok():
    return torch.randn(2, 4, 3, 3, 5), torch.full((2, 4), 3, dtype=torch.int64)


@pytest.mark.parametrize(
    "case, match",
    [
        (lambda f, b: (f[0], b, None), r"features must have 5 dims .*\(4, 3, 3, 5\)"),
        (lambda f, b: (f.long(), b, None), r"features must be a floating-point tensor.*int64"),
        (lambda f, b: (f, b[0], None), r"budgets must have 2 dims .*\(4,\)"),
        (lambda f, b: (f, b.int(), None), r"budgets must be int64.*int32"),
        (lambda f, b: (f, b.double(), None), r"budgets must be int64.*float64"),
        (lambda f, b: (f, b[:, :3], None), r"budgets shape \(2, 3\) does not match .*\(2, 4\)"),
        (lambda f, b: (f, b[:1], None), r"budgets shape \(1, 4\) does not match .*\(2, 4\)"),
        (lambda f, b: (f, b.index_put((torch.tensor([1]), torch.tensor([2])), torch.tensor([0])), None),
         r"sample 1, patch 2: 0"),
        (lambda f, b: (f, b.index_put((torch.tensor([0]), torch.tensor([3])), torch.tensor([-5])), None),
         r"sample 0, patch 3: -5"),
        (lambda f, b: (f.index_put((torch.tensor([1]),), torch.tensor(float("nan"))), b, None),
         r"features contains .*non-finite.*nan"),
        (lambda f, b: (f.index_put((torch.tensor([0]),), torch.tensor(float("inf"))), b, None),
         r"features contains .*non-finite.*inf"),
        (lambda f, b: (f, b, torch.tensor([[1.0, float("nan"), 1.0, 1.0], [1.0] * 4])), r"gate contains .*nan"),
        (lambda f, b: (f, b, torch.ones(2, 3)), r"gate shape \(2, 3\) does not match .*\(2, 4\)"),
        (lambda f, b: (f, b, torch.ones(2, 4, dtype=torch.int64)), r"gate must be a floating-point.*int64"),
        (lambda f, b: (f, b.to("meta"), None), r"different devices"),
        (lambda f, b: (f, b, torch.ones(2, 4, device="meta")), r"different devices"),
    ],
)
def test_bad_input_raises_value_error(case, match):
    features, budgets, gate = case(*_ok())
    with pytest.raises(ValueError, match=match):
        Realizing()(features, budgets, gate=gate)


def test_patch_grid_mismatch_raises():
    features, budgets = _ok()
    with pytest.raises(ValueError, match=r"patch_grid \(3, 3\) does not multiply to num_patches=4"):
        Realizing(patch_grid=(3, 3))(features, budgets)
    with pytest.raises(ValueError, match=r"patch_grid must be two positive ints"):
        Realizing(patch_grid=(0, 4))
    # int() truncated (2.5, 1.6) to a (2, 1) grid and read True and "2" as 1 and 2.
    for grid in ((2.5, 1.6), (True, 2), ("2", "2")):
        msg = re.escape(f"patch_grid must be two positive ints (rows, cols), got {grid!r}")
        with pytest.raises(ValueError, match=msg):
            Realizing(patch_grid=grid)
    assert Realizing(patch_grid=[2.0, 3.0]).patch_grid == (2, 3)


def test_hilbert_order_rejects_empty_grid():
    with pytest.raises(ValueError, match=r"h=0, w=3"):
        hilbert_order(0, 3)


def test_module_has_no_state_and_caches_curve():
    module = Realizing()
    features, budgets = _ok()
    module(features, budgets)
    module(features, budgets)
    assert module.state_dict() == {} and len(module._curves) == 1
