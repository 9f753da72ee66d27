"""Librex.Alloc: constrained Thompson sampling, fairness modes, baselines, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arr_coc.bandits import (
    ConstrainedThompsonSampling,
    ConstrainedUCB1,
    EpsilonGreedyAlloc,
    GreedyAlloc,
    OracleAlloc,
    ProportionalAlloc,
    RoundRobinAlloc,
    UnconstrainedTS,
    gini,
)
from arr_coc.bandits.librex import _maxmin_knapsack

N_AGENTS, R = 8, 2


def _all(means):
    kw = {"seed": 0}
    return {
        "cts": ConstrainedThompsonSampling(N_AGENTS, R, **kw),
        "cts_prop": ConstrainedThompsonSampling(N_AGENTS, R, "proportional", **kw),
        "cts_maxmin": ConstrainedThompsonSampling(N_AGENTS, R, "maxmin", **kw),
        "ucb": ConstrainedUCB1(N_AGENTS, R, **kw),
        "uts": UnconstrainedTS(N_AGENTS, R, **kw),
        "eps": EpsilonGreedyAlloc(N_AGENTS, R, 0.1, **kw),
        "rr": RoundRobinAlloc(N_AGENTS, R, **kw),
        "prop": ProportionalAlloc(N_AGENTS, R, **kw),
        "greedy": GreedyAlloc(N_AGENTS, R, **kw),
        "oracle": OracleAlloc(N_AGENTS, R, means, **kw),
    }


def _simulate(pol, means, rounds, rng, tight=0.3):
    total = 0.0
    for _ in range(rounds):
        req = rng.uniform(0.2, 1.0, (N_AGENTS, R))
        budget = np.full(R, tight * N_AGENTS * 0.6)
        x = pol.allocate(req, budget).numpy().astype(bool)
        assert np.all(req[x].sum(0) <= budget + 1e-9)
        agents = np.nonzero(x)[0]
        if agents.size:
            r = (rng.random(agents.size) < means[agents]).astype(float)
            pol.update(agents, r)
            total += float(means[agents].sum())
    return total


def test_every_policy_respects_the_budget():
    means = np.linspace(0.1, 0.9, N_AGENTS)
    for name, pol in _all(means).items():
        _simulate(pol, means, 15, np.random.default_rng(1))
        m = pol.fairness_metrics()
        assert set(m) == {"gini", "variance", "min_max_ratio", "reward_gini"}, name
        assert 0.0 <= m["gini"] <= 1.0


def test_constrained_ts_beats_random_order_and_approaches_oracle():
    rng_means = np.random.default_rng(0)
    ratios = []
    for seed in range(2):
        means = rng_means.uniform(0.05, 0.95, N_AGENTS)
        cts = ConstrainedThompsonSampling(N_AGENTS, R, seed=seed)
        orc = OracleAlloc(N_AGENTS, R, means, seed=seed)
        got = _simulate(cts, means, 60, np.random.default_rng(seed))
        best = _simulate(orc, means, 60, np.random.default_rng(seed))
        ratios.append(got / best)
    assert np.mean(ratios) > 0.85, ratios


def test_fairness_modes_reduce_gini():
    means = np.array([0.9, 0.85, 0.8, 0.3, 0.25, 0.2, 0.15, 0.1])
    gin = {}
    for mode in ("none", "proportional", "maxmin"):
        g = []
        for seed in range(2):
            pol = ConstrainedThompsonSampling(N_AGENTS, R, mode, seed=seed)
            _simulate(pol, means, 40, np.random.default_rng(seed))
            g.append(pol.fairness_metrics()["gini"])
        gin[mode] = np.mean(g)
    assert gin["proportional"] < 0.8 * gin["none"], gin
    assert gin["maxmin"] < 0.8 * gin["none"], gin


def test_maxmin_lifts_the_floor():
    theta = np.array([0.9, 0.8, 0.1])
    past = np.array([5.0, 5.0, 0.0])
    req = np.ones((3, 1))
    take = _maxmin_knapsack(theta, past, req, np.array([1.0]))
    assert take.tolist() == [False, False, True]  # only serving agent 2 raises the minimum
    take = _maxmin_knapsack(theta, past, req, np.array([2.0]))
    assert take.tolist() == [True, False, True]  # the second unit goes to the most valuable agent
    # an agent that can never fit must not pin the floor at its zero past utility
    req3 = np.array([[1.0], [1.0], [5.0]])
    take = _maxmin_knapsack(np.array([0.5, 0.4, 0.9]), np.array([3.0, 1.0, 0.0]), req3, np.array([1.0]))
    assert take.tolist() == [False, True, False]


def test_round_robin_cycles():
    pol = RoundRobinAlloc(4, 1)
    served = [np.nonzero(pol.allocate(np.ones((4, 1)), [1.0]).numpy())[0][0] for _ in range(6)]
    assert served == [0, 1, 2, 3, 0, 1]


def test_gini_values():
    assert gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert gini([0, 0]) == 0.0


def test_save_load(tmp_path):
    pol = ConstrainedThompsonSampling(N_AGENTS, R, "proportional", seed=3, fairness_strength=0.5)
    _simulate(pol, np.linspace(0.1, 0.9, N_AGENTS), 10, np.random.default_rng(0))
    pol.save(tmp_path / "c.safetensors")
    back = ConstrainedThompsonSampling.load(tmp_path / "c.safetensors")
    assert back.fairness == "proportional" and back.fairness_strength == 0.5
    for k, v in pol.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    orc = OracleAlloc(3, 1, [0.1, 0.2, 0.3])
    orc.save(tmp_path / "o.safetensors")
    assert np.allclose(OracleAlloc.load(tmp_path / "o.safetensors").true_means, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="not a ConstrainedUCB1"):
        ConstrainedUCB1.load(tmp_path / "c.safetensors")


def test_validation_errors():
    with pytest.raises(ValueError, match="'fair'"):
        ConstrainedThompsonSampling(3, 1, fairness="fair")
    pol = ConstrainedThompsonSampling(3, 2)
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        pol.allocate(np.ones((3, 1)), [1.0, 1.0])
    with pytest.raises(ValueError, match="non-finite"):
        pol.allocate(np.array([[1.0, np.nan]] * 3), [1.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        pol.allocate(np.ones((3, 2)), [1.0, -1.0])
    with pytest.raises(ValueError, match="out of range"):
        pol.update(3, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pol.update(0, 2.0)
    with pytest.raises(ValueError, match="integer"):
        pol.update(0.5, 1.0)
    g = ConstrainedThompsonSampling(3, 1, prior="gaussian")
    g.update(np.array([0, 1]), np.array([5.0, -2.0]))  # unbounded rewards are fine for the Gaussian prior
    assert g.posterior_mean()[0] > g.posterior_mean()[1]
