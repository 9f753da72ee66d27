"""The ``bandit`` token allocator: budget contract, credit assignment, learning, uncertainty, pipeline, errors."""

from __future__ import annotations

import pytest
import torch

from arr_coc import ArrCoc, create_allocator, list_allocators
from arr_coc.allocators.bandit import BanditAllocator
from arr_coc.allocators.mckp import level_values, solve_mckp
from arr_coc.bandits import Discount
from _bandit_helpers import _single_thread  # noqa: F401  (autouse fixture: one intra-op thread per test)


def test_registered():
    assert "bandit" in list_allocators()
    assert isinstance(create_allocator("bandit", context_dim=5), BanditAllocator)


@pytest.mark.parametrize("policy", ["ucb", "ts"])
def test_default_preset_exact_budget_and_levels(policy):
    alloc = create_allocator("bandit", context_dim=11, policy=policy)  # 13,200 tokens over K=200, 64..400
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(3, 200, generator=g), torch.randn(3, 200, 11, generator=g)
    for _ in range(3):
        t = alloc(u, context=c)
        assert t.dtype == torch.int64 and t.shape == (3, 200)
        assert (t.sum(-1) == 13200).all()
        assert set(t.unique().tolist()) <= {64, 128, 256, 400}
        alloc.update(torch.rand(3, generator=g))


def test_at_most_lagrangian_path():
    alloc = create_allocator("bandit", budget=8 * 10, min_tokens=4, max_tokens=20, levels=(4, 8, 20),
                             mode="at_most", method="lagrangian", context_dim=6)
    g = torch.Generator().manual_seed(1)
    t = alloc(torch.randn(4, 8, generator=g), context=torch.randn(4, 8, 6, generator=g))
    assert (t.sum(-1) <= 80).all() and (t >= 4).all() and (t <= 20).all()
    assert torch.equal(alloc.last_info.slack, 80 - t.sum(-1))


def test_credit_assignment_is_joint_additive_ridge():
    """The statistics equal a ridge fit of r_b on Φ_b = Σ_k e_{l_k} ⊗ x_k (the documented credit assignment)."""
    levels = (2, 4, 8)
    alloc = create_allocator("bandit", budget=24, min_tokens=2, max_tokens=8, levels=levels, mode="at_most",
                             context_dim=5, proj_dim=3, lam=0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    phis, rs = [], []
    for _ in range(4):
        c = torch.randn(6, 5, 5, generator=g, dtype=torch.float64)
        t = alloc(torch.randn(6, 5, generator=g, dtype=torch.float64), context=c)
        r = torch.randn(6, generator=g, dtype=torch.float64)
        alloc.update(r)
        x = torch.cat([c @ alloc.proj, torch.ones(6, 5, 1, dtype=torch.float64)], -1)  # (B, K, 4)
        lvl = (t[..., None] == torch.tensor(levels)).double()  # (B, K, L)
        phis.append(torch.einsum("bkl,bkw->blw", lvl, x).reshape(6, -1))
        rs.append(r)
    phi, r = torch.cat(phis), torch.cat(rs)
    a = 0.5 * torch.eye(phi.shape[1], dtype=torch.float64) + phi.T @ phi
    theta = torch.linalg.solve(a, phi.T @ r)
    assert torch.allclose(alloc.policy.theta[0], theta, atol=1e-9)
    # the values the knapsack sees are θ_lᵀx + alpha·width, from the diagonal blocks of A⁻¹
    c = torch.randn(2, 5, 5, generator=g, dtype=torch.float64)
    x = torch.cat([c @ alloc.proj, torch.ones(2, 5, 1, dtype=torch.float64)], -1)
    a_inv = torch.linalg.inv(a)
    want = torch.empty(2, 5, 3, dtype=torch.float64)
    for l in range(3):
        e = torch.zeros(2, 5, 3 * 4, dtype=torch.float64)
        e[..., l * 4:(l + 1) * 4] = x
        want[..., l] = e @ theta + torch.sqrt(torch.einsum("bkp,pq,bkq->bk", e, a_inv, e))
    assert torch.allclose(alloc.bandit_values(c), want, atol=1e-9)


def test_update_with_explicit_context_and_budgets_matches_pending():
    kw = dict(budget=20, min_tokens=2, max_tokens=8, levels=(2, 4, 8), mode="at_most", context_dim=4)
    a1, a2 = create_allocator("bandit", **kw), create_allocator("bandit", **kw)
    g = torch.Generator().manual_seed(3)
    c, u = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, generator=g)
    t = a1(u, context=c)
    r = torch.rand(3, generator=g)
    a1.update(r)
    a2.update(r, context=c, budgets=t)
    assert torch.allclose(a1.policy.theta, a2.policy.theta, atol=1e-6)


