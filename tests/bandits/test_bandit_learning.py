"""The policies learn: on synthetic problems each beats uniform random play by a clear margin."""

from __future__ import annotations

import pytest
import torch

from arr_coc.bandits import EpsilonGreedy, HybridLinUCB, LinTS, LinUCB, NeuralLinear, Softmax, ThompsonSampling, UCB1
from arr_coc.bandits.thompson import _sample_beta


def _linear_regret(pol, per_arm=False, rounds=60, batch=16, seed=0, nonlinear=False):
    g = torch.Generator().manual_seed(seed)
    a, d = 4, 5
    w = torch.randn(a, d, generator=g)
    total, rand_total = 0.0, 0.0
    for _ in range(rounds):
        x = torch.randn(batch, a, d, generator=g) if per_arm else torch.randn(batch, d, generator=g)
        if per_arm:
            mu = torch.einsum("nad,ad->na", x, w)
        else:
            mu = x @ w.T
        if nonlinear:
            mu = torch.tanh(2 * mu)
        act, _ = pol.select(x, generator=g)
        r = mu.gather(1, act[:, None])[:, 0] + 0.1 * torch.randn(batch, generator=g)
        pol.update(x, act, r)
        best = mu.max(1).values
        total += float((best - mu.gather(1, act[:, None])[:, 0]).sum())
        rand_total += float((best - mu.mean(1)).sum())
    return total, rand_total


@pytest.mark.parametrize("make", [
    lambda: LinUCB(4, 5, alpha=0.5),
    lambda: LinUCB(4, 5, alpha=0.5, solver="sherman_morrison"),
    lambda: LinTS(4, 5, v=0.3),
], ids=["linucb", "linucb_sm", "lints"])
@pytest.mark.parametrize("per_arm", [False, True])
def test_linear_policies_beat_random(make, per_arm):
    regret, random_regret = _linear_regret(make(), per_arm=per_arm)
    assert regret < 0.1 * random_regret, (regret, random_regret)


def test_hybrid_beats_random_on_per_arm_contexts():
    g = torch.Generator().manual_seed(1)
    a, d, k = 4, 3, 2
    theta, beta = torch.randn(a, d, generator=g), torch.randn(k, generator=g)
    pol = HybridLinUCB(a, d, k, alpha=0.5)
    regret, rand = 0.0, 0.0
    for _ in range(50):
        x = torch.randn(16, a, d + k, generator=g)
        mu = torch.einsum("nad,ad->na", x[..., :d], theta) + x[..., d:] @ beta
        act, _ = pol.select(x, generator=g)
        pol.update(x, act, mu.gather(1, act[:, None])[:, 0] + 0.1 * torch.randn(16, generator=g))
        regret += float((mu.max(1).values - mu.gather(1, act[:, None])[:, 0]).sum())
        rand += float((mu.max(1).values - mu.mean(1)).sum())
    assert regret < 0.25 * rand
    assert torch.allclose(pol.beta, beta, atol=0.15)


@pytest.mark.parametrize("head", ["ucb", "ts"])
def test_neural_linear_beats_random_on_nonlinear_rewards(head):
    pol = NeuralLinear(4, 5, (32, 16), head=head, alpha=0.3, train_every=128, train_steps=60, batch_size=64, lr=3e-3)
    regret, rand = _linear_regret(pol, rounds=50, nonlinear=True)
    assert regret < 0.25 * rand, (regret, rand)


@pytest.mark.parametrize("make", [
    lambda: EpsilonGreedy(5, 0.1), lambda: Softmax(5, 0.05), lambda: UCB1(5, 0.5),
    lambda: ThompsonSampling(5, "beta"), lambda: ThompsonSampling(5, "gaussian", noise_var=0.25),
], ids=["eps", "softmax", "ucb1", "ts_beta", "ts_gauss"])
def test_mab_policies_find_best_arm(make):
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([0.2, 0.4, 0.5, 0.75, 0.3])
    pol = make()
    pulls = torch.zeros(5)
    for t in range(100):
        a, _ = pol.select(torch.zeros(8, 1), generator=g)
        pol.update(torch.zeros(8, 1), a, (torch.rand(8, generator=g) < means[a]).float())
        if t >= 50:
            pulls += torch.bincount(a, minlength=5)
    assert int(pulls.argmax()) == 3
    assert float(pulls[3] / pulls.sum()) > 0.6


def test_beta_sampler_moments():
    g = torch.Generator().manual_seed(0)
    alpha = torch.tensor([0.3, 1.0, 2.5, 40.0]).repeat(40000, 1)
    beta = torch.tensor([0.7, 1.0, 6.0, 3.0]).repeat(40000, 1)
    s = _sample_beta(alpha, beta, g)
    a0, b0 = alpha[0], beta[0]
    mean = a0 / (a0 + b0)
    var = a0 * b0 / ((a0 + b0) ** 2 * (a0 + b0 + 1))
    assert torch.allclose(s.mean(0), mean, atol=0.01)
    assert torch.allclose(s.var(0), var, rtol=0.08)
    assert bool(((s >= 0) & (s <= 1)).all())


@pytest.mark.parametrize("seeded", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beta_sampler_small_shapes_stay_symmetric(seeded, dtype):
    """Beta(0.01, 0.01) is symmetric with mean 1/2. Its Gamma variates underflow (about 40% lie below 1e-38), and
    ``x / (x + y).clamp_min(1e-38)`` pushed those draws towards 0: the mean came out near 0.41."""
    if seeded:
        g = torch.Generator().manual_seed(0)
    else:
        torch.manual_seed(0)
        g = None
    shape = torch.full((100_000,), 0.01, dtype=dtype)
    s = _sample_beta(shape, shape, g)
    assert bool(((s >= 0) & (s <= 1)).all())
    assert abs(float(s.mean()) - 0.5) < 0.01  # std of the mean: about 0.5 / sqrt(1e5) = 0.0016
    assert abs(float((s < 0.5).float().mean()) - 0.5) < 0.01


@pytest.mark.parametrize("seeded", [True, False])
def test_beta_sampler_mean_with_a_boosted_shape(seeded):
    """Shapes below 1 are boosted, G(a + 1) U^(1/a), on both the seeded and torch's native sampling path."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0) if seeded else None
    shape = torch.full((100_000,), 0.3, dtype=torch.float64)
    s = _sample_beta(shape, 1.0 - shape, g)
    assert abs(float(s.mean()) - 0.3) < 0.01  # std of the mean: sqrt(0.21 / 2 / 1e5) = 0.001
