"""Interface tests over every policy: shapes, propensities, validation errors, persistence."""

from __future__ import annotations

import math

import pytest
import torch

from arr_coc.bandits import (
    BanditPolicy,
    Discount,
    EpsilonGreedy,
    LinTS,
    LinUCB,
    PageHinkley,
    SlidingWindow,
    Softmax,
    ThompsonSampling,
)
from _bandit_helpers import POLICIES as ALL
from _bandit_helpers import POLICY_ARMS, POLICY_DIM
from _bandit_helpers import make_policy as _make

A, D, N = POLICY_ARMS, POLICY_DIM, 32


def _warm(policy: BanditPolicy, per_arm: bool, steps: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (N, A, D) if per_arm else (N, D)
    ctx = torch.randn(shape, generator=g, dtype=policy.dtype)
    for _ in range(steps):
        a, _ = policy.select(ctx, generator=g)
        policy.update(ctx, a, torch.rand(N, generator=g, dtype=policy.dtype))
    return ctx


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("per_arm", [False, True])
def test_select_shapes_and_propensities(name, per_arm):
    pol = _make(name)
    ctx = _warm(pol, per_arm)
    g = torch.Generator().manual_seed(1)
    actions, props = pol.select(ctx, generator=g)
    assert actions.shape == (N,) and actions.dtype == torch.int64
    assert props.shape == (N,)
    assert bool(((actions >= 0) & (actions < A)).all())
    assert bool(((props > 0) & (props <= 1 + 1e-6)).all())
    probs = pol.action_probabilities(ctx, generator=g)
    assert probs.shape == (N, A)
    assert torch.allclose(probs.sum(1), torch.ones(N), atol=1e-5)
    assert bool((probs >= 0).all())


@pytest.mark.parametrize("name", ["eps", "softmax", "ucb1", "linucb", "hybrid"])
def test_closed_form_propensity_equals_probability(name):
    pol = _make(name)
    ctx = _warm(pol, False)
    actions, props = pol.select(ctx)
    probs = pol.action_probabilities(ctx)
    assert torch.allclose(props, probs.gather(1, actions[:, None])[:, 0])


def test_epsilon_greedy_probabilities_exact():
    pol = EpsilonGreedy(3, 0.3)
    ctx = torch.zeros(2, 1)
    pol.update(ctx, torch.tensor([1, 2]), torch.tensor([1.0, 0.5]))
    probs = pol.action_probabilities(ctx)
    assert torch.allclose(probs[0], torch.tensor([0.1, 0.8, 0.1]))


def test_thompson_mc_propensity_matches_empirical_frequency():
    pol = ThompsonSampling(3, "beta")
    pol.update(torch.zeros(30, 1), torch.tensor([0, 1, 2] * 10), torch.tensor([1.0, 0.0, 1.0] * 10) * torch.tensor(
        [0.7, 0.6, 0.5]).repeat(10))
    g = torch.Generator().manual_seed(0)
    actions, props = pol.select(torch.zeros(20000, 1), generator=g)
    freq = torch.bincount(actions, minlength=3).float() / 20000
    for a in range(3):
        if freq[a] > 0.02:
            est = props[actions == a].mean()
            assert abs(float(est) - float(freq[a])) < 0.08


def test_lints_mc_propensity_matches_frequency_per_row():
    pol = LinTS(3, 2, v=1.0, n_mc=2000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 2, generator=g)
    pol.update(x, torch.randint(0, 3, (50,), generator=g), torch.randn(50, generator=g))
    ctx = torch.tensor([[0.3, -0.2]]).expand(4000, -1).contiguous()
    actions, props = pol.select(ctx, generator=g)
    freq = torch.bincount(actions, minlength=3).float() / 4000
    assert torch.allclose(freq[actions], props, atol=0.05)


@pytest.mark.parametrize("name", ALL)
def test_bad_inputs_raise(name):
    pol = _make(name)
    ctx = torch.randn(N, D)
    a, _ = pol.select(ctx)
    r = torch.rand(N)
    with pytest.raises(ValueError, match="NaN|non-finite"):
        bad = ctx.clone()
        bad[3, 1] = float("nan")
        pol.select(bad)
    with pytest.raises(ValueError, match="non-finite"):
        rr = r.clone()
        rr[2] = float("inf")
        pol.update(ctx, a, rr)
    with pytest.raises(ValueError, match="out of range"):
        aa = a.clone()
        aa[0] = A
        pol.update(ctx, aa, r)
    with pytest.raises(ValueError, match="out of range"):
        aa = a.clone()
        aa[5] = -1
        pol.update(ctx, aa, r)
    with pytest.raises(ValueError, match="integer dtype"):
        pol.update(ctx, a.float(), r)
    with pytest.raises(ValueError, match="shape"):
        pol.update(ctx, a[:-1], r)
    with pytest.raises(ValueError, match="shape"):
        pol.update(ctx, a, r[:-1])
    with pytest.raises(ValueError, match="dtype"):
        pol.select(ctx.double())
    with pytest.raises(ValueError, match="on meta"):
        pol.select(torch.empty(N, D, device="meta"))
    with pytest.raises(ValueError, match="dims|n_arms"):
        pol.select(torch.randn(N, A + 1, D))
    with pytest.raises(ValueError):
        pol.select(torch.randn(N))
    if pol._contextual:
        with pytest.raises(ValueError, match="width"):
            pol.select(torch.randn(N, D + 1))


def test_constructor_errors_name_value():
    with pytest.raises(ValueError, match="-1"):
        LinUCB(-1, 3)
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedy(3, 1.5)
    with pytest.raises(ValueError, match="'poisson'"):
        ThompsonSampling(3, "poisson")
    with pytest.raises(ValueError, match="solver"):
        LinUCB(3, 2, solver="qr")
    with pytest.raises(ValueError, match="sherman_morrison"):
        LinUCB(3, 2, solver="sherman_morrison", forgetting=Discount(0.9))
    with pytest.raises(ValueError, match="forgetting"):
        LinUCB(3, 2, forgetting="window")
    with pytest.raises(ValueError, match="gamma"):
        Discount(1.5)
    with pytest.raises(ValueError, match="size"):
        SlidingWindow(0)
    with pytest.raises(ValueError, match="threshold"):
        PageHinkley(threshold=-1.0)
    with pytest.raises(ValueError, match="lam"):
        LinTS(3, 2, lam=0.0)
    with pytest.raises(ValueError, match="dtype"):
        LinUCB(3, 2, dtype=torch.int64)


def test_beta_ts_rejects_rewards_outside_unit_interval():
    pol = ThompsonSampling(2, "beta")
    with pytest.raises(ValueError, match="1.5"):
        pol.update(torch.zeros(2, 1), torch.tensor([0, 1]), torch.tensor([0.2, 1.5]))


# Sherman-Morrison and NeuralLinear reject forgetting rules (tested above), so those pairs are not generated.
_NO_FORGETTING = ("linucb_sm", "neural_ucb", "neural_ts")


@pytest.mark.parametrize(
    "name, forgetting",
    [(n, f) for n in ALL for f in (None, SlidingWindow(20), Discount(0.95), PageHinkley(0.01, 2.0))
     if f is None or n not in _NO_FORGETTING],
)
def test_save_load_roundtrip(tmp_path, name, forgetting):
    kw = {} if forgetting is None else {"forgetting": forgetting}
    pol = _make(name, dtype=torch.float64, **kw)
    ctx = _warm(pol, False, steps=3)
    path = tmp_path / "policy.safetensors"
    pol.save(path)
    loaded = BanditPolicy.load(path)
    assert type(loaded) is type(pol)
    assert loaded.dtype == torch.float64
    assert loaded._config() == pol._config()
    sd1, sd2 = pol.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a1, p1 = pol.select(ctx, generator=g1)
    a2, p2 = loaded.select(ctx, generator=g2)
    assert torch.equal(a1, a2) and torch.allclose(p1, p2)
    # the file is plain safetensors, not a pickle
    assert path.read_bytes()[8:9] == b"{"


def test_load_checks_class(tmp_path):
    p = tmp_path / "x.safetensors"
    LinUCB(2, 3).save(p)
    with pytest.raises(ValueError, match="not a LinTS"):
        LinTS.load(p)
    assert isinstance(LinUCB.load(p), LinUCB)


def test_state_dict_into_fresh_module():
    pol = LinUCB(3, 4)
    _ = torch.manual_seed(0)
    x = torch.randn(20, 4)
    pol.update(x, torch.randint(0, 3, (20,)), torch.randn(20))
    fresh = LinUCB(3, 4)
    fresh.load_state_dict(pol.state_dict())
    assert torch.allclose(fresh.theta, pol.theta) and torch.allclose(fresh.A_inv, pol.A_inv)


def test_generator_reproducibility():
    pol = LinTS(3, 4)
    x = torch.randn(10, 4)
    a1, p1 = pol.select(x, generator=torch.Generator().manual_seed(3))
    a2, p2 = pol.select(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2) and torch.equal(p1, p2)


def test_thompson_select_reproducible_whatever_its_cache():
    """The Monte Carlo cache is rebuilt after each update; a seeded select must not depend on whether it was."""
    pol = ThompsonSampling(4, "beta", n_mc=256)
    pol.update(torch.zeros(8, 1), torch.arange(8) % 4, torch.rand(8, generator=torch.Generator().manual_seed(0)))
    x = torch.zeros(6, 1)
    first = pol.select(x, generator=torch.Generator().manual_seed(3))  # rebuilds the cache
    again = pol.select(x, generator=torch.Generator().manual_seed(3))  # reuses it
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = ThompsonSampling(4, "beta", n_mc=256)
    other.load_state_dict(pol.state_dict())
    other.action_probabilities(x, generator=torch.Generator().manual_seed(9))  # builds its cache another way
    third = other.select(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[0], third[0]) and torch.equal(first[1], third[1])


def test_mc_propensity_inverse_weight_matches_documented_bias():
    """E[1{a = k} / p̂] = 1 - (1 - p_k)^(S+1) for Monte Carlo propensities (the bias the ope docstring states)."""
    s, n = 4, 200_000
    pol = LinTS(2, 1, n_mc=s, dtype=torch.float64)
    mean = torch.tensor([0.0, -1.0], dtype=torch.float64).expand(n, 2)
    scale = torch.ones(n, 2, dtype=torch.float64)
    actions, props = pol._ts_select(mean, scale, torch.Generator().manual_seed(0))
    p = 0.5 * math.erfc(1.0 / 2.0)  # P(N(-1, 1) > N(0, 1)) = Phi(-1/sqrt(2))
    weight = torch.where(actions == 1, 1.0 / props, torch.zeros_like(props)).mean().item()
    assert abs(float((actions == 1).double().mean()) - p) < 0.005
    assert abs(weight - (1.0 - (1.0 - p) ** (s + 1))) < 0.01  # 0.746, not the 1.0 exact propensities give


def test_module_to_moves_state_dtype():
    pol = LinUCB(3, 4).to(torch.float64)
    assert pol.dtype == torch.float64 and pol.theta.dtype == torch.float64
    a, p = pol.select(torch.randn(5, 4, dtype=torch.float64))
    assert p.dtype == torch.float64 and not math.isnan(float(p.sum()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL)
def test_runs_on_cuda(name):
    pol = _make(name).to("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    ctx = torch.randn(N, D, device="cuda")
    a, p = pol.select(ctx, generator=g)
    pol.update(ctx, a, torch.rand(N, device="cuda"))
    assert a.device.type == "cuda" and p.device.type == "cuda"


def test_changing_a_setting_on_a_live_policy_drops_the_cached_distribution():
    # The action distribution (and TS's Monte Carlo win counts) is cached between updates; assigning epsilon,
    # temperature, c or n_mc afterwards kept serving the old one.
    from arr_coc.bandits import EpsilonGreedy, Softmax, ThompsonSampling, UCB1

    x = torch.zeros(1, 1)
    for make, name, value in ((lambda: EpsilonGreedy(3, 0.1), "epsilon", 1.0),
                              (lambda: Softmax(3, 0.1), "temperature", 1e6),
                              (lambda: ThompsonSampling(3, "beta", n_mc=16), "n_mc", 4096)):
        pol = make()
        pol.update(x.expand(3, 1), torch.tensor([0, 1, 2]), torch.tensor([1.0, 0.0, 0.0]))
        before = pol.action_probabilities(x)
        setattr(pol, name, value)
        fresh = make()
        setattr(fresh, name, value)
        fresh.update(x.expand(3, 1), torch.tensor([0, 1, 2]), torch.tensor([1.0, 0.0, 0.0]))
        assert torch.equal(pol.action_probabilities(x), fresh.action_probabilities(x)), name
        assert not torch.equal(pol.action_probabilities(x), before), name
    ucb = UCB1(2, c=0.0)  # arm 0: one reward of 0.9; arm 1: a hundred of 1.0
    ucb.update(x.expand(101, 1), torch.tensor([0] + [1] * 100), torch.tensor([0.9] + [1.0] * 100))
    assert ucb.action_probabilities(x)[0].tolist() == [0.0, 1.0]  # c = 0: the better mean
    ucb.c = 10.0  # the rarely played arm's wider bonus now wins
    assert ucb.action_probabilities(x)[0].tolist() == [1.0, 0.0]


def test_thompson_posterior_parameters_and_draws():
    x = torch.zeros(3, 1, dtype=torch.float64)
    beta = ThompsonSampling(2, "beta", alpha0=1.0, beta0=1.0, dtype=torch.float64)
    beta.update(x, torch.tensor([0, 0, 0]), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    alpha, b = beta.posterior()
    assert alpha.tolist() == [3.0, 1.0] and b.tolist() == [2.0, 1.0]  # successes and failures separately
    assert beta.means.tolist() == pytest.approx([0.6, 0.5])
    gauss = ThompsonSampling(2, "gaussian", prior_mean=1.0, prior_var=2.0, noise_var=0.5, dtype=torch.float64)
    gauss.update(x[:1], torch.tensor([0]), torch.tensor([3.0], dtype=torch.float64))
    mean, var = gauss.posterior()
    assert mean.tolist() == pytest.approx([2.6, 1.0])  # (1/2 + 3/0.5) / (1/2 + 1/0.5); the prior mean
    assert var.tolist() == pytest.approx([0.4, 2.0])
    draws = gauss._draw((20000,), torch.Generator().manual_seed(0))
    assert draws.std(0).tolist() == pytest.approx([0.4**0.5, 2.0**0.5], rel=0.03)  # sd, not variance


def test_thompson_probabilities_follow_a_dtype_change():
    pol = ThompsonSampling(3, "beta", n_mc=64)
    pol.action_probabilities(torch.zeros(1, 1))  # builds the float32 Monte Carlo cache
    pol.to(torch.float64)
    probs = pol.action_probabilities(torch.zeros(2, 1, dtype=torch.float64))
    assert probs.dtype == torch.float64 and torch.allclose(probs.sum(1), torch.ones(2, dtype=torch.float64))


def test_thompson_propensity_pools_the_row_draw_with_the_cached_ones():
    """p̂ = (wins among the n_mc cached draws + 1) / (n_mc + 1): an arm that never won in the cache gets 1/(S+1)."""
    pol = ThompsonSampling(2, "beta", n_mc=8)
    actions, props = pol.select(torch.zeros(400, 1), generator=torch.Generator().manual_seed(0))
    wins = pol._win_counts()
    assert torch.allclose(props, (wins[actions] + 1) / 9)
    assert set(actions.tolist()) == {0, 1} and wins.sum() == 8


def test_ucb1_unplayed_arm_outranks_any_reward_scale():
    """Arms without data have index +inf, so they come first even when rewards are in the millions."""
    from arr_coc.bandits import UCB1

    pol = UCB1(2, 1.0, dtype=torch.float64)
    pol.update(torch.zeros(1, 1, dtype=torch.float64), torch.tensor([0]), torch.tensor([2e6], dtype=torch.float64))
    assert pol.indices()[1] == float("inf")
    assert pol.action_probabilities(torch.zeros(1, 1, dtype=torch.float64))[0].tolist() == [0.0, 1.0]


def test_unplayed_arms_use_initial_value_and_assigning_it_drops_the_cache():
    pol = EpsilonGreedy(3, 0.0, initial_value=2.0)
    x = torch.zeros(1, 1)
    pol.update(x, torch.tensor([0]), torch.tensor([1.0]))
    assert pol.means.tolist() == [1.0, 2.0, 2.0]
    assert pol.action_probabilities(x)[0].tolist() == [0.0, 0.5, 0.5]  # optimistic unplayed arms win
    pol.initial_value = 0.0  # now the played arm (mean 1) is the best
    assert pol.action_probabilities(x)[0].tolist() == [1.0, 0.0, 0.0]


def test_mean_policy_probabilities_follow_a_dtype_change():
    pol = EpsilonGreedy(3, 0.3)
    pol.action_probabilities(torch.zeros(1, 1))  # builds the float32 cache
    pol.to(torch.float64)
    probs = pol.action_probabilities(torch.zeros(2, 1, dtype=torch.float64))
    assert probs.dtype == torch.float64


def test_select_never_draws_a_zero_probability_arm_at_the_top_of_the_uniform_range(monkeypatch):
    # Softmax probabilities whose float32 CDF ends below 1; arm 3 has probability 0. A uniform draw just below 1
    # must still land on a positive-probability arm (u is scaled by the CDF total).
    pol = Softmax(4, 1.0)
    means = torch.tensor([0.4485998749732971, 0.513896107673645, 0.4568655490875244, -1e3])
    pol.update(torch.zeros(4, 1), torch.arange(4), means)
    probs = pol.action_probabilities(torch.zeros(1, 1))[0]
    assert probs[3] == 0 and float(probs.cumsum(0)[-1]) < 1 - 2 ** -24
    top = 1 - 2 ** -24  # the largest float32 below 1
    monkeypatch.setattr(torch, "rand", lambda n, **kw: torch.full((n,), top, dtype=kw.get("dtype")))
    actions, props = pol.select(torch.zeros(5, 1))
    assert (actions != 3).all() and (props > 0).all()


def test_ucb1_indices_follow_the_formula_with_and_without_discounting(tmp_path):
    """index = mean_a + c * sqrt(2 ln n / n_a), n the total count floored at 1; +inf for an arm without data."""
    from arr_coc.bandits import UCB1

    dt = torch.float64
    pol = UCB1(3, c=0.7, dtype=dt)
    assert pol.means.tolist() == [0.0, 0.0, 0.0]  # UCB1 has no initial_value setting: unplayed means are 0
    pol.update(torch.zeros(4, 1, dtype=dt), torch.tensor([0, 0, 0, 1]), torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=dt))
    expected = [0.5 + 0.7 * math.sqrt(2 * math.log(4) / 3), 2.0 + 0.7 * math.sqrt(2 * math.log(4) / 1), math.inf]
    assert pol.indices().tolist() == pytest.approx(expected, rel=1e-12)
    # Discount(0.5) over two rows: counts (0.5, 1), total 1.5; the width uses log(1.5) as it is.
    disc = UCB1(2, c=2.0, forgetting=Discount(0.5), dtype=dt)
    disc.update(torch.zeros(2, 1, dtype=dt), torch.tensor([0, 1]), torch.tensor([1.0, 0.0], dtype=dt))
    assert disc.counts.tolist() == [0.5, 1.0]
    width = [2.0 * math.sqrt(2 * math.log(1.5) / n) for n in (0.5, 1.0)]
    assert disc.indices().tolist() == pytest.approx([1.0 + width[0], 0.0 + width[1]], rel=1e-12)
    # c survives a save / load (a default of 1.0 would hide a config that drops it)
    pol.save(tmp_path / "ucb.safetensors")
    loaded = BanditPolicy.load(tmp_path / "ucb.safetensors")
    assert loaded.c == 0.7 and torch.equal(loaded.indices(), pol.indices())


def test_base_input_checks_name_the_first_offender():
    pol = LinUCB(3, 2)
    x, a, r = torch.zeros(2, 2), torch.tensor([0, 1]), torch.ones(2)
    with pytest.raises(ValueError, match="at least one row"):
        pol.select(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="actions are on meta"):
        pol.update(x, a.to("meta"), r)
    with pytest.raises(ValueError, match="rewards are on meta"):
        pol.update(x, a, r.to("meta"))
    with pytest.raises(ValueError, match="rewards must be real"):  # .to(float) would drop the imaginary part
        pol.update(x, a, torch.ones(2, dtype=torch.complex64))
    x3 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"action 5 at row 1 is out of range \[0, 3\)"):
        pol.update(x3, torch.tensor([0, 5, -1]), torch.ones(3))
    with pytest.raises(ValueError, match="rewards contain 2 non-finite value.*first at row 1: inf"):
        pol.update(x3, torch.tensor([0, 1, 2]), torch.tensor([0.0, float("inf"), float("nan")]))
    bad = x3.clone()
    bad[1, 0], bad[2, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"contexts contain 2 non-finite value.*first at \(1, 0\): nan"):
        pol.select(bad)
    assert int(pol.steps) == 0  # nothing was recorded by the rejected updates


def test_base_accepts_every_integer_action_dtype_and_casts_rewards():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    a, r = torch.tensor([0, 1, 2, 1]), torch.tensor([1.0, 0.0, 2.0, 1.0])
    ref = LinUCB(3, 2)
    ref.update(x, a, r)
    for dt in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        pol = LinUCB(3, 2)
        pol.update(x, a.to(dt), r)
        assert torch.equal(pol.counts, ref.counts), dt
    for rewards in (r.double(), r.long()):  # cast to the policy's float32
        pol = LinUCB(3, 2)
        pol.update(x, a, rewards)
        assert torch.equal(pol.theta, ref.theta), rewards.dtype


@pytest.mark.parametrize("u, probs, expected", [
    (1 - 2 ** -24, [0.3, 0.3, 0.3, 0.0], 2),  # the top uniform, scaled by the row total 0.9, stays below it
    (0.0, [0.0, 0.5, 0.5], 1),  # u = 0 lies on the zero-probability arm's CDF step: it belongs to the next arm
])
def test_base_inverse_cdf_sampling_skips_zero_probability_arms(monkeypatch, u, probs, expected):
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape, u, dtype=kw.get("dtype")))
    p = torch.tensor([probs])
    actions, props = BanditPolicy._sample(p, None)
    assert actions.tolist() == [expected] and props.tolist() == [p[0, expected].item()]


