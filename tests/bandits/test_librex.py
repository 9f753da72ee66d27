"""Librex.Alloc: constrained Thompson sampling, fairness modes, baselines, persistence."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

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
from arr_coc.bandits.classic import _solve_milp, multidim_knapsack
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


def _brute_maxmin(theta, past, req, b):
    """Lexicographic max-min by enumeration: the best floor over feasible 0/1 allocations, then the best ``Σθx`` among
    allocations attaining it. The floor runs over agents that are servable (θ > 0, request fits the budget alone)."""
    n = theta.shape[0]
    servable = np.all(req <= b + 1e-12, axis=1) & (theta > 0)
    feasible = [np.array(m, dtype=bool) for m in itertools.product([0, 1], repeat=n)
                if np.all(req[np.array(m, dtype=bool)].sum(0) <= b + 1e-9)]
    if not servable.any():
        return None, max(float(theta[x].sum()) for x in feasible)
    floors = [float((past + theta * x)[servable].min()) for x in feasible]
    z = max(floors)
    value = max(float(theta[x].sum()) for x, f in zip(feasible, floors) if f >= z - 1e-9)
    return z, value


def test_maxmin_matches_brute_force_on_random_instances():
    rng = np.random.default_rng(2024)
    for trial in range(150):
        n, r = int(rng.integers(2, 7)), int(rng.integers(1, 4))
        theta = rng.uniform(0.0, 1.0, n)
        theta[rng.random(n) < 0.15] = 0.0  # agents with nothing to gain are outside the floor
        past = rng.integers(0, 3, n).astype(float) if trial % 2 else rng.uniform(0.0, 2.0, n)  # ties, and none
        req = rng.uniform(0.1, 1.0, (n, r))
        b = rng.uniform(0.3, 0.6, r) * req.sum(0)  # some requests do not fit alone
        take = _maxmin_knapsack(theta, past, req, b)
        assert np.all(req[take].sum(0) <= b + 1e-9), trial
        z, value = _brute_maxmin(theta, past, req, b)
        servable = np.all(req <= b + 1e-12, axis=1) & (theta > 0)
        if z is not None:
            assert (past + theta * take)[servable].min() == pytest.approx(z, abs=1e-9), trial
        assert theta[take].sum() == pytest.approx(value, abs=1e-9), trial


def test_fairness_metrics_values_on_a_hand_computed_case():
    # The oracle (true means 0.9 > 0.5 > 0.1, unit requests) serves agent 0 first; a round where agent 0's request
    # cannot fit serves 1 and 2. Rounds: {0,1}, {0}, {0}, {1,2}, {0} -> counts (4, 2, 1).
    pol = OracleAlloc(3, 1, [0.9, 0.5, 0.1])
    assert np.isnan(pol.fairness_metrics()["min_max_ratio"])
    ones = np.ones((3, 1))
    served = []
    for req, b in ((ones, 2.0), (ones, 1.0), (ones, 1.0), (np.array([[5.0], [1.0], [1.0]]), 2.0), (ones, 1.0)):
        served.append(np.nonzero(pol.allocate(req, [b]).numpy())[0].tolist())
    assert served == [[0, 1], [0], [0], [1, 2], [0]]
    pol.update(np.array([0, 0, 0, 0, 1, 1, 2]), np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]))  # rewards (4, 1, 0)
    m = pol.fairness_metrics()
    # Gini = Σ_ij |c_i - c_j| / (2 n² mean): counts (4, 2, 1) -> 12 / 42; rewards (4, 1, 0) -> 16 / 30.
    assert m["gini"] == pytest.approx(2 / 7)
    assert m["variance"] == pytest.approx(14 / 9)  # population variance around the mean 7/3
    assert m["min_max_ratio"] == pytest.approx(1 / 4)
    assert m["reward_gini"] == pytest.approx(8 / 15)


def test_divisible_solves_the_lp_relaxation():
    # fractional knapsack: densities 0.45, 0.5, 0.2 -> agent 1 in full, then 0.5 / 2 of agent 0's request
    x = _solve_milp(np.array([0.9, 0.5, 0.4]), np.array([[2.0], [1.0], [2.0]]), np.array([2.5]), divisible=True)
    assert x.tolist() == pytest.approx([0.75, 1.0, 0.0])
    orc = OracleAlloc(3, 1, [0.9, 0.5, 0.4])
    x = orc.allocate(np.array([[2.0], [1.0], [2.0]]), [2.5], divisible=True)
    assert x.dtype == torch.float64 and x.tolist() == pytest.approx([0.75, 1.0, 0.0])
    assert orc.alloc_counts.tolist() == pytest.approx([0.75, 1.0, 0.0])


def test_divisible_maxmin_splits_evenly():
    # two identical agents and room for one: 0/1 max-min must pick one, the divisible version gives each half
    req, b = np.ones((2, 1)), np.array([1.0])
    assert _maxmin_knapsack(np.array([1.0, 1.0]), np.zeros(2), req, b).sum() == 1
    assert _maxmin_knapsack(np.array([1.0, 1.0]), np.zeros(2), req, b, divisible=True).tolist() == pytest.approx(
        [0.5, 0.5])
    # lift agent 2 (past 0) fully first, then the leftover half unit goes to the most valuable agent
    x = _maxmin_knapsack(np.array([0.9, 0.8, 0.1]), np.array([5.0, 5.0, 0.0]), np.ones((3, 1)), np.array([1.5]),
                         divisible=True)
    assert x.tolist() == pytest.approx([0.5, 0.0, 1.0])
    # an agent whose request exceeds the budget can still be lifted in part
    x = _maxmin_knapsack(np.array([0.5, 0.5]), np.array([1.0, 0.0]), np.array([[1.0], [4.0]]), np.array([2.0]),
                         divisible=True)
    assert x.tolist() == pytest.approx([0.0, 0.5])


@pytest.mark.parametrize("fairness", ["none", "proportional", "maxmin"])
def test_divisible_allocations_respect_budget_and_dominate_0_1(fairness):
    rng = np.random.default_rng(7)
    frac = ConstrainedThompsonSampling(N_AGENTS, R, fairness, seed=11)
    whole = ConstrainedThompsonSampling(N_AGENTS, R, fairness, seed=11)
    for t in range(12):
        req = rng.uniform(0.2, 1.0, (N_AGENTS, R))
        budget = rng.uniform(1.0, 3.0, R)
        x = frac.allocate(req, budget, divisible=True).numpy()
        assert np.all((x >= 0) & (x <= 1)) and np.all(req.T @ x <= budget * (1 + 1e-12))
        if t == 0 and fairness == "none":
            # both draw the same θ (same seed, prior-only posterior): the LP value bounds the 0/1 value from above
            theta = np.random.default_rng(11).beta(np.ones(N_AGENTS), np.ones(N_AGENTS))
            y = whole.allocate(req, budget).numpy()
            assert theta @ x >= theta @ y - 1e-9
            assert theta @ x == pytest.approx(-linprog(-theta, A_ub=req.T, b_ub=budget, bounds=(0, 1)).fun)
        served = np.nonzero(x)[0]
        frac.update(served, (rng.random(served.size) < 0.5).astype(float))
    assert np.any((frac.alloc_counts % 1) > 1e-6)  # strict fractions were granted and accumulate in the counts


def test_divisible_is_rejected_by_sequential_baselines():
    for pol in (RoundRobinAlloc(3, 1), GreedyAlloc(3, 1), UnconstrainedTS(3, 1), ProportionalAlloc(3, 1),
                EpsilonGreedyAlloc(3, 1)):
        with pytest.raises(ValueError, match="all-or-nothing"):
            pol.allocate(np.ones((3, 1)), [1.0], divisible=True)
    assert ConstrainedUCB1(3, 1).allocate(np.ones((3, 1)), [1.5], divisible=True).sum() == pytest.approx(1.5)


def _fits(x, req, b):
    x = np.asarray(x, dtype=bool)
    return np.all(req[x].sum(0) <= b + x.sum() * np.finfo(float).eps * req[x].sum(0))


def test_knapsack_holds_the_budget_in_small_units():
    """The solver's absolute tolerance (~1e-6) must not let requests in small units overrun the budget."""
    req, b = np.full((3, 1), 3e-7), np.array([5e-7])  # room for one
    assert int(multidim_knapsack([1.0, 1.0, 1.0], req, b).sum()) == 1
    assert int(ConstrainedThompsonSampling(3, 1, seed=0).allocate(req, b).sum()) == 1
    assert int(ConstrainedThompsonSampling(3, 1, "maxmin", seed=0).allocate(req, b).sum()) == 1
    assert not _solve_milp(np.ones(2), np.array([[0.5], [0.5]]), np.array([1 - 1e-7])).all()
    rng = np.random.default_rng(0)
    for _ in range(100):  # budgets just below some subset's use: the case the tolerance used to admit
        req = rng.uniform(0.1, 1.0, (6, 2))
        b = req[rng.random(6) < 0.5].sum(0) - rng.uniform(1e-9, 5e-7, 2)
        if np.any(b <= 0):
            continue
        x = multidim_knapsack(rng.uniform(0.5, 1.0, 6), req, b).numpy()
        assert _fits(x, req, b)


