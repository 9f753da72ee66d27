"""Scalar constructor arguments across arr_coc.bandits: bools are not ints, non-numbers give ValueError naming both."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from arr_coc.bandits import (
    UCB1,
    ConstrainedThompsonSampling,
    ConstrainedUCB1,
    Discount,
    EpsilonGreedy,
    EpsilonGreedyAlloc,
    HybridLinUCB,
    LinTS,
    LinUCB,
    NeuralLinear,
    PageHinkley,
    SlidingWindow,
    Softmax,
    ThompsonSampling,
    fit_reward_model,
    ips,
    knapsack_dp,
    knapsack_greedy,
    max_min_fair,
    multidim_knapsack,
)
from arr_coc.bandits._validate import _check_int, _check_real

_R = torch.rand(10, dtype=torch.float64)
_A = torch.zeros(10, dtype=torch.long)
_P = torch.full((10,), 0.5, dtype=torch.float64)
_PT = torch.full((10, 2), 0.5, dtype=torch.float64)
_X = torch.randn(10, 2, dtype=torch.float64)

# (argument name in the message, offending value, call)
CASES = [
    ("n_mc", True, lambda: LinTS(3, 4, n_mc=True)),
    ("n_arms", True, lambda: LinUCB(True, 4)),
    ("dim", False, lambda: LinUCB(3, False)),
    ("dim", 2.0, lambda: LinUCB(3, 2.0)),
    ("shared_dim", True, lambda: HybridLinUCB(3, 2, True)),
    ("n_mc", True, lambda: ThompsonSampling(3, n_mc=True)),
    ("prior_mean", "x", lambda: ThompsonSampling(3, "gaussian", prior_mean="x")),
    ("alpha0", True, lambda: ThompsonSampling(3, alpha0=True)),
    ("n_arms", True, lambda: UCB1(True)),
    ("c", "x", lambda: UCB1(3, c="x")),
    ("epsilon", "x", lambda: EpsilonGreedy(3, "x")),
    ("epsilon", True, lambda: EpsilonGreedy(3, True)),
    ("initial_value", None, lambda: EpsilonGreedy(3, initial_value=None)),
    ("temperature", True, lambda: Softmax(3, True)),
    ("buffer_size", True, lambda: NeuralLinear(3, 4, buffer_size=True)),
    ("n_mc", True, lambda: NeuralLinear(3, 4, n_mc=True)),
    ("seed", True, lambda: NeuralLinear(3, 4, seed=True)),
    ("hidden_sizes", (True,), lambda: NeuralLinear(3, 4, hidden_sizes=(True,))),
    ("hidden_sizes", 8, lambda: NeuralLinear(3, 4, hidden_sizes=8)),
    ("SlidingWindow.size", True, lambda: SlidingWindow(True)),
    ("Discount.gamma", True, lambda: Discount(True)),
    ("Discount.gamma", "x", lambda: Discount("x")),
    ("PageHinkley.delta", "x", lambda: PageHinkley(delta="x")),
    ("PageHinkley.threshold", None, lambda: PageHinkley(threshold=None)),
    ("PageHinkley.min_samples", True, lambda: PageHinkley(min_samples=True)),
    ("n_agents", True, lambda: ConstrainedThompsonSampling(True, 2)),
    ("n_resources", 2.0, lambda: ConstrainedThompsonSampling(3, 2.0)),
    ("alpha0", True, lambda: ConstrainedThompsonSampling(3, 1, alpha0=True)),
    ("prior_mean", "x", lambda: ConstrainedThompsonSampling(3, 1, prior_mean="x")),
    ("seed", True, lambda: ConstrainedThompsonSampling(3, 1, seed=True)),
    ("fairness_strength", "x", lambda: ConstrainedThompsonSampling(3, 1, "proportional", fairness_strength="x")),
    ("c", "x", lambda: ConstrainedUCB1(3, 1, c="x")),
    ("epsilon", "x", lambda: EpsilonGreedyAlloc(3, 1, "x")),
    ("divisible", 1, lambda: ConstrainedThompsonSampling(3, 1).allocate(np.ones((3, 1)), [1.0], divisible=1)),
    ("capacity", True, lambda: max_min_fair(True, [1.0, 2.0])),
    ("capacity", True, lambda: knapsack_dp([1.0], [1.0], True)),
    ("capacity", "x", lambda: knapsack_greedy([1.0], [1.0], "x")),
    ("time_limit", "x", lambda: multidim_knapsack([1.0], [[1.0]], [1.0], time_limit="x")),
    ("alpha", "x", lambda: ips(_R, _A, _P, _PT, alpha="x")),
    ("chunk", True, lambda: ips(_R, _A, _P, _PT, chunk=True)),
    ("n_boot", True, lambda: ips(_R, _A, _P, _PT, n_boot=True)),
    ("n_folds", True, lambda: fit_reward_model(_X, _A, _R, 2, n_folds=True)),
    ("lam", True, lambda: fit_reward_model(_X, _A, _R, 2, lam=True)),
    ("n_arms", True, lambda: fit_reward_model(_X, _A, _R, True)),
]


@pytest.mark.parametrize("name,value,call", CASES, ids=[f"{n}={v!r}" for n, v, _ in CASES])
def test_bad_scalar_arguments_raise_value_error_naming_them(name, value, call):
    with pytest.raises(ValueError, match=re.escape(name) + r"\b.*" + re.escape(repr(value))):
        call()


def test_numpy_scalars_are_accepted_and_normalised():
    assert SlidingWindow(np.int64(4)).size == 4 and type(SlidingWindow(np.int64(4)).size) is int
    assert type(PageHinkley(delta=np.float32(0.5)).delta) is float
    assert LinTS(np.int64(3), np.int32(2), n_mc=np.int64(8)).n_mc == 8
    assert ConstrainedThompsonSampling(np.int64(3), 1, seed=np.int64(5)).seed == 5


def test_check_helpers_bounds():
    assert _check_int("k", 0, min_value=0) == 0
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        _check_int("k", 0)
    assert _check_real("p", 1.0, low=0.0, high=1.0) == 1.0
    with pytest.raises(ValueError, match=r"p must be a finite number in \(0, 1\), got 1.0"):
        _check_real("p", 1.0, low=0.0, high=1.0, low_open=True, high_open=True)
    with pytest.raises(ValueError, match="nan"):
        _check_real("p", float("nan"))
    with pytest.raises(ValueError, match="inf"):
        _check_real("p", float("inf"), low=0.0)


def test_check_real_message_for_each_kind_of_bound():
    from arr_coc.bandits._validate import _check_positive, _check_seed

    for kw, what, value in ((dict(high=1.0), "<= 1", 2.0), (dict(high=1.0, high_open=True), "< 1", 1.0),
                            (dict(low=0.0), ">= 0", -1.0), (dict(low=0.0, low_open=True), "> 0", 0.0),
                            (dict(low=0.0, high=1.0), "in [0, 1]", 1.5), ({}, "", float("nan"))):
        message = f"p must be a finite number{' ' + what if what else ''}, got {value!r}"
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            _check_real("p", value, **kw)
    assert _check_positive("c", 0.0, allow_zero=True) == 0.0
    with pytest.raises(ValueError, match="c must be a finite number > 0, got 0.0"):
        _check_positive("c", 0.0)
    assert _check_seed("seed", None) is None and _check_seed("seed", 0) == 0
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        _check_seed("seed", -1)
