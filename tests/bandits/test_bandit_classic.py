"""Classic allocation utilities against brute force and their documented guarantees."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arr_coc.bandits import knapsack_dp, knapsack_greedy, max_min_fair, multidim_knapsack
from arr_coc.bandits.classic import _fit_fractions, _solve_milp


def _brute(values, req, budget):
    """Best value over all 2^n subsets (req: (n, R))."""
    n = len(values)
    best = 0.0
    for mask in itertools.product([0, 1], repeat=n):
        m = np.array(mask, dtype=bool)
        if np.all(req[m].sum(0) <= budget + 1e-9):
            best = max(best, float(np.asarray(values)[m].sum()))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 20), st.integers(0, 12)), min_size=1, max_size=9), st.integers(0, 40))
def test_knapsack_dp_equals_brute_force(items, cap):
    v = np.array([i[0] for i in items], dtype=float)
    w = np.array([i[1] for i in items], dtype=float)
    take, best = knapsack_dp(v, w, cap)
    assert best == pytest.approx(_brute(v, w[:, None], np.array([cap])))
    assert float(w[take.numpy()].sum()) <= cap
    assert float(v[take.numpy()].sum()) == pytest.approx(best)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0.01, 10)), min_size=1, max_size=9), st.floats(0, 30))
def test_knapsack_greedy_half_approximation(items, cap):
    v = np.array([i[0] for i in items])
    w = np.array([i[1] for i in items])
    take, val = knapsack_greedy(v, w, cap)
    opt = _brute(v, w[:, None], np.array([cap]))
    assert float(w[take.numpy()].sum()) <= cap + 1e-9
    assert val >= 0.5 * opt - 1e-9
    assert val <= opt + 1e-9


def test_knapsack_greedy_bound_is_tight_without_safeguard_case():
    # density greedy alone would take only the tiny item (value 2); the safeguard takes the big one
    take, val = knapsack_greedy([2.0, 100.0], [1.0, 100.0], 100.0)
    assert val == 100.0 and take.tolist() == [False, True]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_multidim_knapsack_equals_brute_force(n, r, seed):
    rng = np.random.default_rng(seed)
    v = rng.uniform(-0.2, 1.0, n)
    req = rng.uniform(0, 1, (n, r))
    budget = rng.uniform(0.2, 0.5 * n, r)
    take = multidim_knapsack(v, req, budget).numpy()
    assert np.all(req[take].sum(0) <= budget + 1e-7)
    assert float(v[take].sum()) == pytest.approx(_brute(v, req, budget), abs=1e-7)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0.1, 5)), min_size=1, max_size=12), st.floats(0, 60))
def test_max_min_fair_properties(users, cap):
    d = np.array([u[0] for u in users])
    w = np.array([u[1] for u in users])
    x = max_min_fair(cap, d, w).numpy()
    assert np.all(x >= -1e-12) and np.all(x <= d + 1e-9)
    assert x.sum() == pytest.approx(min(cap, d.sum()), abs=1e-7)
    # water level: every unsatisfied user sits at the same level L = x_i / w_i, at least that of anyone satisfied
    unsat = x < d - 1e-9
    if unsat.any():
        lv = x[unsat] / w[unsat]
        assert np.allclose(lv, lv[0], atol=1e-7)
        assert np.all(x[~unsat] / w[~unsat] <= lv[0] + 1e-7)


def test_max_min_fair_example():
    # classic example: capacity 10 over demands (2, 2.6, 4, 5) -> (2, 2.6, 2.7, 2.7)
    x = max_min_fair(10.0, [2.0, 2.6, 4.0, 5.0])
    assert torch.allclose(x, torch.tensor([2.0, 2.6, 2.7, 2.7], dtype=torch.float64))


def test_classic_validation():
    with pytest.raises(ValueError, match="integer weights"):
        knapsack_dp([1.0], [1.5], 3)
    with pytest.raises(ValueError, match="capacity"):
        knapsack_dp([1.0], [1.0], -1)
    with pytest.raises(ValueError, match="non-finite"):
        knapsack_greedy([float("nan")], [1.0], 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        multidim_knapsack([1.0], [[-1.0]], [1.0])
    with pytest.raises(ValueError, match="resources"):
        multidim_knapsack([1.0], [[1.0, 1.0]], [1.0])
    with pytest.raises(ValueError, match="weights must be > 0"):
        max_min_fair(1.0, [1.0], [0.0])
    with pytest.raises(ValueError, match="capacity"):
        max_min_fair(float("inf"), [1.0])


def test_max_min_fair_capacity_equal_to_total_demand_serves_everyone():
    assert max_min_fair(4.0, [1.0, 3.0]).tolist() == [1.0, 3.0]
    assert max_min_fair(6.0, [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]).tolist() == [1.0, 2.0, 3.0]


def test_knapsack_ties_and_exact_fits():
    # knapsack_dp: equal-value packings go to the one found first (the earlier item)
    take, best = knapsack_dp([1.0, 1.0], [1.0, 1.0], 1)
    assert take.tolist() == [True, False] and best == 1.0
    # knapsack_greedy: an item that fills the capacity exactly is taken
    take, val = knapsack_greedy([1.0, 1.0], [1.0, 1.0], 2.0)
    assert take.tolist() == [True, True] and val == 2.0
    # multidim_knapsack: requests that fit up to the float rounding of their sum are served (0.1 + 0.2 > 0.3)
    assert multidim_knapsack([1.0, 1.0], [[0.1], [0.2]], [0.3]).tolist() == [True, True]


def test_solver_tolerance_repair_drops_the_least_valuable_item():
    """HiGHS accepts both items (an overrun of 1e-7, inside its tolerance); the exact check must drop the cheaper."""
    req, b = np.array([[0.5], [0.5]]), np.array([1 - 1e-7])
    assert _solve_milp(np.array([1.0, 2.0]), req, b).tolist() == [False, True]
    assert _solve_milp(np.array([2.0, 1.0]), req, b).tolist() == [True, False]


def test_fit_fractions_scales_by_the_most_overrun_resource():
    x = _fit_fractions(np.array([1.0, 1.0]), np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([0.5, 4.0]))
    assert x.tolist() == [0.5, 0.5]


def test_multidim_knapsack_shape_mismatch_and_forced_blocked_item_are_named():
    with pytest.raises(ValueError, match="requests has 3 rows but values has 2 items"):
        multidim_knapsack([1.0, 1.0], [[1.0]] * 3, [1.0])
    with pytest.raises(RuntimeError, match="item 0 is forced but needs a resource whose budget is 0"):
        _solve_milp(np.array([1.0]), np.array([[1.0]]), np.array([0.0]), forced=np.array([True]))
    # the exact budget check after the solver keeps forced items, dropping an unforced one even if it is worth more
    req, b = np.array([[0.5], [0.5]]), np.array([1 - 1e-7])
    assert _solve_milp(np.array([1.0, 2.0]), req, b, forced=np.array([True, False])).tolist() == [True, False]
