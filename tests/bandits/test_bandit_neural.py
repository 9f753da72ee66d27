"""NeuralLinear: constructor checks, encoder layout and seeding, the retraining schedule and its replay buffer, the two
heads, and persistence of every setting."""

from __future__ import annotations

import copy

import pytest
import torch

from arr_coc.bandits import BanditPolicy, Discount, NeuralLinear

DT = torch.float64


def test_constructor_rejects_bad_settings_and_accepts_alpha_zero():
    with pytest.raises(ValueError, match="forgetting"):
        NeuralLinear(3, 4, forgetting=Discount(0.9))
    with pytest.raises(ValueError, match=r"hidden_sizes.*\(8, 0\)"):
        NeuralLinear(3, 4, hidden_sizes=(8, 0))
    with pytest.raises(ValueError, match="head.*'greedy'"):
        NeuralLinear(3, 4, head="greedy")
    with pytest.raises(ValueError, match="lr.*0.0"):
        NeuralLinear(3, 4, lr=0.0)
    assert NeuralLinear(3, 4, alpha=0.0).alpha == 0.0  # pure exploitation is allowed


def test_encoder_layout_and_seeded_initialisation():
    pol = NeuralLinear(3, 4, (8, 6), seed=1)
    # ReLU between hidden layers only: the head sees the last Linear's output, which may be negative.
    assert [type(m) for m in pol.encoder] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert [(m.in_features, m.out_features) for m in pol.encoder[::2]] == [(4, 8), (8, 6)]
    assert (pol.readout.in_features, pol.readout.out_features) == (6, 3)
    torch.manual_seed(123)  # the global RNG state does not matter, only `seed`
    same = NeuralLinear(3, 4, (8, 6), seed=1)
    other = NeuralLinear(3, 4, (8, 6), seed=2)
    for (k, v), w in zip(pol.state_dict().items(), same.state_dict().values()):
        assert torch.equal(v, w), k
    assert not torch.equal(pol.encoder[0].weight, other.encoder[0].weight)


def _reference_retrain(encoder, readout, x, a, r, *, seed, lr, steps, batch_size):
    """The documented retraining: Adam on the MSE of the chosen arm's read-out, minibatches drawn with replacement
    by a generator seeded with ``seed + steps seen``."""
    m = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(list(encoder.parameters()) + list(readout.parameters()), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, m, (min(batch_size, m),), generator=gen)
        pred = readout(encoder(x[idx])).gather(1, a[idx, None])[:, 0]
        loss = torch.mean((pred - r[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _assert_head_matches(pol, x, a, r):
    """The head's statistics are those of the whole buffer (x, a, r) under the current encoder."""
    with torch.no_grad():
        phi = pol.encoder(x)
    counts = torch.bincount(a, minlength=pol.n_arms).to(DT)
    gram = torch.zeros_like(pol.gram).index_add_(0, a, phi[:, :, None] * phi[:, None, :])
    xr = torch.zeros_like(pol.xr).index_add_(0, a, r[:, None] * phi)
    assert torch.allclose(pol.counts, counts) and torch.allclose(pol.gram, gram) and torch.allclose(pol.xr, xr)
    eye = torch.eye(pol.feat_dim, dtype=DT)
    theta = torch.linalg.solve(gram + pol.lam * eye, xr[..., None])[..., 0]
    assert torch.allclose(pol.theta, theta)


def test_retraining_schedule_replay_buffer_and_head_rebuild():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g, dtype=DT)
    a = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1, 0, 1, 2, 0])
    r = torch.randn(12, generator=g, dtype=DT)
    kw = dict(seed=3, lr=0.05, train_steps=5, batch_size=7)  # 7 > 6 rows at the first retraining
    pol = NeuralLinear(3, 4, (6, 5), buffer_size=8, train_every=6, dtype=DT, **kw)
    enc, ro = copy.deepcopy(pol.encoder), copy.deepcopy(pol.readout)

    pol.update(x[:4], a[:4], r[:4])  # 4 < train_every: no retraining yet
    assert int(pol._since_train) == 4
    assert all(torch.equal(p, q) for p, q in zip(pol.encoder.parameters(), enc.parameters()))

    pol.update(x[4:6], a[4:6], r[4:6])  # 6 rows seen: retrain exactly now, on all 6
    assert int(pol._since_train) == 0
    _reference_retrain(enc, ro, x[:6], a[:6], r[:6], seed=3 + 6, lr=0.05, steps=5, batch_size=7)
    for p, q in zip(list(pol.encoder.parameters()) + list(pol.readout.parameters()),
                    list(enc.parameters()) + list(ro.parameters())):
        assert torch.allclose(p, q, atol=1e-12)
    _assert_head_matches(pol, x[:6], a[:6], r[:6])

    pol.update(x[6:10], a[6:10], r[6:10])  # 10 rows into a buffer of 8: the oldest two are dropped
    assert int(pol._buf_len) == 8 and int(pol._since_train) == 4
    ring = torch.tensor([8, 9, 2, 3, 4, 5, 6, 7])  # newest rows overwrite slots 0 and 1
    assert torch.equal(pol._buf_x, x[ring]) and torch.equal(pol._buf_a, a[ring]) and torch.equal(pol._buf_r, r[ring])

    pol.update(x[10:], a[10:], r[10:])  # second retraining, on the 8 buffered rows (4..11) in slot order
    assert int(pol._since_train) == 0 and int(pol.steps) == 12
    ring = torch.tensor([8, 9, 10, 11, 4, 5, 6, 7])
    _reference_retrain(enc, ro, x[ring], a[ring], r[ring], seed=3 + 12, lr=0.05, steps=5, batch_size=7)
    assert all(torch.allclose(p, q, atol=1e-12) for p, q in zip(pol.encoder.parameters(), enc.parameters()))
    _assert_head_matches(pol, x[4:], a[4:], r[4:])


