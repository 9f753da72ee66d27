"""Forgetting rules: each recovers after an abrupt switch of the best arm, where the stationary policy does not;
the batched Page–Hinkley scan equals a sequential reference."""

from __future__ import annotations

import pytest
import torch

from arr_coc.bandits import (Discount, EpsilonGreedy, HybridLinUCB, LinTS, LinUCB, PageHinkley, SlidingWindow,
                              ThompsonSampling, UCB1)
from arr_coc.bandits import nonstationary as ns


MODES = {
    "window": SlidingWindow(200),
    "discount": Discount(0.99),
    "page_hinkley": PageHinkley(delta=0.05, threshold=4.0),
}


def _run_switch(make, rounds=120, batch=8, switch=60, seed=0):
    """Two Bernoulli arms with means (0.8, 0.2) that swap at round ``switch``; returns post-switch regret."""
    g = torch.Generator().manual_seed(seed)
    pol = make()
    means = torch.tensor([0.8, 0.2])
    regret = 0.0
    for t in range(rounds):
        if t == switch:
            means = means.flip(0)
        ctx = torch.zeros(batch, 1)
        a, _ = pol.select(ctx, generator=g)
        r = (torch.rand(batch, generator=g) < means[a]).float()
        pol.update(ctx, a, r)
        if t >= switch:
            regret += float((means.max() - means[a]).sum())
    return regret


FAMILIES = {
    "ucb1": lambda f: UCB1(2, 0.3, forgetting=f),
    "ts": lambda f: ThompsonSampling(2, "beta", forgetting=f),
    "eps": lambda f: EpsilonGreedy(2, 0.1, forgetting=f),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_forgetting_recovers_after_switch(mode, family):
    make = FAMILIES[family]
    stationary = sum(_run_switch(lambda: make(None), seed=s) for s in range(3)) / 3
    adaptive = sum(_run_switch(lambda: make(MODES[mode]), seed=s) for s in range(3)) / 3
    # Post-switch: 60 rounds x 8 pulls x 0.6 gap = 288 is the regret of never switching.
    assert adaptive < 0.5 * stationary, (family, mode, adaptive, stationary)


@pytest.mark.parametrize("mode", list(MODES))
def test_linucb_forgetting_recovers_after_switch(mode):
    """Contextual version: the reward weights of the two arms swap."""
    def run(forgetting, seed):
        g = torch.Generator().manual_seed(seed)
        pol = LinUCB(2, 3, alpha=0.5, forgetting=forgetting)
        w = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, -1.0]])
        regret = 0.0
        for t in range(120):
            if t == 60:
                w = w.flip(0)
            x = torch.rand(8, 3, generator=g)
            mu = x @ w.T  # (8, 2)
            a, _ = pol.select(x, generator=g)
            pol.update(x, a, mu.gather(1, a[:, None])[:, 0] + 0.1 * torch.randn(8, generator=g))
            if t >= 60:
                regret += float((mu.max(1).values - mu.gather(1, a[:, None])[:, 0]).sum())
        return regret

    stationary = sum(run(None, s) for s in range(2))
    adaptive = sum(run(MODES[mode], s) for s in range(2))
    assert adaptive < 0.6 * stationary, (mode, adaptive, stationary)


def _page_hinkley_reference(signal, actions, n_arms, cfg):
    """Row-by-row two-sided Page–Hinkley with reset; returns (keep, alarms per arm)."""
    n = [0] * n_arms
    mean = [0.0] * n_arms
    up = [0.0] * n_arms
    up_min = [0.0] * n_arms
    dn = [0.0] * n_arms
    dn_max = [0.0] * n_arms
    alarm_rows = {a: [] for a in range(n_arms)}
    for i, (s, a) in enumerate(zip(signal.tolist(), actions.tolist())):
        n[a] += 1
        mean[a] += (s - mean[a]) / n[a]
        up[a] += s - mean[a] - cfg.delta
        dn[a] += s - mean[a] + cfg.delta
        up_min[a] = min(up_min[a], up[a])
        dn_max[a] = max(dn_max[a], dn[a])
        if n[a] >= cfg.min_samples and max(up[a] - up_min[a], dn_max[a] - dn[a]) > cfg.threshold:
            alarm_rows[a].append(i)
            n[a], mean[a], up[a], up_min[a], dn[a], dn_max[a] = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    keep = [not alarm_rows[a] or i > alarm_rows[a][-1] for i, a in enumerate(actions.tolist())]
    return torch.tensor(keep), {a: v for a, v in alarm_rows.items()}


