"""Off-policy estimators on a synthetic problem with a known value: unbiasedness, coverage, validation."""

from __future__ import annotations

import pytest
import torch

from arr_coc.bandits import EpsilonGreedy, LinUCB, dr, fit_reward_model, ips, snips

A, D = 3, 3
W = torch.tensor([[1.0, 0.0, -0.5], [0.0, 1.0, 0.5], [-0.5, 0.5, 1.0]], dtype=torch.float64)


def _mu(x):
    return x @ W.T + 0.5  # (N, A) expected reward


def _behavior(x):
    return torch.softmax(x @ torch.tensor([[0.5, 0, 0], [0, 0.3, 0], [0, 0, 0.1]], dtype=torch.float64).T, 1)


def _target(x):
    return torch.softmax(3.0 * _mu(x), 1)  # a sharper policy than the logger


def _true_value():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(400_000, D, generator=g, dtype=torch.float64)
    return float((_target(x) * _mu(x)).sum(1).mean())


TRUTH = _true_value()


def _log(n, g):
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    pb = _behavior(x)
    a = torch.multinomial(pb, 1, generator=g)[:, 0]
    r = _mu(x).gather(1, a[:, None])[:, 0] + torch.randn(n, generator=g, dtype=torch.float64)
    return x, a, r, pb.gather(1, a[:, None])[:, 0]


def test_estimators_unbiased_and_cover_truth():
    g = torch.Generator().manual_seed(0)
    reps, n = 150, 400
    est = {"ips": [], "snips": [], "dr": [], "dr_bad_model": []}
    cover = {k: 0 for k in est}
    for _ in range(reps):
        x, a, r, p = _log(n, g)
        pt = _target(x)
        q = fit_reward_model(x, a, r, A, lam=1.0, n_folds=2, generator=g)
        results = {
            "ips": ips(r, a, p, pt, n_boot=200, generator=g),
            "snips": snips(r, a, p, pt, n_boot=200, generator=g),
            "dr": dr(r, a, p, pt, q, n_boot=200, generator=g),
            "dr_bad_model": dr(r, a, p, pt, torch.full_like(q, -3.0), n_boot=200, generator=g),
        }
        for k, res in results.items():
            est[k].append(res.value)
            cover[k] += res.ci_low <= TRUTH <= res.ci_high
            assert res.ci_low <= res.value <= res.ci_high and res.n == n
    for k in ("ips", "dr", "dr_bad_model"):
        v = torch.tensor(est[k])
        half = 3.0 * float(v.std()) / reps**0.5
        assert abs(float(v.mean()) - TRUTH) < half, (k, float(v.mean()), TRUTH, half)
    # SNIPS is biased by O(1/n): allow a small multiple of the Monte Carlo error
    v = torch.tensor(est["snips"])
    assert abs(float(v.mean()) - TRUTH) < 0.05
    for k in est:  # 95% percentile intervals; loose lower bound for 150 repetitions
        assert cover[k] / reps > 0.85, (k, cover[k] / reps)
    # a good reward model cuts the variance
    assert torch.tensor(est["dr"]).std() < 0.8 * torch.tensor(est["ips"]).std()


def test_ips_detects_a_worse_policy():
    g = torch.Generator().manual_seed(1)
    x, a, r, p = _log(3000, g)
    good = ips(r, a, p, _target(x), n_boot=200, generator=g)
    worst = torch.nn.functional.one_hot(_mu(x).argmin(1), A).double()
    bad = ips(r, a, p, worst, n_boot=200, generator=g)
    assert bad.ci_high < good.ci_low


def test_policy_propensities_feed_ope():
    """Logged propensities from a policy's own select() make IPS of that same policy equal the on-policy mean."""
    g = torch.Generator().manual_seed(2)
    pol = EpsilonGreedy(A, 0.3)
    x = torch.zeros(50, 1)
    pol.update(x, torch.tensor([0, 1, 2] * 16 + [0, 1]), torch.rand(50, generator=g))
    ctx = torch.zeros(20000, 1)
    a, p = pol.select(ctx, generator=g)
    means = torch.tensor([0.2, 0.5, 0.8])
    r = (torch.rand(20000, generator=g) < means[a]).float()
    probs = pol.action_probabilities(ctx)
    res = snips(r, a, p, probs, n_boot=100, generator=g)
    assert abs(res.value - float(r.mean())) < 1e-5