def test_base_argmax_select_breaks_ties_uniformly():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]]).expand(3000, -1)
    actions, props = BanditPolicy._argmax_select(scores, torch.Generator().manual_seed(0))
    freq = torch.bincount(actions, minlength=5).float() / 3000
    assert freq[[0, 3]].tolist() == [0.0, 0.0]
    assert torch.allclose(freq[[1, 2, 4]], torch.full((3,), 1 / 3), atol=0.04)
    assert torch.allclose(props, torch.full((3000,), 1 / 3))


def test_base_load_rejects_an_unknown_class(tmp_path):
    from arr_coc.bandits._io import _save_tensors

    path = tmp_path / "odd.safetensors"
    meta = {"class": "Nope", "config": {}, "dtype": "float32"}
    _save_tensors(path, {"steps": torch.zeros((), dtype=torch.long)}, meta)
    with pytest.raises(ValueError, match="unknown policy class 'Nope'"):
        BanditPolicy.load(path)


def test_base_load_state_dict_refreshes_cached_distributions_and_repr_lists_the_config():
    src = EpsilonGreedy(3, 0.0)
    src.update(torch.zeros(1, 1), torch.tensor([2]), torch.tensor([1.0]))
    dst = EpsilonGreedy(3, 0.0)
    x = torch.zeros(1, 1)
    assert dst.action_probabilities(x)[0].tolist() == pytest.approx([1 / 3] * 3)  # builds the cache
    dst.load_state_dict(src.state_dict())  # the post-load hook must drop it
    assert dst.action_probabilities(x)[0].tolist() == [0.0, 0.0, 1.0]
    assert "solver='cholesky'" in repr(LinUCB(3, 2))


def test_io_roundtrip_of_shared_storage_and_foreign_files(tmp_path):
    from safetensors.torch import save_file

    from arr_coc.bandits._io import _load_tensors, _save_tensors

    w = torch.arange(6.0).reshape(2, 3)
    path = tmp_path / "shared.safetensors"
    _save_tensors(path, {"w": w, "row": w[0]}, {"k": [1, 2]})  # aliased storage: cloned on save
    tensors, cfg = _load_tensors(path)
    assert cfg == {"k": [1, 2]} and torch.equal(tensors["row"], torch.arange(3.0))
    moved, _ = _load_tensors(path, device="meta")
    assert {t.device.type for t in moved.values()} == {"meta"}
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))  # no metadata at all
    with pytest.raises(ValueError, match="not an arr_coc bandit file"):
        BanditPolicy.load(plain)