def _fitted(head, alpha):
    g = torch.Generator().manual_seed(1)
    pol = NeuralLinear(3, 4, (6,), head=head, alpha=alpha, train_every=1000, n_mc=64, dtype=DT)
    x = torch.randn(30, 4, generator=g, dtype=DT)
    pol.update(x, torch.arange(30) % 3, torch.randn(30, generator=g, dtype=DT))
    return pol, torch.randn(7, 4, generator=g, dtype=DT)


def test_ucb_head_scores_are_mean_plus_alpha_times_width():
    pol, ctx = _fitted("ucb", 0.8)
    mean, width = pol.expected_reward(ctx), pol.uncertainty(ctx)
    assert bool((width > 0).all())
    assert torch.allclose(pol.scores(ctx), mean + 0.8 * width)
    best = pol.scores(ctx).argmax(1)
    assert torch.equal(pol.action_probabilities(ctx), torch.nn.functional.one_hot(best, 3).to(DT))


def test_ts_head_scales_its_draws_by_alpha():
    pol, ctx = _fitted("ts", 0.0)  # alpha = 0: every draw is the posterior mean
    mean = pol.expected_reward(ctx)
    best = mean.argmax(1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(pol.scores(ctx, generator=g), mean)
    assert torch.equal(pol.action_probabilities(ctx, generator=g), torch.nn.functional.one_hot(best, 3).to(DT))
    actions, props = pol.select(ctx, generator=g)
    assert torch.equal(actions, best) and bool((props == 1).all())
    wide, _ = _fitted("ts", 5.0)  # a wide posterior spreads the Monte Carlo probabilities
    assert float(wide.action_probabilities(ctx, generator=g).max(1).values.min()) < 1.0


def test_save_load_keeps_every_setting(tmp_path):
    settings = dict(hidden_sizes=(7, 5), head="ts", alpha=0.4, lam=2.0, buffer_size=32, train_every=9, train_steps=4,
                    batch_size=5, lr=0.02, n_mc=16, seed=7)
    pol = NeuralLinear(3, 4, **settings)
    pol.save(tmp_path / "neural.safetensors")
    loaded = BanditPolicy.load(tmp_path / "neural.safetensors")
    assert type(loaded) is NeuralLinear and (loaded.n_arms, loaded.dim) == (3, 4)
    for k, v in settings.items():
        assert getattr(loaded, k) == v, k