def test_fit_reward_model_recovers_linear_rewards():
    g = torch.Generator().manual_seed(3)
    x, a, r, _ = _log(5000, g)
    q = fit_reward_model(x, a, r, A, lam=1e-3, n_folds=3, generator=g)
    assert float((q - _mu(x)).abs().mean()) < 0.05
    # per-arm contexts
    q2 = fit_reward_model(x[:, None].expand(-1, A, -1).contiguous(), a, r, A, lam=1e-3, n_folds=1)
    assert float((q2 - _mu(x)).abs().mean()) < 0.05


def test_ope_validation_errors():
    r = torch.rand(10, dtype=torch.float64)
    a = torch.zeros(10, dtype=torch.long)
    p = torch.full((10,), 0.5, dtype=torch.float64)
    pt = torch.full((10, 2), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="pscore"):
        ips(r, a, torch.zeros(10, dtype=torch.float64), pt)
    with pytest.raises(ValueError, match="sums to"):
        ips(r, a, p, pt * 1.5)
    with pytest.raises(ValueError, match="out of range"):
        ips(r, torch.full((10,), 2), p, pt)
    bad = r.clone()
    bad[4] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        snips(bad, a, p, pt)
    with pytest.raises(ValueError, match="reward_hat"):
        dr(r, a, p, pt, torch.zeros(10, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_boot"):
        ips(r, a, p, pt, n_boot=1)
    with pytest.raises(ValueError, match="n_folds"):
        fit_reward_model(torch.randn(10, 2, dtype=torch.float64), a, r, 2, n_folds=20)
    with pytest.raises(ValueError, match="n_arms"):
        fit_reward_model(torch.randn(10, 2, dtype=torch.float64), a, r, "x")
    with pytest.raises(ValueError, match="n_arms"):
        fit_reward_model(torch.randn(10, 2, dtype=torch.float64), a, r, None)
    with pytest.raises(ValueError, match="must match contexts"):
        fit_reward_model(torch.randn(10, 2, dtype=torch.float64), a, r.float(), 2)


def test_linucb_logged_propensities_are_deterministic_for_ope():
    pol = LinUCB(2, 2, dtype=torch.float64)
    x = torch.randn(30, 2, dtype=torch.float64)
    a, p = pol.select(x)
    assert bool(((p == 1.0) | (p == 0.5)).all())  # ties at the start split evenly


def test_snips_bootstrap_skips_replicates_without_positive_weight():
    """Every defined SNIPS replicate here is 10 (all rewards are 10); a replicate that drew only zero-weight rows is
    undefined. It used to count as 0, giving the interval [0, 10] and a standard error of 4.8 around an estimate of 10.
    """
    r = torch.full((5,), 10.0)
    a = torch.tensor([0, 1, 1, 1, 1])
    target = torch.tensor([[1.0, 0.0]]).expand(5, 2).contiguous()
    res = snips(r, a, torch.full((5,), 0.5), target, n_boot=2000, generator=torch.Generator().manual_seed(0))
    assert (res.value, res.ci_low, res.ci_high, res.std_err) == (10.0, 10.0, 10.0, 0.0)
    with pytest.raises(ValueError, match="bootstrap replicates"):  # almost no replicate can draw row 0
        snips(torch.ones(400), torch.tensor([0] + [1] * 399), torch.full((400,), 0.5), target[:1].expand(400, 2),
              n_boot=2, generator=torch.Generator().manual_seed(0))


def _tiny_log():
    r = torch.tensor([1.0, 0.0, 2.0, 1.0], dtype=torch.float64)
    a = torch.tensor([0, 1, 0, 1])
    p = torch.tensor([0.5, 0.5, 0.25, 0.5], dtype=torch.float64)
    pt = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    return r, a, p, pt


def test_estimators_hand_values():
    # Weights pi(a_i|x_i) / p_i = [2, 1, 0, 0]; rewards [1, 0, 2, 1].
    r, a, p, pt = _tiny_log()
    assert ips(r, a, p, pt, n_boot=10).value == pytest.approx(2 / 4)  # mean of w·r = [2, 0, 0, 0]
    assert snips(r, a, p, pt, n_boot=10).value == pytest.approx(2 / 3)  # Σ w·r / Σ w
    # DR with q̂ = [1, 2] on every row: Σ_a π q̂ = [1, 1.5, 2, 1]; w·(r - q̂(a_i)) = [0, -2, 0, 0].
    q = torch.tensor([[1.0, 2.0]], dtype=torch.float64).expand(4, 2)
    assert dr(r, a, p, pt, q, n_boot=10).value == pytest.approx(3.5 / 4)


def test_bootstrap_std_err_and_interval_width_match_the_normal_approximation():
    g = torch.Generator().manual_seed(5)
    n = 400
    r = torch.randn(n, generator=g, dtype=torch.float64)
    a = torch.zeros(n, dtype=torch.long)
    p = torch.ones(n, dtype=torch.float64)
    pt = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(n, 2)
    res = ips(r, a, p, pt, n_boot=4000, alpha=0.05, generator=g)
    se = float(r.std(unbiased=False)) / n**0.5  # the bootstrap standard error of a mean
    assert res.std_err == pytest.approx(se, rel=0.1)
    assert res.ci_high - res.ci_low == pytest.approx(2 * 1.96 * se, rel=0.1)  # 95%, not 90% (1.645)


def test_bootstrap_result_does_not_depend_on_the_chunk_size():
    r, a, p, pt = _tiny_log()
    results = [ips(r, a, p, pt, n_boot=50, chunk=c, generator=torch.Generator().manual_seed(1)) for c in (7, 50, 64)]
    assert results[0] == results[1] == results[2]


def test_ope_validation_edges():
    r, a, p, pt = _tiny_log()
    assert ips(r, a, torch.ones(4, dtype=torch.float64), pt, n_boot=10).n == 4  # a propensity of exactly 1 is fine
    with pytest.raises(ValueError, match="pscore must lie in"):
        ips(r, a, torch.full((4,), 1.01, dtype=torch.float64), pt)
    with pytest.raises(ValueError, match="negative entries"):
        ips(r, a, p, torch.tensor([[1.5, -0.5]] * 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="sums to"):
        ips(r, a, p, pt * 1.01)
    with pytest.raises(ValueError, match="SNIPS is undefined"):
        snips(r, a, p, torch.tensor([[0.0, 1.0], [1.0, 0.0]] * 2, dtype=torch.float64))


def test_snips_bootstrap_needs_two_defined_replicates():
    # Two rows, one with positive weight; n_boot=2. Pick a seed where exactly one replicate draws that row: one
    # defined replicate gives no interval and no standard deviation, so it must raise, not return NaN.
    r = torch.ones(2)
    a = torch.tensor([0, 1])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    for seed in range(50):
        idx = torch.randint(0, 2, (2, 2), generator=torch.Generator().manual_seed(seed))
        if int((idx == 0).any(1).sum()) == 1:
            break
    else:
        pytest.fail("no seed draws exactly one defined replicate")
    with pytest.raises(ValueError, match="only 1 of 2"):
        snips(r, a, torch.full((2,), 0.5), target, n_boot=2, generator=torch.Generator().manual_seed(seed))


def test_fit_reward_model_cross_fits_and_penalises():
    g = torch.Generator().manual_seed(6)
    n = 12
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    a = torch.tensor([0, 1] * 6)
    r = torch.randn(n, generator=g, dtype=torch.float64)
    r2 = r.clone()
    r2[0] += 100.0
    for folds in (2, n):  # n folds (leave-one-out) is allowed
        q = fit_reward_model(x, a, r, 2, n_folds=folds, generator=torch.Generator().manual_seed(0))
        q2 = fit_reward_model(x, a, r2, 2, n_folds=folds, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(q[0], q2[0], atol=1e-12)  # row 0's prediction never saw row 0's reward
        assert not torch.allclose(q, q2)
    # In-sample ridge with intercept, penalty lam on every coefficient, by hand for arm 0.
    lam = 5.0
    q = fit_reward_model(x, a, r, 2, lam=lam, n_folds=1)
    f = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    m = a == 0
    coef = torch.linalg.solve(f[m].T @ f[m] + lam * torch.eye(3, dtype=torch.float64), f[m].T @ r[m])
    assert torch.allclose(q[:, 0], f @ coef, atol=1e-12)
