"""Largest-remainder rounding: exact integer sums, bounds, deterministic ties, drift repair, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arr_coc import capped_simplex_projection, project_and_round, round_to_budget


def test_default_preset_exact_sum_and_bounds():
    y = torch.randn(256, 200, generator=torch.Generator().manual_seed(0)) * 60 + 66
    x = capped_simplex_projection(y, 13200.0, 64.0, 400.0)
    t = round_to_budget(x, 13200, 64, 400)
    assert t.dtype == torch.int64
    assert (t.sum(-1) == 13200).all()
    assert t.min() >= 64 and t.max() <= 400
    # Each entry moves by less than one token from its real-valued target.
    assert ((t.double() - x.double()).abs() < 1.0 + 1e-3).all()


def test_ties_go_to_lower_index():
    x = torch.full((1, 6), 10.5, dtype=torch.float64)  # sum 63, budget 63: three +1 among six equal remainders
    t = round_to_budget(x, 63, 0, 20)
    assert t.tolist() == [[11, 11, 11, 10, 10, 10]]
    # Deterministic: the same input always gives the same output.
    assert torch.equal(round_to_budget(x, 63, 0, 20), t)


def test_largest_remainders_win():
    x = torch.tensor([[1.2, 1.9, 1.5, 1.4]], dtype=torch.float64)  # sum 6.0, floors sum 4 -> two get +1
    assert round_to_budget(x, 6, 0, 5).tolist() == [[1, 2, 2, 1]]


def test_entries_at_hi_never_get_more():
    x = torch.tensor([[3.0, 2.5, 2.5]], dtype=torch.float64)  # sum 8
    t = round_to_budget(x, 8, 0, 3)
    assert t.tolist() == [[3, 3, 2]]


def test_negative_deficit_from_drift_is_repaired():
    # Float drift pushed x above the budget by 1.2 tokens: floors overshoot by 1 and the smallest remainder above
    # lo (lowest index among ties) gives one back.
    x = torch.full((1, 200), 66.0, dtype=torch.float64)
    x[0, -1] = 67.2
    t = round_to_budget(x, 13200, 64, 400)
    assert int(t.sum()) == 13200
    assert t[0, 0] == 65 and t[0, -1] == 67 and (t[0, 1:-1] == 66).all()


def test_drift_never_moves_an_entry_past_its_bound():
    # With ties on the remainder, the lowest index would win, but an entry already at its bound cannot move: the
    # unit taken back skips the entry at lo, the unit given skips the entry at hi.
    x = torch.full((1, 200), 66.0, dtype=torch.float64)
    x[0, 0], x[0, -1] = 64.0, 67.2
    t = round_to_budget(x, 13198, 64, 400)
    assert t[0, 0] == 64 and t[0, 1] == 65 and t[0, -1] == 67 and (t[0, 2:-1] == 66).all()
    x = torch.full((1, 200), 66.0, dtype=torch.float64)
    x[0, 0] = 400.0
    t = round_to_budget(x, 13535, 64, 400)  # x sums to 13534: one unit to give
    assert t[0, 0] == 400 and t[0, 1] == 67 and (t[0, 2:] == 66).all()


def test_floor_below_lo_from_drift():
    x = torch.tensor([[63.9999999, 66.0000001]], dtype=torch.float64)
    t = round_to_budget(x, 130, 64, 400)
    assert t.tolist() == [[64, 66]]


def test_per_row_budget_tensor_and_integer_dtypes():
    x = torch.tensor([[1.5, 1.5], [2.25, 1.75]], dtype=torch.float64)
    t = round_to_budget(x, torch.tensor([3, 4]), 0, 5)
    assert t.sum(-1).tolist() == [3, 4]
    # Any integer tensor dtype (widened to int64) and numpy integers are integers too.
    t32 = round_to_budget(x, torch.tensor([3, 4], dtype=torch.int32), torch.tensor(0, dtype=torch.uint8), np.int64(5))
    assert torch.equal(t32, t)


@pytest.mark.parametrize(
    "args, match",
    [
        ((3.0, 0, 5), r"budget must be an integer \(int or integer tensor\), got float: 3\.0"),
        ((3, 0.0, 5), r"lo must be an integer \(int or integer tensor\), got float: 0\.0"),
        ((3, 0, 5.0), r"hi must be an integer \(int or integer tensor\), got float: 5\.0"),
        ((torch.tensor([3.0]), 0, 5), r"budget must be an integer tensor, got dtype torch\.float32 \(value 3\.0\)"),
        ((3, torch.tensor(0.0, dtype=torch.float64), 5), r"lo must be an integer tensor, got dtype torch\.float64"),
        ((3, 0, True), r"hi must be an integer \(int or integer tensor\), got bool: True"),
        ((3, 0, torch.tensor(True)), r"hi must be an integer tensor, got dtype torch\.bool"),
    ],
)
def test_whole_floats_are_not_integers(args, match):
    # The spec requires integer lo, hi and budget: a float is refused even when it holds a whole number.
    x = torch.tensor([[1.5, 1.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        round_to_budget(x, *args)
    with pytest.raises(ValueError, match=match):
        project_and_round(x, *args)


@pytest.mark.parametrize(
    "x, budget, match",
    [
        # One entry: a gap of 13 units within the 1e-3·budget drift allowance, but rounding moves one unit at most.
        ([[13213.0]], 13200, r"x sums to 13213 at row \(0,\) but budget is 13200: the floors sum to 13213, so 13 "
                             r"unit\(s\) must go down, but largest-remainder rounding can move only 1 unit\(s\)"),
        ([[13187.0]], 13200, r"x sums to 13187 at row \(0,\) but budget is 13200.*13 unit\(s\) must go up.*only 1 "),
        ([[2198.0] * 6], 13200, r"x sums to 13188 .*floors sum to 13188, so 12 unit\(s\) must go up, but .* only 6 "
                                r"unit\(s\) \(one per entry below hi, K=6\)"),
        # The second row is the bad one; entries at hi cannot go up, so they do not count as movable.
        ([[1.5, 1.5, 0.0], [20000.0, 20000.0, 13.0]], torch.tensor([3, 40016]), r"at row \(1,\).*3 unit\(s\) must go "
                                                                               r"up, but .* only 1 unit"),
    ],
)
def test_deficit_beyond_one_unit_per_entry_is_rejected(x, budget, match):
    # Regression: these used to return a wrong sum ([[13212]], [[13188]], 13194) without an error.
    with pytest.raises(ValueError, match=match):
        round_to_budget(torch.tensor(x), budget, 0, 20000)


def test_fixup_exactly_at_capacity_is_accepted():
    # D = n_up: every entry below hi goes up one; D = -n_down: every entry above lo comes down one (gaps of 3 units
    # are within the sum check's drift allowance at this budget, so only the deficit rule decides).
    t = round_to_budget(torch.tensor([[4399.0, 4399.0, 4399.0]]), 13200, 0, 20000)
    assert t.tolist() == [[4400, 4400, 4400]]
    t = round_to_budget(torch.tensor([[4401.0, 4401.0, 4401.0]]), 13200, 0, 20000)
    assert t.tolist() == [[4400, 4400, 4400]]
    # One more unit than the entries can absorb: refused.
    with pytest.raises(ValueError, match=r"4 unit\(s\) must go up, but .* only 3"):
        round_to_budget(torch.tensor([[4399.0, 4399.0, 4398.0]]), 13200, 0, 20000)
    assert int(round_to_budget(torch.tensor([[13200.0]]), 13200, 0, 20000)) == 13200


@pytest.mark.parametrize("seed", range(4))
def test_float32_drift_of_the_default_preset_is_accepted(seed):
    # float32 projections of the K=200, B=13,200, 64..400 preset sum ~1e-3 off the budget: tiny drift, still rounded.
    y = torch.randn(512, 200, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 80 + 66
    x = capped_simplex_projection(y, 13200.0, 64.0, 400.0).float()
    assert float((x.double().sum(-1) - 13200).abs().max()) > 0  # there is drift to absorb
    t = round_to_budget(x, 13200, 64, 400)
    assert (t.sum(-1) == 13200).all() and t.min() >= 64 and t.max() <= 400
    x2, t2 = project_and_round(y.float(), 13200, 64, 400)
    assert (t2.sum(-1) == 13200).all()


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 60), lo=st.integers(0, 50), width=st.integers(0, 50), frac=st.floats(0, 1),
       seed=st.integers(0, 2**31 - 1))
def test_property_exact_and_in_bounds(k, lo, width, frac, seed):
    hi = lo + width
    b = k * lo + round(frac * k * width)
    y = torch.randn(3, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * (width + 1)
    x = capped_simplex_projection(y, float(b), float(lo), float(hi))
    for xx in (x, x.float()):
        t = round_to_budget(xx, b, lo, hi)
        assert (t.sum(-1) == b).all()
        assert (t >= lo).all() and (t <= hi).all()


@pytest.mark.parametrize(
    "args, match",
    [
        ((13200.5, 64, 400), r"budget must be an integer \(int or integer tensor\), got float: 13200.5"),
        ((torch.tensor([13200.5]), 64, 400), r"budget must be an integer tensor, got dtype torch.float32 "
                                             r"\(value 13200.5\)"),
        ((13200, 64.5, 400), r"lo must be an integer \(int or integer tensor\), got float: 64.5"),
        ((13200, 64, torch.tensor(400.25)), r"hi must be an integer tensor, got dtype torch.float32"),
        ((13200, 500, 400), r"lo > hi"),
        ((12000, 64, 400), r"infeasible budget.*12000.*12800"),
    ],
)
def test_bad_input(args, match):
    x = torch.full((1, 200), 66.0)
    with pytest.raises(ValueError, match=match):
        round_to_budget(x, *args)


def test_x_not_on_the_simplex():
    with pytest.raises(ValueError, match=r"below lo at index \(0, 1\)"):
        round_to_budget(torch.tensor([[70.0, 10.0]]), 80, 20, 100)
    with pytest.raises(ValueError, match=r"x sums to 100 at row \(0,\) but budget is 80"):
        round_to_budget(torch.tensor([[50.0, 50.0]]), 80, 20, 100)
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        round_to_budget(torch.tensor([[float("nan"), 50.0]]), 80, 20, 100)
    with pytest.raises(ValueError, match="floating-point"):
        round_to_budget(torch.tensor([[40, 40]]), 80, 20, 100)


def test_fused_kernel_output_is_checked_after_the_fact():
    # The CUDA fused op rounds inside the kernel, so its integers are checked afterwards (ops._check_rounded): a row
    # that misses the budget is named, never returned. Exercised here on CPU tensors with a hand-made wrong result.
    from arr_coc.kernels import ops

    x = torch.tensor([[1.5, 1.5], [2.25, 1.75]], dtype=torch.float64)
    b, lo, hi = torch.tensor([3, 4]), torch.tensor(0), torch.tensor(5)
    ops._check_rounded(x, torch.tensor([[2, 1], [2, 2]]), b, lo, hi)  # correct: silent
    with pytest.raises(ValueError, match=r"rounding at row \(1,\) sums to 5, not the budget 4"):
        ops._check_rounded(x, torch.tensor([[2, 1], [3, 2]]), b, lo, hi)
    with pytest.raises(ValueError, match=r"at row \(0,\).*13 unit\(s\) must go up"):
        ops._check_rounded(torch.tensor([[13187.0]]), torch.tensor([[13188]]), torch.tensor([13200]), lo, hi + 20000)


def test_sum_allowance_is_a_thousandth_of_the_budget():
    # |sum(x) - budget| <= 1e-3·budget (issue 4): 0.05 off a budget of 100 rounds, 0.5 off is refused by name.
    t = round_to_budget(torch.full((1, 5), 20.01, dtype=torch.float64), 100, 0, 50)
    assert t.tolist() == [[20] * 5]
    with pytest.raises(ValueError, match=r"x sums to 100.5 at row \(0,\) but budget is 100"):
        round_to_budget(torch.full((1, 5), 20.1, dtype=torch.float64), 100, 0, 50)


def test_bound_allowance_is_a_ten_thousandth():
    # An entry 5e-5 below lo = 1 is drift and rounds; 5e-4 below is not a projected point.
    assert round_to_budget(torch.tensor([[0.99995, 2.00005]], dtype=torch.float64), 3, 1, 5).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match=r"x is below lo at index \(0, 0\)"):
        round_to_budget(torch.tensor([[0.9995, 2.0005]], dtype=torch.float64), 3, 1, 5)
    with pytest.raises(ValueError, match=r"x is above hi at index \(0, 1\)"):
        round_to_budget(torch.tensor([[0.998, 5.002]], dtype=torch.float64), 6, 0, 5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_projection_takes_the_budget_in_float32(dtype):
    # 13,200 is not a bf16 value (13,184 / 13,248): the fused op must project onto the float32 budget, as the
    # projection op does, and round to it exactly.
    y = (torch.randn(4, 200, generator=torch.Generator().manual_seed(0)) * 80 + 66).to(dtype)
    x, t = project_and_round(y, 13200, 64, 400)
    assert torch.equal(x, capped_simplex_projection(y, 13200.0, 64.0, 400.0))
    assert (t.sum(-1) == 13200).all()