def test_knapsack_zero_budget_resource_blocks_items_that_need_it():
    req = np.array([[1.0, 0.0], [1.0, 1e-9], [1.0, 0.0]])
    x = multidim_knapsack([1.0, 5.0, 1.0], req, [2.0, 0.0]).numpy()
    assert x.tolist() == [True, False, True]
    frac = _solve_milp(np.array([1.0, 5.0, 1.0]), req, np.array([2.0, 0.0]), divisible=True)
    assert frac[1] == 0.0 and np.allclose(frac[[0, 2]], 1.0)


def test_maxmin_with_near_tied_pasts_is_feasible_and_optimal():
    """HiGHS's reported floor can exceed what its own x attains; stage 2 must not be made infeasible by that."""
    theta = np.array([0.728, 0.260, 0.494, 0.743])
    past = np.array([1.00000035, 1.00000132, 1.00000048, 1.00000085])
    req, b = np.ones((4, 1)), np.array([2.0])
    x = _maxmin_knapsack(theta, past, req, b)
    assert x.sum() <= 2
    best = max(min(past + theta * np.isin(np.arange(4), s)) for s in itertools.combinations(range(4), 2))
    assert min(past + theta * x) == pytest.approx(best, abs=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(100):  # random pasts tied to within 2e-6 (42 of 500 such instances used to raise)
        theta, past = rng.uniform(0.1, 1.0, 5), 1.0 + rng.uniform(0.0, 2e-6, 5)
        x = _maxmin_knapsack(theta, past, np.ones((5, 1)), np.array([2.0]))
        best = max(min(past + theta * np.isin(np.arange(5), s)) for s in itertools.combinations(range(5), 2))
        assert x.sum() <= 2 and min(past + theta * x) >= best - 1e-12


def test_divisible_maxmin_ignores_agents_that_need_an_empty_resource():
    """Agent 0 needs resource 1, whose budget is 0: it must not pin the floor (and turn fairness off)."""
    theta, past = np.array([0.5, 0.4, 0.6]), np.array([0.0, 1.0, 3.0])
    req, b = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]), np.array([1.0, 0.0])
    x = _maxmin_knapsack(theta, past, req, b, divisible=True)
    assert x[0] == 0.0 and x[1] == pytest.approx(1.0) and x[2] == pytest.approx(0.0, abs=1e-9)