@pytest.mark.parametrize("seed", range(4))
def test_page_hinkley_scan_matches_sequential_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n_rows, n_arms = 300, 3
    actions = torch.randint(0, n_arms, (n_rows,), generator=g)
    # several level shifts so that arms alarm more than once within the batch
    level = torch.zeros(n_rows, dtype=torch.float64)
    level[100:] = 1.5
    level[200:] = -1.0
    signal = level + 0.3 * torch.randn(n_rows, generator=g, dtype=torch.float64)
    cfg = PageHinkley(delta=0.05, threshold=3.0, min_samples=3)
    state = {k: torch.zeros(n_arms, dtype=torch.float64) for k in ns._PH_FIELDS}
    keep, alarmed, _ = ns._page_hinkley_scan(state, signal, actions, n_arms, cfg)
    ref_keep, alarms = _page_hinkley_reference(signal, actions, n_arms, cfg)
    assert sum(len(v) for v in alarms.values()) >= n_arms  # the test exercises multiple alarms
    assert torch.equal(keep, ref_keep)
    assert alarmed.tolist() == [bool(alarms[a]) for a in range(n_arms)]


def test_page_hinkley_scan_split_batches_agree():
    g = torch.Generator().manual_seed(9)
    actions = torch.randint(0, 2, (200,), generator=g)
    signal = torch.cat([torch.zeros(100), torch.ones(100) * 2]).double() + 0.2 * torch.randn(200, generator=g).double()
    cfg = PageHinkley(0.05, 3.0, 3)
    st = {k: torch.zeros(2, dtype=torch.float64) for k in ns._PH_FIELDS}
    _, _, whole = ns._page_hinkley_scan(st, signal, actions, 2, cfg)
    st1 = {k: torch.zeros(2, dtype=torch.float64) for k in ns._PH_FIELDS}
    _, _, half = ns._page_hinkley_scan(st1, signal[:77], actions[:77], 2, cfg)
    _, _, half = ns._page_hinkley_scan(half, signal[77:], actions[77:], 2, cfg)
    for k in ns._PH_FIELDS:
        assert torch.allclose(whole[k], half[k], atol=1e-10), k


def test_page_hinkley_resets_counted():
    pol = EpsilonGreedy(2, 0.0, forgetting=PageHinkley(0.01, 2.0, 3))
    ctx = torch.zeros(50, 1)
    pol.update(ctx, torch.zeros(50, dtype=torch.long), torch.zeros(50))
    pol.update(ctx, torch.zeros(50, dtype=torch.long), torch.ones(50))
    assert int(pol.resets[0]) >= 1 and int(pol.resets[1]) == 0
    assert float(pol.means[0]) > 0.9  # the pre-change zeros were forgotten


def test_ring_append_keeps_the_newest_rows_in_arrival_order():
    """The ring buffer shared by SlidingWindow and NeuralLinear's replay buffer, against a plain list."""
    size = 5
    bufs = (torch.zeros(size, 2), torch.zeros(size, dtype=torch.long))
    pos, length = torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long)
    seen: list[int] = []
    for n in (2, 1, 4, 7, 5, 3):  # batches shorter than, equal to and longer than the buffer
        ids = torch.arange(len(seen), len(seen) + n)
        ns._ring_append(bufs, (torch.stack([ids, -ids], 1).float(), ids), pos, length)
        seen += ids.tolist()
        m = int(length)
        assert m == min(len(seen), size)
        assert int(pos) == len(seen) % size
        # Oldest first: the filled slots read from the write position onwards once the ring has wrapped.
        order = torch.arange(m) if len(seen) < size else (int(pos) + torch.arange(size)) % size
        assert bufs[1][order].tolist() == seen[-m:]
        assert torch.equal(bufs[0][order], torch.stack([bufs[1][order], -bufs[1][order]], 1).float())