def _problem(seed=0, k=6, c_dim=4):
    """Additive ground truth: patch k gains w·x_k per unit of log-level; only the informative patches deserve tokens."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c_dim, generator=g)
    return g, w


def _true_value(c, t, w, levels):
    gain = torch.log2(t.double() / levels[0])  # 0, 1, 2, ... per level step
    return ((c.double() @ w.double()) * gain).sum(-1)  # (B,)


@pytest.mark.parametrize("policy", ["ucb", "ts"])
def test_learns_to_beat_random_allocation(policy):
    levels, k, c_dim, budget = (2, 4, 8), 6, 4, 6 * 4
    g, w = _problem()
    alloc = create_allocator("bandit", budget=budget, min_tokens=2, max_tokens=8, levels=levels, mode="at_most",
                             context_dim=c_dim, proj_dim=c_dim, policy=policy, alpha=0.5, utility_weight=0.0,
                             dtype=torch.float64)
    for _ in range(40):
        c = torch.randn(32, k, c_dim, generator=g, dtype=torch.float64)
        t = alloc(torch.zeros(32, k, dtype=torch.float64), context=c)
        alloc.update(_true_value(c, t, w, levels) + 0.1 * torch.randn(32, generator=g, dtype=torch.float64))
    c = torch.randn(256, k, c_dim, generator=g, dtype=torch.float64)
    learned = _true_value(c, alloc(torch.zeros(256, k, dtype=torch.float64), context=c), w, levels).mean()
    # oracle: the knapsack on the true per-(patch, level) values; random: uniform random feasible levels
    truth = (c @ w.double())[..., None] * torch.log2(torch.tensor(levels, dtype=torch.float64) / levels[0])
    oracle = _true_value(c, solve_mckp(truth, levels, budget, mode="at_most").tokens, w, levels).mean()
    rand_vals = (torch.rand(256, k, 3, generator=g, dtype=torch.float64))
    rnd = _true_value(c, solve_mckp(rand_vals, levels, budget, mode="at_most").tokens, w, levels).mean()
    assert learned - rnd > 0.8 * (oracle - rnd), (float(learned), float(rnd), float(oracle))


@pytest.mark.parametrize("policy", ["ucb", "ts"])
@pytest.mark.parametrize("eval_policy", ["auto", "greedy", "same"])
def test_eval_mode_selection(policy, eval_policy):
    # module.eval(): "greedy" selects by the posterior mean v = θᵀx (no UCB bonus, no draw); "same" as in training;
    # "auto" (the default) keeps UCB's deterministic bonus and replaces TS's random draw by the mean. Train mode
    # explores as before whatever eval_policy says.
    kw = dict(budget=20, min_tokens=2, max_tokens=8, levels=(2, 4, 8), mode="at_most", context_dim=4, policy=policy,
              alpha=2.0)
    alloc = create_allocator("bandit", **kw, eval_policy=eval_policy)
    g = torch.Generator().manual_seed(7)
    for _ in range(5):
        alloc(torch.randn(16, 5, generator=g), context=torch.randn(16, 5, 4, generator=g))
        alloc.update(torch.rand(16, generator=g))
    c = torch.randn(64, 5, 4, generator=g)
    x = alloc._features(c)
    theta, _ = alloc._blocks()
    mean = torch.einsum("bkw,lw->bkl", x, theta)
    train_values = alloc.bandit_values(c, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(train_values, mean)  # training explores
    alloc.eval()
    got = alloc.bandit_values(c, generator=torch.Generator().manual_seed(0))
    greedy = eval_policy == "greedy" or (eval_policy == "auto" and policy == "ts")
    assert torch.equal(got, mean if greedy else train_values)
    if eval_policy != "same" or policy == "ucb":  # deterministic in eval
        assert torch.equal(got, alloc.bandit_values(c, generator=torch.Generator().manual_seed(1)))


def test_eval_policy_is_checked():
    with pytest.raises(ValueError, match="eval_policy must be one of"):
        create_allocator("bandit", context_dim=4, eval_policy="optimistic")


def test_uncertainty_shrinks_with_data():
    alloc = create_allocator("bandit", budget=20, min_tokens=2, max_tokens=8, levels=(2, 4, 8), mode="at_most",
                             context_dim=4)
    g = torch.Generator().manual_seed(4)
    c = torch.randn(2, 5, 4, generator=g)
    before = alloc.uncertainty(c)
    assert before.shape == (2, 5) and (before > 0).all()
    for _ in range(20):
        cc = torch.randn(16, 5, 4, generator=g)
        alloc(torch.randn(16, 5, generator=g), context=cc)
        alloc.update(torch.rand(16, generator=g))
    assert (alloc.uncertainty(c) < before).all()


def test_state_dict_roundtrip_reproduces_allocation():
    kw = dict(budget=20, min_tokens=2, max_tokens=8, levels=(2, 4, 8), mode="at_most", context_dim=4,
              forgetting=Discount(0.99))
    a1 = create_allocator("bandit", **kw)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        c = torch.randn(8, 5, 4, generator=g)
        a1(torch.randn(8, 5, generator=g), context=c)
        a1.update(torch.rand(8, generator=g))
    a2 = create_allocator("bandit", **kw)
    a2.load_state_dict(a1.state_dict())
    c, u = torch.randn(4, 5, 4, generator=g), torch.randn(4, 5, generator=g)
    assert torch.equal(a1(u, context=c), a2(u, context=c))
    assert torch.allclose(a1.uncertainty(c), a2.uncertainty(c))
    lazy = create_allocator("bandit", **{**kw, "context_dim": None})  # a lazy projection adopts the saved one
    lazy.load_state_dict(a1.state_dict())
    assert lazy.context_dim == 4 and torch.equal(lazy(u, context=c), a1(u, context=c))


def test_in_pipeline_context_and_uncertainty_flow():
    k, d, lo, hi, budget = 8, 6, 4, 20, 8 * 10
    model = ArrCoc(d, d, num_patches=k, budget=budget, min_tokens=lo, max_tokens=hi, allocator="bandit",
                   allocator_kwargs={"levels": (4, 8, 20), "mode": "at_most"})
    g = torch.Generator().manual_seed(6)
    feats, query = torch.randn(2, k, 2, 2, d, generator=g), torch.randn(2, d, generator=g)
    with torch.no_grad():  # the allocation path; the straight-through relaxation is the registry's, tested elsewhere
        out = model(feats, query=query)
    assert (out.budgets.sum(-1) <= budget).all() and set(out.budgets.unique().tolist()) <= {4, 8, 20}
    assert model.attending.context_dim == 2 * d + 3  # [query; patch mean; 3 scores]
    model.attending.update(torch.tensor([1.0, 0.0]))
    assert int(model.attending.policy.steps) == 2


def test_errors():
    alloc = create_allocator("bandit", budget=20, min_tokens=2, max_tokens=8, levels=(2, 4, 8), mode="at_most",
                             context_dim=4)
    u = torch.randn(2, 5)
    with pytest.raises(ValueError, match="needs context"):
        alloc(u)
    with pytest.raises(ValueError, match="width 3"):
        alloc(u, context=torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"\(B, K\) = \(2, 4\)"):
        alloc(u, context=torch.randn(2, 4, 4))
    bad = torch.randn(2, 5, 4)
    bad[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        alloc(u, context=bad)
    with pytest.raises(ValueError, match="before any forward"):
        alloc.update(torch.ones(2))
    t = alloc(u, context=torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        alloc.update(torch.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        alloc.update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="not one of the levels"):
        alloc.update(torch.ones(2), context=torch.randn(2, 5, 4), budgets=t + 1)
    with pytest.raises(ValueError, match="policy"):
        create_allocator("bandit", policy="greedy")
    with pytest.raises(ValueError, match="proj_dim"):
        create_allocator("bandit", proj_dim=0)


def _trained(policy="ucb", alpha=2.0, **extra):
    kw = dict(budget=20, min_tokens=2, max_tokens=8, levels=(2, 4, 8), mode="at_most", context_dim=4, policy=policy,
              alpha=alpha, **extra)
    alloc = create_allocator("bandit", **kw)
    g = torch.Generator().manual_seed(7)
    for _ in range(5):
        alloc(torch.randn(16, 5, generator=g), context=torch.randn(16, 5, 4, generator=g))
        alloc.update(torch.rand(16, generator=g))
    return alloc, g


def _width_ref(alloc, x):
    """sqrt(x_kᵀ (A⁻¹)_{ll} x_k) from the full A⁻¹ by slicing its diagonal blocks: (B, K, w) -> (B, K, L)."""
    w = x.shape[-1]
    a_inv = alloc.policy.A_inv[0]
    return torch.stack([torch.einsum("bkp,pq,bkq->bk", x, a_inv[l * w:(l + 1) * w, l * w:(l + 1) * w], x).sqrt()
                        for l in range(len(alloc.levels))], -1)


def test_fresh_ucb_values_are_alpha_times_the_ridge_width():
    # No data: θ = 0 and A = lam·I, so v[k, l] = alpha·|x_k|/sqrt(lam) for every level, x_k = [c_k @ proj; 1].
    alloc = create_allocator("bandit", budget=20, min_tokens=2, max_tokens=8, levels=(2, 4, 8), mode="at_most",
                             context_dim=4, alpha=3.0, lam=4.0)
    c = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.cat([c @ alloc.proj, torch.ones(2, 5, 1, dtype=torch.float64)], -1)
    want = (3.0 * x.norm(dim=-1) / 2.0)[..., None].expand(2, 5, 3)
    torch.testing.assert_close(alloc.bandit_values(c), want)


def test_ts_draw_has_the_posterior_covariance():
    # θ̃ = θ + v·Lε with LLᵀ = A⁻¹: over many samples v[k, l] has mean θ_lᵀx_k and variance v²·x_kᵀ(A⁻¹)_{ll}x_k.
    alloc, g = _trained(policy="ts", alpha=2.0)
    c = torch.randn(1, 5, 4, generator=g)
    x = alloc._features(c)
    v = alloc.bandit_values(c.expand(20000, 5, 4), generator=torch.Generator().manual_seed(0))
    want_var = 4.0 * _width_ref(alloc, x)[0] ** 2
    ratio = v.var(0) / want_var
    assert bool(((ratio > 0.9) & (ratio < 1.1)).all()), ratio  # measured: within 3% of 1
    mean = torch.einsum("bkw,lw->bkl", x, alloc._blocks()[0])[0]
    assert bool(((v.mean(0) - mean).abs() < 0.1 * want_var.sqrt()).all())


def test_uncertainty_is_the_width_averaged_over_levels():
    alloc, g = _trained()
    c = torch.randn(3, 5, 4, generator=g)
    torch.testing.assert_close(alloc.uncertainty(c), _width_ref(alloc, alloc._features(c)).mean(-1).float())


def test_knapsack_values_add_the_weighted_utility_prior():
    # The knapsack sees bandit value + utility_weight · level_values(utility) (or the per-level utility itself).
    alloc, g = _trained(utility_weight=0.5)
    alloc.eval()  # UCB in eval mode: deterministic values
    c, u = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, generator=g)
    alloc(u, context=c)
    want = alloc.bandit_values(c) + 0.5 * level_values(u.double(), alloc.levels)
    torch.testing.assert_close(alloc.last_info.extra["bandit_values"], want)
    per_level = torch.randn(3, 5, 3, generator=g)
    alloc(per_level, context=c)
    want = alloc.bandit_values(c) + 0.5 * per_level.double()
    torch.testing.assert_close(alloc.last_info.extra["bandit_values"], want)


@pytest.mark.parametrize("n_levels", [1, 2])
def test_per_level_utility_must_have_one_value_per_level(n_levels):
    # (B, K, 1) broadcast silently over the three levels without this check.
    alloc, g = _trained()
    with pytest.raises(ValueError, match=rf"per-level utility has shape \(3, 5, {n_levels}\), expected \(3, 5, 3\)"):
        alloc(torch.randn(3, 5, n_levels, generator=g), context=torch.randn(3, 5, 4, generator=g))


def test_update_consumes_the_pending_allocation():
    # One forward, one update: a second update() would credit the same allocation twice.
    alloc, g = _trained()
    alloc(torch.randn(2, 5, generator=g), context=torch.randn(2, 5, 4, generator=g))
    alloc.update(torch.ones(2))
    with pytest.raises(ValueError, match="before any forward"):
        alloc.update(torch.ones(2))
    with pytest.raises(ValueError, match="pass both context and budgets"):
        alloc.update(torch.ones(2), context=torch.randn(2, 5, 4, generator=g))


def test_defaults_and_construction_checks():
    alloc = create_allocator("bandit", context_dim=400)
    # float64 statistics by default (the docstring's reason: float32 round-off outgrew lam in a long run).
    assert alloc.policy.dtype == torch.float64 and alloc.proj.dtype == torch.float64
    # Gaussian projection entries of variance 1/C: projected features stay on the raw ones' scale.
    assert abs(float(alloc.proj.std()) * 400**0.5 - 1.0) < 0.05
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="utility_weight must be a finite number"):
            create_allocator("bandit", utility_weight=bad)


def test_update_names_a_non_level_budget_as_given():
    # A fractional budget was reported truncated ("budget 2 is not one of the levels [2, 4, 8]": 2 is a level).
    alloc, g = _trained()
    c = torch.randn(2, 5, 4, generator=g)
    t = alloc(torch.randn(2, 5, generator=g), context=c)
    with pytest.raises(ValueError, match=r"budget 2\.5 is not one of the levels \[2, 4, 8\]"):
        alloc.update(torch.ones(2), context=c, budgets=torch.full((2, 5), 2.5))
    with pytest.raises(ValueError, match=r"budget 3 is not one of the levels"):
        alloc.update(torch.ones(2), context=c, budgets=torch.where(t == t[0, 0], 3, t))


def test_update_names_budgets_when_their_shape_disagrees_with_the_context():
    # The message blamed a "utility", which update() does not take.
    alloc, g = _trained()
    c = torch.randn(3, 5, 4, generator=g)
    t = alloc(torch.randn(2, 5, generator=g), context=c[:2])
    with pytest.raises(ValueError, match=r"context has \(B, K\) = \(3, 5\) but budgets has \(2, 5\)"):
        alloc.update(torch.ones(3), context=c, budgets=t)


def test_empty_batch_allocates_and_updates_nothing():
    # forward() takes B = 0; update() of its zero rewards raised "contexts must have at least one row, got shape
    # (0, 51)", naming the bandit's internal features rather than anything passed.
    alloc, g = _trained()
    before = {k: v.clone() for k, v in alloc.state_dict().items()}
    t = alloc(torch.randn(0, 5), context=torch.randn(0, 5, 4))
    assert t.shape == (0, 5)
    alloc.update(torch.ones(0))
    alloc.update(torch.ones(0), context=torch.randn(0, 5, 4), budgets=t)
    assert all(torch.equal(v, before[k]) for k, v in alloc.state_dict().items())
    with pytest.raises(ValueError, match="before any forward"):  # the empty allocation was consumed
        alloc.update(torch.ones(0))


@pytest.mark.parametrize("cast", ["to_bf16", "half", "float"])
def test_a_model_wide_cast_keeps_the_statistics_precision(cast):
    # model.to(torch.bfloat16) (or .half(), or .float()) on a VLM used to pull the ridge statistics down with it: in
    # bf16, A_inv has 8 significant bits and the allocator's learning is noise. The statistics keep the dtype they were
    # built with (float64 by default) and their values exactly; only a device move applies to them.
    k, d = 8, 6
    model = ArrCoc(d, d, num_patches=k, budget=80, min_tokens=4, max_tokens=20, allocator="bandit",
                   allocator_kwargs={"levels": (4, 8, 20), "mode": "at_most"})
    g = torch.Generator().manual_seed(6)
    feats, query = torch.randn(2, k, 2, 2, d, generator=g), torch.randn(2, d, generator=g)
    with torch.no_grad():
        model(feats, query=query)
    model.attending.update(torch.tensor([1.0, 0.0]))
    before = {n: b.clone() for n, b in model.attending.named_buffers()}
    model = {"to_bf16": lambda m: m.to(torch.bfloat16), "half": lambda m: m.half(), "float": lambda m: m.float()}[cast](
        model)
    low = torch.float32 if cast == "float" else {"to_bf16": torch.bfloat16, "half": torch.float16}[cast]
    assert model.knowing.q_proj.weight.dtype == low  # the rest of the layer is cast as asked
    assert model.attending.policy.dtype == torch.float64
    for n, b in model.attending.named_buffers():
        assert b.dtype == before[n].dtype and torch.equal(b, before[n]), n
    with torch.no_grad():  # the allocation still runs, and learns, on the cast model's activations
        out = model(feats.to(low), query=query.to(low))
    assert (out.budgets.sum(-1) <= 80).all()
    model.attending.update(torch.tensor([0.0, 1.0]))
    assert int(model.attending.policy.steps) == 4 and model.attending.policy.A_inv.dtype == torch.float64