def test_round_robin_resumes_its_cycle(tmp_path):
    pol = RoundRobinAlloc(4, 1)
    for _ in range(2):
        pol.allocate(np.ones((4, 1)), [1.0])
    pol.save(tmp_path / "rr.safetensors")
    back = RoundRobinAlloc.load(tmp_path / "rr.safetensors")
    for _ in range(3):
        assert torch.equal(pol.allocate(np.ones((4, 1)), [1.0]), back.allocate(np.ones((4, 1)), [1.0]))
    state = pol.state_dict()
    state.pop("pointer")
    with pytest.raises(ValueError, match="pointer"):
        RoundRobinAlloc(4, 1).load_state_dict(state)


def test_sequential_fill_is_exact_in_any_units_and_accepts_float_rounding():
    """The greedy baselines hold the budget in small units, yet serve requests that fit up to float rounding."""
    assert GreedyAlloc(3, 1).allocate(np.full((3, 1), 3e-7), [5e-7]).sum() == 1
    assert GreedyAlloc(3, 1).allocate(np.full((3, 1), 3e-7), [6e-7]).sum() == 2
    assert GreedyAlloc(2, 1).allocate([[0.1], [0.2]], [0.3]).tolist() == [1, 1]  # 0.1 + 0.2 > 0.3 in floats


def test_load_state_dict_refuses_unknown_keys():
    """A RoundRobinAlloc state (its extra ``pointer``) or a misspelt key used to load silently into another policy."""
    rr = RoundRobinAlloc(4, 1)
    rr.allocate(np.ones((4, 1)), [1.0])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pointer'\] for GreedyAlloc"):
        GreedyAlloc(4, 1).load_state_dict(rr.state_dict())
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pull'\]"):
        GreedyAlloc(4, 1).load_state_dict({**GreedyAlloc(4, 1).state_dict(), "pull": torch.ones(4)})
    RoundRobinAlloc(4, 1).load_state_dict(rr.state_dict())  # its own state still loads