def test_discounted_mean_of_a_long_unplayed_arm_keeps_its_ratio():
    """D-UCB's mean is Σγ^(t-s) r_s / Σγ^(t-s): however small the discounted count, the ratio stays the sample mean.

    A floor on the count (1e-12) used to shrink arm 0's mean from -1 to -0.019 after 300 steps, so a greedy policy
    preferred the worse arm.
    """
    dt = torch.float64
    pol = EpsilonGreedy(2, 0.0, forgetting=Discount(0.9), dtype=dt)
    pol.update(torch.zeros(1, 1, dtype=dt), torch.tensor([0]), torch.tensor([-1.0], dtype=dt))
    pol.update(torch.zeros(300, 1, dtype=dt), torch.ones(300, dtype=torch.long), torch.full((300,), -0.5, dtype=dt))
    assert 0 < float(pol.counts[0]) < 1e-12
    assert torch.allclose(pol.means, torch.tensor([-1.0, -0.5], dtype=dt))
    assert pol.action_probabilities(torch.zeros(1, 1, dtype=dt))[0].tolist() == [0.0, 1.0]


def test_forgetting_from_dict_rejects_bad_configs_with_value_error():
    """Unknown or missing fields used to escape as a TypeError from the dataclass constructor."""
    assert ns.forgetting_from_dict({"kind": "Discount", "gamma": 0.5}) == Discount(0.5)
    assert ns.forgetting_from_dict({"kind": "PageHinkley"}) == PageHinkley()
    for bad, match in (({"kind": "Discount", "gamma": 0.9, "gama": 1}, r"unknown Discount field\(s\) \['gama'\]"),
                       ({"kind": "SlidingWindow", "gamma": 0.9}, r"unknown SlidingWindow field\(s\) \['gamma'\]"),
                       ({"kind": "Discount"}, r"missing \['gamma'\]"),
                       ("Discount", "must be a dict or None, got 'Discount'")):
        with pytest.raises(ValueError, match=match):
            ns.forgetting_from_dict(bad)


def test_discounted_ucb_width_uses_tiny_counts_as_they_are():
    """D-UCB's width sqrt(2 ln n / N_i(γ)) grows as an unplayed arm's discounted count decays. Arm 0 (reward 0) was
    last played 10 steps before arm 1 (reward 1), so its width is 0.9^-5 ≈ 1.7 times arm 1's, millions apart here; a
    1e-12 floor on the count made both widths equal and let the mean pick arm 1."""
    dt = torch.float64
    pol = UCB1(3, 1.0, forgetting=Discount(0.9), dtype=dt)
    ctx = torch.zeros(300, 1, dtype=dt)
    pol.update(ctx[:1], torch.tensor([0]), torch.tensor([0.0], dtype=dt))
    pol.update(ctx[:10], torch.full((10,), 2), torch.zeros(10, dtype=dt))
    pol.update(ctx[:1], torch.tensor([1]), torch.tensor([1.0], dtype=dt))
    pol.update(ctx, torch.full((300,), 2), torch.zeros(300, dtype=dt))
    assert float(pol.counts[:2].max()) < 1e-12
    idx = pol.indices()
    assert idx[0] > idx[1] > 1e6
    assert pol.select(ctx[:1])[0].tolist() == [0]


def test_discounted_batch_weights_the_newest_row_most_and_equals_sequential_updates():
    assert ns._discount_weights(3, 0.5, torch.float64, torch.device("cpu")).tolist() == [0.25, 0.5, 1.0]
    dt = torch.float64
    batch, seq = (EpsilonGreedy(2, 0.0, forgetting=Discount(0.5), dtype=dt) for _ in range(2))
    actions, rewards = torch.tensor([0, 1, 0, 0]), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dt)
    batch.update(torch.zeros(4, 1, dtype=dt), actions, rewards)
    for a, r in zip(actions, rewards):
        seq.update(torch.zeros(1, 1, dtype=dt), a[None], r[None])
    assert torch.allclose(batch.counts, seq.counts) and torch.allclose(batch.reward_sums, seq.reward_sums)
    assert batch.reward_sums.tolist() == [1 * 0.125 + 3 * 0.5 + 4, 2 * 0.25]


