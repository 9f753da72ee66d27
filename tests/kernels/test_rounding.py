"""Largest-remainder rounding: exact integer sums, bounds, deterministic ties, drift repair, and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arr_coc import capped_simplex_projection, round_to_budget


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


def test_floor_below_lo_from_drift():
    x = torch.tensor([[63.9999999, 66.0000001]], dtype=torch.float64)
    t = round_to_budget(x, 130, 64, 400)
    assert t.tolist() == [[64, 66]]


def test_per_row_budget_tensor_and_float_integral_budget():
    x = torch.tensor([[1.5, 1.5], [2.25, 1.75]], dtype=torch.float64)
    t = round_to_budget(x, torch.tensor([3, 4]), 0, 5)
    assert t.sum(-1).tolist() == [3, 4]
    assert round_to_budget(x[:1], 3.0, 0.0, 5.0).tolist() == [[2, 1]]


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
        ((13200.5, 64, 400), r"budget must be an integer, got 13200.5"),
        ((torch.tensor([13200.5]), 64, 400), r"budget must be integer-valued, got 13200.5"),
        ((13200, 64.5, 400), r"lo must be an integer, got 64.5"),
        ((13200, 64, torch.tensor(400.25)), r"hi must be integer-valued"),
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