def test_posterior_mean_and_draws_follow_the_conjugate_updates():
    """Beta: (α0 + Σr) / (α0 + β0 + n); Gaussian: precision-weighted prior mean and data, draws of sd 1/sqrt(prec)."""
    pol = ConstrainedThompsonSampling(2, 1, alpha0=2.0, beta0=3.0, seed=0)
    pol.update(np.array([0, 0, 0]), np.array([1.0, 0.0, 1.0]))
    assert pol.posterior_mean().tolist() == pytest.approx([0.5, 0.4])
    g = ConstrainedThompsonSampling(2, 1, prior="gaussian", prior_mean=1.0, prior_var=2.0, noise_var=0.5, seed=0)
    g.update(0, 3.0)
    assert g.posterior_mean().tolist() == pytest.approx([2.6, 1.0])  # (1/2 + 3/0.5) / (1/2 + 1/0.5); prior mean
    # Draws: 50 successes in 50 pulls -> Beta(51, 1), mean 51/52; Gaussian with 99 pulls -> sd 1/sqrt(1 + 99) = 0.1.
    b = ConstrainedThompsonSampling(1, 1, seed=1)
    b.update(np.zeros(50, dtype=np.int64), np.ones(50))
    assert np.mean([b._sample()[0] for _ in range(2000)]) == pytest.approx(51 / 52, abs=0.01)
    g = ConstrainedThompsonSampling(1, 1, prior="gaussian", seed=1)
    g.update(np.zeros(99, dtype=np.int64), np.zeros(99))
    assert np.std([g._sample()[0] for _ in range(2000)]) == pytest.approx(0.1, rel=0.1)


def _trained(pol):
    """Agent 0: 50 failures, agent 1: 50 successes, agent 2: unobserved (posterior means 1/52, 51/52, 1/2)."""
    pol.update(np.repeat([0, 1], 50), np.repeat([0.0, 1.0], 50))
    return pol


def test_sequential_baselines_rank_agents_as_documented():
    ones = np.ones((3, 1))
    assert _trained(GreedyAlloc(3, 1)).allocate(ones, [1.0]).tolist() == [0, 1, 0]  # highest posterior mean first
    eps0 = _trained(EpsilonGreedyAlloc(3, 1, 0.0, seed=0))  # ε = 0: always the knapsack on the posterior means
    assert all(eps0.allocate(ones, [1.0]).tolist() == [0, 1, 0] for _ in range(20))
    prop = _trained(ProportionalAlloc(3, 1, seed=0))  # first served with probability ∝ posterior mean
    served = np.array([prop.allocate(ones, [1.0]).numpy() for _ in range(300)]).sum(0) / 300
    assert served.tolist() == pytest.approx(np.array([1 / 52, 51 / 52, 1 / 2]) / (1.5 + 1 / 52), abs=0.08)
    rr = RoundRobinAlloc(4, 1)  # room for two: the next round starts after the last agent served
    assert [np.nonzero(rr.allocate(np.ones((4, 1)), [2.0]).numpy())[0].tolist() for _ in range(3)] == [
        [0, 1], [2, 3], [0, 1]]


def test_proportional_fairness_strength_is_the_exponent():
    """fairness_strength s weights draws by (c + 1)^-s: s = 0 is the plain knapsack, draw for draw."""
    rng = np.random.default_rng(0)
    plain = ConstrainedThompsonSampling(N_AGENTS, R, seed=4)
    prop0 = ConstrainedThompsonSampling(N_AGENTS, R, "proportional", seed=4, fairness_strength=0.0)
    for _ in range(15):
        req = rng.uniform(0.2, 1.0, (N_AGENTS, R))
        x = plain.allocate(req, [1.5, 1.5])
        assert torch.equal(x, prop0.allocate(req, [1.5, 1.5]))
        served = np.nonzero(x.numpy())[0]
        r = (rng.random(served.size) < 0.7).astype(float)
        plain.update(served, r)
        prop0.update(served, r)


def test_constrained_ucb1_index_scale_and_unobserved_agents():
    """c = 0 ranks by the empirical mean alone; c > 0 adds the width; an unobserved agent outranks every index."""
    ucb = ConstrainedUCB1(3, 1, c=0.0)
    ucb.update(np.array([0] + [1] * 100), np.array([0.9] + [1.0] * 100))
    ones = np.ones((3, 1))
    assert ucb.allocate(ones, [2.0]).tolist() == [0, 1, 1]  # agent 2 (unobserved) and the best mean
    ucb.c = 1.0  # agent 0's single pull now gives it the widest index: 0.9 + sqrt(2 ln 101) > 1 + sqrt(2 ln 101 / 100)
    assert ucb.allocate(ones, [2.0]).tolist() == [1, 0, 1]


def test_load_state_dict_checks_shapes_and_the_pointer_range():
    state = GreedyAlloc(4, 1).state_dict()
    with pytest.raises(ValueError, match=r"'pulls' has shape \(3,\), expected \(4,\)"):
        GreedyAlloc(4, 1).load_state_dict({**state, "pulls": torch.zeros(3, dtype=torch.float64)})
    rr = RoundRobinAlloc(4, 1).state_dict()
    with pytest.raises(ValueError, match=r"'pointer' is 4, outside \[0, 4\)"):
        RoundRobinAlloc(4, 1).load_state_dict({**rr, "pointer": torch.tensor(4)})