def test_page_hinkley_alarm_needs_the_threshold_exceeded_and_min_samples_reached():
    """Residuals (0, 2) of one arm with delta 0: the upward statistic is exactly 1 at the second residual."""
    state = {k: torch.zeros(1, dtype=torch.float64) for k in ns._PH_FIELDS}
    signal, actions = torch.tensor([0.0, 2.0], dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    _, alarmed, _ = ns._page_hinkley_scan(state, signal, actions, 1, PageHinkley(0.0, 1.0, 1))
    assert not bool(alarmed[0])  # equal to the threshold is not above it
    keep, alarmed, _ = ns._page_hinkley_scan(state, signal, actions, 1, PageHinkley(0.0, 0.5, 2))
    assert bool(alarmed[0]) and keep.tolist() == [False, False]  # two residuals are min_samples=2
    _, alarmed, _ = ns._page_hinkley_scan(state, signal, actions, 1, PageHinkley(0.0, 0.5, 3))
    assert not bool(alarmed[0])


def test_forgetting_parameter_ranges():
    with pytest.raises(ValueError, match=r"Discount.gamma must be a finite number in \(0, 1\], got 0.0"):
        Discount(0.0)
    with pytest.raises(ValueError, match="PageHinkley.delta must be a finite number >= 0, got -0.1"):
        PageHinkley(delta=-0.1)
    assert Discount(1.0).gamma == 1.0 and PageHinkley(delta=0.0).delta == 0.0


def test_page_hinkley_minimum_carries_over_between_batches():
    """Residuals (1, 0) then (1): the running minimum of the upward sum (-0.5) is reached in the first batch."""
    cfg = PageHinkley(0.0, 10.0, 1)
    state = {k: torch.zeros(1, dtype=torch.float64) for k in ns._PH_FIELDS}
    _, _, state = ns._page_hinkley_scan(state, torch.tensor([1.0, 0.0], dtype=torch.float64), torch.zeros(2).long(),
                                        1, cfg)
    _, _, state = ns._page_hinkley_scan(state, torch.tensor([1.0], dtype=torch.float64), torch.zeros(1).long(), 1, cfg)
    assert state["up"].tolist() == pytest.approx([-1 / 6]) and state["up_min"].tolist() == [-0.5]
    assert state["dn_max"].tolist() == [0.0]


def test_page_hinkley_on_a_mean_policy_does_not_alarm_on_a_stationary_arm():
    # The residual is the reward minus the arm's mean (not its reward sum, which grows with every update).
    pol = EpsilonGreedy(2, 0.0, initial_value=1.0, forgetting=PageHinkley(0.01, 2.0, 3))
    for _ in range(5):
        pol.update(torch.zeros(10, 1), torch.zeros(10, dtype=torch.long), torch.ones(10))
    assert pol.resets.tolist() == [0, 0] and pol.means.tolist() == [1.0, 1.0]


def test_base_page_hinkley_resets_only_the_alarmed_arm_and_keeps_rows_after_the_alarm():
    pol = EpsilonGreedy(2, 0.0, forgetting=PageHinkley(0.01, 2.0, 3), dtype=torch.float64)
    ctx = torch.zeros(40, 1, dtype=torch.float64)
    pol.update(ctx[:20], torch.arange(20) % 2, torch.zeros(20, dtype=torch.float64))
    # Arm 0 jumps to 1 for 30 rows; arm 1 stays at 0 (its 10 rows interleaved after every third arm-0 row).
    actions = torch.tensor(([0, 0, 0, 1] * 10)[:40])
    pol.update(ctx, actions, (actions == 0).double())
    assert pol.resets.tolist() == [1, 0] and int(pol.steps) == 60
    assert pol.counts[1].item() == 20  # arm 1 keeps its statistics
    assert 0 < pol.counts[0].item() < 30 and pol.means[0].item() == 1.0  # arm 0 only counts rows after its alarm


def test_base_page_hinkley_watches_the_residual_not_the_raw_reward():
    """r = 5x with a stationary model; only the contexts shift (x = ±1 alternating, then x = +1 throughout). The raw
    reward jumps from mean 0 to 5, the prediction residual stays near 0: no change point."""
    dt = torch.float64
    pol = LinUCB(1, 1, alpha=0.0, lam=1.0, forgetting=PageHinkley(0.0, 20.0, 1), dtype=dt)
    a = torch.zeros(2, dtype=torch.long)
    for _ in range(20):
        x = torch.tensor([[-1.0], [1.0]], dtype=dt)
        pol.update(x, a, 5 * x[:, 0])
    for _ in range(10):
        x = torch.ones(2, 1, dtype=dt)
        pol.update(x, a, 5 * x[:, 0])
    assert pol.resets.tolist() == [0] and pol.counts.tolist() == [60.0]


def test_page_hinkley_on_a_mean_policy_ignores_the_warm_up_of_its_own_mean():
    """A constant reward of 3 fed row by row (defaults δ = 0.05, λ = 5, min 5) is no change point. Measured against
    initial_value 0, the residuals were 3, 0, 0, ...: their running mean 3/t makes the downward statistic
    3(H_t - 1) - (t - 1)δ, 4.80 at t = 8 and 5.09 at t = 9, a false alarm every 9 rows forever. Against the running
    mean of the arm's own earlier rewards (the first row, with none, is not tested) every residual is exactly 0."""
    dt = torch.float64
    for pol in (EpsilonGreedy(1, 0.0, forgetting=PageHinkley(), dtype=dt),
                ThompsonSampling(1, "gaussian", forgetting=PageHinkley(), dtype=dt)):
        for _ in range(30):
            pol.update(torch.zeros(1, 1, dtype=dt), torch.zeros(1, dtype=torch.long), torch.full((1,), 3.0, dtype=dt))
        assert pol.resets.tolist() == [0] and pol.counts.tolist() == [30.0]


def test_page_hinkley_on_a_mean_policy_alarms_where_hand_derived_and_batches_equal_single_rows():
    """20 rewards of 3, then 20 of 0. Rows 2..20 have residual 0 (PH: n = 19, dn = dn_max = 19δ = 0.95). Row 21:
    e = -3, PH mean -3/20, dn += -3 + 0.15 + 0.05 -> -1.85, statistic 2.8. Row 22: e = -60/21 = -2.857, PH mean
    -5.857/21 = -0.279, dn += -2.528 -> -4.378, statistic 5.33 > 5: the alarm is on row 22. Rows up to it are
    forgotten; rows 23..40 (18 zeros) are kept, and after them no further alarm (residuals 0 again)."""
    dt = torch.float64
    r = torch.cat([torch.full((20,), 3.0, dtype=dt), torch.zeros(20, dtype=dt)])
    seq = EpsilonGreedy(1, 0.0, forgetting=PageHinkley(), dtype=dt)
    for i in range(40):
        seq.update(torch.zeros(1, 1, dtype=dt), torch.zeros(1, dtype=torch.long), r[i:i + 1])
        assert int(seq.resets[0]) == (1 if i >= 21 else 0), i
    whole = EpsilonGreedy(1, 0.0, forgetting=PageHinkley(), dtype=dt)
    whole.update(torch.zeros(40, 1, dtype=dt), torch.zeros(40, dtype=torch.long), r)
    for pol in (seq, whole):
        assert pol.resets.tolist() == [1] and pol.counts.tolist() == [18.0] and pol.reward_sums.tolist() == [0.0]
    for k in ns._PH_FIELDS:
        assert torch.allclose(getattr(seq, f"_ph_{k}"), getattr(whole, f"_ph_{k}"), atol=1e-12), k


LINEAR = {
    "linucb": lambda d, dt: LinUCB(2, d, forgetting=PageHinkley(), dtype=dt),
    "lints": lambda d, dt: LinTS(2, d, forgetting=PageHinkley(), dtype=dt),
}


def _linear_stream(n, d, seed, dtype=torch.float32):
    """Contexts [1, U(0,1)^(d-1)], reward 2 + 0.1·N(0, 1) whatever the context; every row plays arm 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.ones(n, 1), torch.rand(n, d - 1, generator=g)], 1).to(dtype)
    r = (2.0 + 0.1 * torch.randn(n, generator=g)).to(dtype)
    return x, torch.zeros(n, dtype=torch.long), r


@pytest.mark.parametrize("name", list(LINEAR))
@pytest.mark.parametrize("d", [1, 4])
@pytest.mark.parametrize("batch", [1, 100])
def test_page_hinkley_on_a_linear_policy_does_not_alarm_on_a_stationary_arm(name, d, batch):
    """Against the ridge prediction, shrunk towards 0 by about 2λ/n at the n-th row, this stream raised 134 (d = 1)
    and 125 (d = 4) false alarms in 2000 rows fed row by row and 1 in batches of 100 (the second batch, after a first
    one predicted as 0). Against the least-squares fit of the arm's earlier rows the residual has mean 0; rows with
    leverage > 1 are not tested, so the tested ones have variance at most 2σ² = 0.02. Page–Hinkley's upward
    statistic is then a random walk with drift -δ = -0.05 reflected at 0, whose level is about exponential with mean
    σ²/(2δ) = 0.1: exceeding λ = 5 has probability of order e^-50 per row (the downward one likewise)."""
    x, a, r = _linear_stream(1000, d, seed=0)
    pol = LINEAR[name](d, torch.float32)
    for i in range(0, 1000, batch):
        pol.update(x[i:i + batch], a[i:i + batch], r[i:i + batch])
    assert pol.resets.tolist() == [0, 0] and pol.counts.tolist() == [1000.0, 0.0]
    assert int(pol._ph_n[0]) >= 900  # nearly every row was tested (all but the first batch or first few rows)


def test_page_hinkley_on_hybrid_linucb_does_not_alarm_on_a_stationary_arm():
    """The same stream for HybridLinUCB (x = [1, u], z = [u', u'']): against its ridge prediction 126 false alarms in
    2000 rows (131 with x = [1], z = [u]); against the joint least-squares fit none, for the reasons above."""
    x, a, r = _linear_stream(600, 4, seed=1)
    pol = HybridLinUCB(2, 2, 2, forgetting=PageHinkley())
    for i in range(600):
        pol.update(x[i:i + 1], a[i:i + 1], r[i:i + 1])
    assert pol.resets.tolist() == [0, 0] and int(pol._ph_n[0]) > 550


@pytest.mark.parametrize("name", list(LINEAR))
@pytest.mark.parametrize("d", [1, 4])
@pytest.mark.parametrize("batch", [1, 10, 100])
def test_page_hinkley_on_a_linear_policy_alarms_on_the_second_row_after_a_jump(name, d, batch):
    """Reward mean 2 -> 5 from row 500. The fit on ~500 earlier rows predicts 2 within ~0.01, so rows 500 and 501
    have residuals e ≈ 3 (fed row by row, row 501's fit includes row 500: 3·500/501 ≈ 2.99). Each adds about
    e - mean - δ ≈ 3 - 3/501 - 0.05 ≈ 2.94 to the upward statistic, which stood at a reflected-walk level of order
    0.1 (see above): ≈ 2.9-3.3 < 5 after row 500, ≈ 5.9-6.3 > 5 after row 501. The alarm is on row 501 whether the
    change falls between batches or inside one; rows 502..999 (498) are kept and predict 5, no further alarm."""
    x, a, r = _linear_stream(1000, d, seed=2, dtype=torch.float64)
    r[500:] += 3.0
    pol = LINEAR[name](d, torch.float64)
    for i in range(0, 1000, batch):
        pol.update(x[i:i + batch], a[i:i + batch], r[i:i + batch])
        assert int(pol.resets[0]) == (1 if i + batch > 501 else 0), i
    assert pol.resets.tolist() == [1, 0] and pol.counts.tolist() == [498.0, 0.0]
    q = torch.cat([torch.ones(1, 1), torch.full((1, d - 1), 0.5)], 1).to(torch.float64)
    assert abs(float(pol.expected_reward(q)[0, 0]) - 5.0) < 0.1


def test_page_hinkley_on_a_linear_policy_does_not_test_rows_without_a_least_squares_prediction():
    """(a) A fresh arm with d = 4 has no fit: a first batch of 50 rows jumping from 0 to 100 after row 10 tests no
    row (before, all were tested against the prediction 0 and the jump alarmed).
    (b) 20 rows at context [1, 0], one at a time, fit the first coordinate only: the first two are not tested (fewer
    than F = 2 earlier rows), the other 18 are (leverage 1/n <= 1). A row at [0, 1] lies outside their span
    (leverage ~ 1/ε): not tested however far its reward.
    (c) Rows of an arm after its alarm in a batch are not tested. 10 rows of 0 in one batch (untested) give the arm a
    fit; 5 more one at a time give 5 tested residuals 0 (upward statistic -5δ, its minimum). The next batch jumps to
    10: on its first row the PH mean is 10/6 and the statistic 10 - 10/6 - δ = 8.28 > 5 with n = 6 >= 5, an alarm.
    9 more rows of 10 and 30 of -10 follow; tested against the stale pre-batch fit (0), the fall from 10 to -10
    would alarm again (it does in the bare scan, keeping only 29 rows). Untested, the batch resets once, keeps the
    39 rows after the alarm, and leaves the arm's test state empty."""
    dt = torch.float64
    a1 = torch.zeros(1, dtype=torch.long)
    pol = LinUCB(1, 4, forgetting=PageHinkley(), dtype=dt)
    x = torch.ones(50, 4, dtype=dt)
    x[:, 1:] = torch.rand(50, 3, generator=torch.Generator().manual_seed(3), dtype=dt)
    r = torch.cat([torch.zeros(10, dtype=dt), torch.full((40,), 100.0, dtype=dt)])
    pol.update(x, torch.zeros(50, dtype=torch.long), r)
    assert pol.resets.tolist() == [0] and pol._ph_n.tolist() == [0.0] and pol.counts.tolist() == [50.0]

    pol = LinUCB(1, 2, forgetting=PageHinkley(), dtype=dt)
    for _ in range(20):
        pol.update(torch.tensor([[1.0, 0.0]], dtype=dt), a1, torch.zeros(1, dtype=dt))
    assert pol._ph_n.tolist() == [18.0]
    pol.update(torch.tensor([[0.0, 1.0]], dtype=dt), a1, torch.full((1,), 1e3, dtype=dt))
    assert pol.resets.tolist() == [0] and pol._ph_n.tolist() == [18.0] and pol.counts.tolist() == [21.0]

    pol = LinUCB(1, 1, forgetting=PageHinkley(), dtype=dt)
    one = torch.ones(40, 1, dtype=dt)
    pol.update(one[:10], torch.zeros(10, dtype=torch.long), torch.zeros(10, dtype=dt))
    for _ in range(5):
        pol.update(one[:1], a1, torch.zeros(1, dtype=dt))
    assert pol._ph_n.tolist() == [5.0]
    state = {k: getattr(pol, f"_ph_{k}").clone() for k in ns._PH_FIELDS}
    r = torch.cat([torch.full((10,), 10.0, dtype=dt), torch.full((30,), -10.0, dtype=dt)])
    pol.update(one, torch.zeros(40, dtype=torch.long), r)
    assert pol.resets.tolist() == [1] and pol.counts.tolist() == [39.0] and pol._ph_n.tolist() == [0.0]
    keep, _, _ = ns._page_hinkley_scan(state, r, torch.zeros(40, dtype=torch.long), 1, PageHinkley())
    assert int(keep.sum()) == 29  # the same residuals, all tested: a second alarm
