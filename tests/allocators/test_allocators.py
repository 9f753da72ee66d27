"""Invariants over every registered allocator, plus allocator-specific checks against independent solvers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arr_coc import create_allocator, list_allocators
from arr_coc.allocators.mckp import level_values, solve_mckp
from arr_coc.allocators.registry import capped_softmax
from _solvers import mckp_brute, waterfill_log_f64

# Every registered allocator is checked for the invariants; the bandit (which learns from rewards, tested further in
# its own file) chooses from a per-patch context, given here at random.
ALL = list_allocators()
STATIC = [n for n in ALL if n != "bandit"]


def _call(alloc, name: str, u: torch.Tensor) -> torch.Tensor:
    if name == "bandit":
        ctx = torch.randn(*u.shape[:2], 5, generator=torch.Generator().manual_seed(9), dtype=u.dtype)
        return alloc(u, context=ctx)
    return alloc(u)


def _small(name: str) -> dict:
    """Allocator kwargs for the small K=64, budget 1,280, 4..100 setting."""
    return {"levels": (4, 16, 52, 100), "mode": "at_most"} if name == "mckp" else {}


def test_registry_has_the_issue_allocators():
    for name in ("uniform", "threshold", "proportional", "projection", "pgd", "mckp", "hierarchical"):
        assert name in list_allocators()


@pytest.mark.parametrize("name", ALL)
def test_default_preset_exact(name):
    alloc = create_allocator(name)  # budget 13,200, 64..400
    u = torch.randn(3, 200, generator=torch.Generator().manual_seed(0)) * 2
    t = _call(alloc, name, u)
    assert t.dtype == torch.int64 and t.shape == (3, 200)
    assert (t.sum(-1) == 13200).all()
    assert t.min() >= 64 and t.max() <= 400
    assert torch.equal(_call(alloc, name, u), t)  # deterministic


def _draw_levels(data, lo: int, hi: int, exact: bool) -> list[int]:
    """2..4 strictly increasing levels within [lo, hi] (one when lo == hi); at_most mode keeps lo as the cheapest so
    that any budget >= K·lo stays feasible."""
    n = min(data.draw(st.integers(2, 4), label="n_levels"), hi - lo + 1)
    if n == 1:
        return [lo]
    if exact:
        return sorted(data.draw(st.sets(st.integers(lo, hi), min_size=n, max_size=n), label="levels"))
    return [lo] + sorted(data.draw(st.sets(st.integers(lo + 1, hi), min_size=n - 1, max_size=n - 1), label="levels"))


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 4), k=st.integers(1, 24), lo=st.integers(1, 20), width=st.integers(0, 30),
       frac=st.floats(0, 1), seed=st.integers(0, 10**6), data=st.data())
def test_property_budget_and_bounds(name, batch, k, lo, width, frac, seed, data):
    hi = lo + width
    g = torch.Generator().manual_seed(seed)
    kwargs: dict = {}
    levels, mode, per_level = None, None, False
    if name == "hierarchical":
        # Real regions: a (GH·rh) x (GW·rw) grid of rh x rw regions, so the regions-then-patches split runs.
        rh, rw, gh, gw = (data.draw(st.integers(1, 3), label=lb) for lb in ("rh", "rw", "regions_h", "regions_w"))
        k = gh * rh * gw * rw
        kwargs = {"patch_grid": (gh * rh, gw * rw), "region_size": (rh, rw)}
    b = k * lo + round(frac * k * width)
    if name in ("mckp", "bandit"):
        mode = data.draw(st.sampled_from(["exact", "at_most"]), label="mode")
        levels = _draw_levels(data, lo, hi, exact=mode == "exact")
        if mode == "exact":  # a budget that one assignment of levels reaches exactly: always feasible
            pick = torch.randint(0, len(levels), (k,), generator=g)
            b = int(torch.tensor(levels)[pick].sum())
        lagrangian = name == "mckp" and mode == "at_most" and data.draw(st.booleans(), label="lagrangian")
        method = "lagrangian" if lagrangian else "dp"
        kwargs = {"levels": tuple(levels), "mode": mode, "method": method}
        per_level = data.draw(st.booleans(), label="per_level_utility")
    u = torch.randn(batch, k, generator=g, dtype=torch.float64) * 3
    u_in = torch.randn(batch, k, len(levels), generator=g, dtype=torch.float64) * 3 if per_level else u
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alloc = create_allocator(name, budget=b, min_tokens=lo, max_tokens=hi, **kwargs)
        t = _call(alloc, name, u_in)
    # pgd's KKT certificate runs and passes (it warns otherwise); no allocator warns on these well-posed draws.
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    if name == "pgd":
        assert (alloc.last_info.kkt_residual <= alloc.kkt_tol).all()
    assert t.dtype == torch.int64 and t.shape == (batch, k)
    assert (t >= lo).all() and (t <= hi).all()
    if levels is not None:
        assert bool(torch.isin(t, torch.tensor(levels)).all())
        assert torch.equal(alloc.last_info.slack, b - t.sum(-1))
        if mode == "exact":
            assert (t.sum(-1) == b).all()
        else:
            assert (t.sum(-1) <= b).all()
    else:
        assert (t.sum(-1) == b).all()
    if name == "mckp" and mode == "exact":
        # The DP is optimal: at least as good as the assignment the budget was built from.
        v = u_in if per_level else level_values(u, levels)
        drawn = v.gather(-1, pick.expand(batch, k)[..., None]).squeeze(-1).sum(-1)
        assert (alloc.last_info.extra["value"] >= drawn - 1e-9).all()
    assert torch.equal(_call(alloc, name, u_in), t)  # deterministic
    relaxed = alloc.relaxed(u.float())
    assert torch.isfinite(relaxed).all() and relaxed.shape == (batch, k)


@pytest.mark.parametrize("name", [n for n in STATIC if n != "uniform"])
def test_relaxation_carries_gradient(name):
    alloc = create_allocator(name, budget=64 * 20, min_tokens=4, max_tokens=100, **_small(name))
    u = torch.randn(2, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    r = alloc.relaxed(u)
    assert torch.allclose(r.sum(-1), torch.full((2,), 1280.0, dtype=torch.float64), atol=1e-6)
    (r * torch.linspace(0, 1, 64, dtype=torch.float64)).sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["projection", "proportional", "threshold", "pgd", "mckp"])
def test_more_utility_never_means_fewer_tokens(name):
    alloc = create_allocator(name, budget=64 * 20, min_tokens=4, max_tokens=100, **_small(name))
    u = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    t = alloc(u)
    order = u.argsort(-1)
    # threshold gives equal targets within each group, whose rounding ties go by index: allow that one token.
    floor = -1 if name == "threshold" else 0
    assert (t.gather(-1, order).diff(dim=-1) >= floor).all()


def test_uniform_is_uniform_with_low_index_remainder():
    t = create_allocator("uniform", budget=10, min_tokens=1, max_tokens=5)(torch.randn(1, 4))
    assert t.tolist() == [[3, 3, 2, 2]]


def test_pgd_matches_water_filling_and_reports_shadow_price():
    alloc = create_allocator("pgd", budget=64 * 20, min_tokens=4, max_tokens=100)
    u = torch.randn(4, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    t_cont, info = alloc.solve(u)
    w = (64 * torch.softmax(u, -1)).numpy()
    ref = waterfill_log_f64(w, 1280.0, 4.0, 100.0)
    np.testing.assert_allclose(t_cont.numpy(), ref, rtol=1e-5, atol=1e-5)
    assert (info.kkt_residual < 1e-4).all()
    # Shadow price: w/t on free patches equals nu, and nu = d f*/dB (check by finite difference of the optimum).
    f = lambda b: (w * np.log(waterfill_log_f64(w, b, 4.0, 100.0))).sum(-1)  # noqa: E731
    dfdb = (f(1281.0) - f(1279.0)) / 2
    np.testing.assert_allclose(info.shadow_price.numpy(), dfdb, rtol=1e-3)
    t = alloc(u)
    assert (t.sum(-1) == 1280).all() and alloc.last_info.shadow_price is not None
    # solve() checks like the allocation does: 13,200 tokens cannot fit 64 patches of at most 100 (it returned an
    # allocation summing to 6,400 with a zero KKT residual), nor can a NaN utility be solved.
    with pytest.raises(ValueError, match="infeasible budget"):
        create_allocator("pgd", budget=13200, min_tokens=4, max_tokens=100).solve(u)
    with pytest.raises(ValueError, match="non-finite"):
        alloc.solve(torch.full((1, 64), float("nan"), dtype=torch.float64))


@pytest.mark.parametrize("budget, lo, hi, k, rows, scale, seed", [(18, 1, 2, 10, 3, 3.0, 0), (1280, 4, 100, 64, 8, 4.0, 5)])
def test_pgd_converges_with_heavy_patches_at_hi(budget, lo, hi, k, rows, scale, seed):
    # Regression (found by the property test once the KKT check ran): with spread-out weights the heavy patches sit
    # at hi and the free ones have tiny w, so the step sized by max(w) never grew, and the ascent test, computed as
    # f(cand) - f(z), cancelled to eps·|f| and accepted non-ascent steps: 500 iterations ended 3e-3..0.2 tokens off
    # the optimum with a KKT warning. The step now doubles after acceptance and the gain is summed as w·log1p(d/z).
    u = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    alloc = create_allocator("pgd", budget=budget, min_tokens=lo, max_tokens=hi)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        t_cont, info = alloc.solve(u)
        t = alloc(u)
    ref = waterfill_log_f64((k * torch.softmax(u, -1)).numpy(), float(budget), float(lo), float(hi))
    np.testing.assert_allclose(t_cont.numpy(), ref, rtol=0, atol=1e-5)
    assert info.extra["iterations"] < alloc.max_iter and (info.kkt_residual < 1e-6).all()
    assert (t.sum(-1) == budget).all()


def test_pgd_kkt_with_every_patch_fixed():
    # min_tokens == max_tokens: every patch is at both bounds, optimal by force; the certificate must say so.
    alloc = create_allocator("pgd", budget=2 * 3, min_tokens=3, max_tokens=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        t = alloc(torch.tensor([[4.0, -4.0]], dtype=torch.float64))
    assert t.tolist() == [[3, 3]] and float(alloc.last_info.kkt_residual.max()) == 0.0


def test_pgd_warns_when_iterations_run_out():
    alloc = create_allocator("pgd", budget=64 * 20, min_tokens=4, max_tokens=100, max_iter=1)
    with pytest.warns(RuntimeWarning, match="KKT residual"):
        alloc(torch.randn(2, 64, generator=torch.Generator().manual_seed(4)) * 3)


@pytest.mark.parametrize("mode", ["exact", "at_most"])
def test_mckp_dp_matches_brute_force(mode):
    g = torch.Generator().manual_seed(5)
    levels = (2, 3, 5)
    for trial in range(20):
        v = torch.rand(1, 5, 3, generator=g, dtype=torch.float64)
        budget = 10 + trial % 12
        best, _ = mckp_brute(v[0].numpy(), levels, budget, mode)
        if not np.isfinite(best):
            with pytest.raises(ValueError, match="unreachable|infeasible"):
                solve_mckp(v, levels, budget, mode=mode)
            continue
        sol = solve_mckp(v, levels, budget, mode=mode)
        assert sol.value.item() == pytest.approx(best, abs=1e-9)
        cost = sol.tokens.sum().item()
        assert cost == budget if mode == "exact" else cost <= budget
        assert sol.slack.item() == budget - cost


def test_mckp_default_levels_exact_and_at_most():
    u = torch.randn(2, 200, generator=torch.Generator().manual_seed(6)) * 2
    exact = create_allocator("mckp")
    t = exact(u)
    assert (t.sum(-1) == 13200).all()
    assert set(t.unique().tolist()) <= {64, 128, 256, 400}
    at_most = create_allocator("mckp", budget=13190, mode="at_most")
    t2 = at_most(u)
    assert (t2.sum(-1) <= 13190).all() and (at_most.last_info.slack == 13190 - t2.sum(-1)).all()
    # A (B, K, L) utility is maximised directly.
    v = level_values(u, [64, 128, 256, 400])
    assert torch.equal(exact(v), t)


def test_mckp_exact_unreachable_raises():
    with pytest.raises(ValueError, match="unreachable"):
        create_allocator("mckp", budget=13208)(torch.zeros(1, 200))  # 408 free is not a multiple of 16


def test_mckp_lagrangian_is_feasible_and_close_to_dp():
    u = torch.randn(8, 200, generator=torch.Generator().manual_seed(7)) * 2
    v = level_values(u.double(), [64, 128, 256, 400])
    dp = solve_mckp(v, [64, 128, 256, 400], 14000, mode="at_most")
    lag = solve_mckp(v, [64, 128, 256, 400], 14000, mode="at_most", method="lagrangian")
    assert (lag.tokens.sum(-1) <= 14000).all()
    assert (lag.value <= dp.value + 1e-9).all()
    assert (lag.value >= 0.99 * dp.value).all()  # close, not just feasible (measured: within 0.2%)
    with pytest.raises(ValueError, match="at_most"):
        create_allocator("mckp", method="lagrangian", mode="exact")
    with pytest.raises(ValueError, match="supports mode='at_most' only, got 'exact'"):
        solve_mckp(v, [64, 128, 256, 400], 14000, mode="exact", method="lagrangian")


def test_mckp_level_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        create_allocator("mckp", levels=(64, 64, 400))
    with pytest.raises(ValueError, match=r"within \[min_tokens=64"):
        create_allocator("mckp", levels=(32, 400))
    with pytest.raises(ValueError, match=r"levels must be >= 0, got \[-4, 16\]"):
        solve_mckp(torch.zeros(1, 2, 2), [-4, 16], 20)


def test_mckp_level_values_with_a_zero_level():
    # log(c / c0) has no c0 = 0: the zero level is worth 0 and the others log(c), times w = K * softmax(u).
    u = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    v = level_values(u, [0, 4, 16])
    w = 2 * torch.softmax(u, -1)
    assert torch.allclose(v, w[..., None] * torch.tensor([0.0, 4.0, 16.0]).clamp_min(1).log().double())


@pytest.mark.parametrize("method", ["dp", "lagrangian"])
def test_mckp_budget_exactly_k_times_the_cheapest_level(method):
    # K * c0 == budget is feasible (every patch at the cheapest level); only K * c0 > budget is not.
    v = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sol = solve_mckp(v, [4, 8, 16], 12, mode="at_most", method=method)
    assert sol.tokens.tolist() == [[4, 4, 4]] * 2 and sol.slack.tolist() == [0, 0]
    with pytest.raises(ValueError, match="infeasible"):
        solve_mckp(v, [4, 8, 16], 11, mode="at_most", method=method)


def test_capped_softmax_caps_in_as_many_rounds_as_needed():
    # Shares of 24 for weights (10, 8, 1, 1) are (12, 9.6, 1.2, 1.2): capping the first at 10 hands its excess to the
    # rest in proportion, (11.2, 1.4, 1.4), which pushes the second over the cap too. Result: (10, 10, 2, 2).
    u = torch.tensor([[10.0, 8.0, 1.0, 1.0]], dtype=torch.float64).log()
    x = capped_softmax(u, 24.0, 0.0, 10.0)
    torch.testing.assert_close(x, torch.tensor([[10.0, 10.0, 2.0, 2.0]], dtype=torch.float64))


def test_capped_softmax_budget_at_the_floor_puts_every_patch_at_lo():
    # Budget K·lo leaves nothing free: exactly lo everywhere (with lo = 0 a tiny c·exp(u) would show), no gradient.
    u = torch.tensor([[3.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    x = capped_softmax(u, 0.0, 0.0, 10.0)
    assert torch.equal(x, torch.zeros_like(x))
    (x * torch.arange(3.0, dtype=torch.float64)).sum().backward()
    assert torch.equal(u.grad, torch.zeros_like(u))


def test_mckp_lagrangian_repair_fills_the_room():
    # Every patch values levels (1, 2, 4) at (0, 1, 1.9): the multiplier settles all three on 2 (6 tokens), then the
    # greedy repair upgrades two of them to 4, which spends the budget of 10 exactly and matches the DP's optimum.
    v = torch.tensor([0.0, 1.0, 1.9], dtype=torch.float64).expand(1, 3, 3).contiguous()
    lag = solve_mckp(v, [1, 2, 4], 10, mode="at_most", method="lagrangian")
    dp = solve_mckp(v, [1, 2, 4], 10, mode="at_most")
    assert lag.slack.tolist() == [0] and sorted(lag.tokens[0].tolist()) == [2, 4, 4]
    assert lag.value.item() == pytest.approx(4.8) and dp.value.item() == pytest.approx(4.8)


def test_capped_softmax_budget_at_the_ceiling_has_finite_gradients():
    # Budget K·hi: here rounding caps every patch, which leaves log(0) for the free tokens and an empty logsumexp
    # (found by a random search; the last patch usually stays free, exactly at hi). The gradients, to the budget too,
    # must stay finite.
    u = torch.tensor([[-0.6719761460112996, -3.139972225453657, 2.463000797642189, 2.7892635443476923]],
                     dtype=torch.float64, requires_grad=True)
    b = torch.tensor(1600.0, dtype=torch.float64, requires_grad=True)
    x = capped_softmax(u, b, 64.0, 400.0)
    assert torch.equal(x, torch.full_like(x, 400.0))
    (x * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(b.grad)


def test_mckp_feasibility_edges():
    # exact: K * max(level) == budget is reachable (every patch at the top level); one token more is not.
    alloc = create_allocator("mckp", budget=4 * 400)
    alloc.check_feasible(4)
    assert alloc(torch.zeros(1, 4)).tolist() == [[400] * 4]
    with pytest.raises(ValueError, match="K·max\\(level\\)"):
        create_allocator("mckp", budget=4 * 400 + 16).check_feasible(4)
    # at_most: a budget beyond K * max_tokens is refused too, though the levels alone would leave slack.
    with pytest.raises(ValueError, match="K·hi = 4·400 = 1600 < budget=1616"):
        create_allocator("mckp", budget=1616, mode="at_most").check_feasible(4)
    with pytest.raises(ValueError, match="relaxed\\(\\) needs a \\(B, K\\) utility"):
        create_allocator("mckp").relaxed(torch.zeros(1, 4, 4))


def test_hierarchical_regions_then_patches():
    alloc = create_allocator("hierarchical", budget=16 * 10, min_tokens=2, max_tokens=30, patch_grid=(4, 4),
                             region_size=(2, 2))
    u = torch.zeros(1, 16)
    u[0, 0] = 5.0  # the top-left region holds the one relevant patch
    t = alloc(u).view(4, 4)
    assert int(t.sum()) == 160
    regions = t.view(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4).sum(-1)
    assert regions[0] == regions.max() and regions[0] > regions[1:].max()
    assert t[0, 0] == t.max()
    with pytest.raises(ValueError, match="does not tile"):
        create_allocator("hierarchical", budget=200 * 66, patch_grid=(10, 20), region_size=(3, 3))(torch.zeros(1, 200))


def test_threshold_explicit_value():
    alloc = create_allocator("threshold", budget=4 * 10, min_tokens=5, max_tokens=20, threshold=0.0)
    t = alloc(torch.tensor([[1.0, -1.0, 2.0, -3.0]]))
    assert t.tolist() == [[15, 5, 15, 5]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(budget=100), r"infeasible budget: K·lo = 200·64 = 12800 > budget=100"),
        (dict(budget=90000), r"infeasible budget: K·hi = 200·400 = 80000 < budget=90000"),
    ],
)
def test_infeasible_budgets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_allocator("projection", **kwargs)(torch.zeros(1, 200))


def test_bad_construction_and_input():
    with pytest.raises(ValueError, match=r"unknown allocator 'nope'; known allocators: .*projection"):
        create_allocator("nope")
    with pytest.raises(ValueError, match="lo > hi"):
        create_allocator("uniform", min_tokens=500)
    with pytest.raises(ValueError, match="budget must be an integer"):
        create_allocator("uniform", budget=13200.5)
    alloc = create_allocator("projection")
    with pytest.raises(ValueError, match=r"utility of shape \(B, K\)"):
        alloc(torch.zeros(200))
    u = torch.zeros(1, 200)
    u[0, 7] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite.*\(0, 7\)"):
        alloc(u)
    with pytest.raises(ValueError, match="floating point"):
        alloc(torch.zeros(1, 200, dtype=torch.long))


def test_hierarchical_relaxed_under_half_precision_autocast():
    """bf16 utilities: region totals must feed the patch stage in one dtype (it raised under autocast before)."""
    u = torch.randn(2, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).requires_grad_()
    alloc = create_allocator("hierarchical", budget=320, min_tokens=4, max_tokens=100, patch_grid=(4, 4))
    x = alloc.relaxed(u)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.sum(-1), torch.full((2,), 320.0), rtol=0, atol=1e-2)
    (x * torch.arange(16.0)).sum().backward()
    assert u.grad is not None and bool(torch.isfinite(u.grad).all()) and bool(u.grad.abs().sum() > 0)


def test_budget_above_every_patch_at_max_is_refused_in_at_most_mode_too():
    alloc = create_allocator("mckp", budget=90000, mode="at_most")
    with pytest.raises(ValueError, match="90000"):
        alloc(torch.zeros(1, 200))


def test_uniform_relaxed_checks_feasibility():
    with pytest.raises(ValueError, match="budget=100"):
        create_allocator("uniform", budget=100).relaxed(torch.zeros(1, 200))


@pytest.mark.parametrize("name", ["projection", "mckp", "bandit", "hierarchical"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relaxed_gradient_is_finite_when_a_capped_patch_is_far_above_the_rest(name, dtype):
    """A capped patch's utility beyond exp's range above the free ones (~88 in float32, ~709 in float64): capped_softmax
    took exp of it before replacing it by hi, exp overflowed to inf and the whole row's gradient was NaN."""
    kwargs = {"levels": (1, 10), "mode": "at_most"} if name in ("mckp", "bandit") else {}
    if name == "hierarchical":
        kwargs = {"patch_grid": (2, 2), "region_size": (1, 1)}
    alloc = create_allocator(name, budget=20, min_tokens=1, max_tokens=10, **kwargs)
    u = torch.tensor([[800.0, 0.0, 0.0, 0.0], [100.0, 0.0, 1.0, 0.0]], dtype=dtype, requires_grad=True)
    r = alloc.relaxed(u)
    assert torch.allclose(r[0].double(), torch.tensor([10.0, 10 / 3, 10 / 3, 10 / 3], dtype=torch.float64))
    (r * torch.arange(4.0, dtype=dtype)).sum().backward()
    assert bool(torch.isfinite(u.grad).all()), u.grad
    # The free patches share 10 tokens by softmax: d/du of sum_k k·x_k is that of the exact float64 map.
    ref = torch.tensor([[0.0, -7 / 3, 0.0, 7 / 3]], dtype=torch.float64)
    assert torch.allclose(u.grad[:1].double(), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["mckp", "bandit", "threshold", "projection", "hierarchical"])
def test_half_utility_allocates_as_the_same_values_in_float64(name):
    """A bf16/fp16 utility gets the budgets of the very same values in float64: mckp and bandit formed their level
    values in the half dtype (K·softmax rounded to 8 bits: 128 tokens moved), threshold compared with a row mean
    rounded to it (8 tokens moved)."""
    alloc = create_allocator(name).eval()
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(4, 200, 5, generator=torch.Generator().manual_seed(9))
    call = (lambda v: alloc(v, context=ctx)) if name == "bandit" else alloc
    for scale in (3.0, 0.1) * 6:
        u = torch.randn(4, 200, generator=g) * scale
        for dtype in (torch.bfloat16, torch.float16):
            assert torch.equal(call(u.to(dtype)), call(u.to(dtype).double())), (dtype, scale)


@pytest.mark.parametrize("name", ALL)
def test_empty_batch_gives_empty_budgets(name):
    """B=0 gives (0, K) int64 as the pipeline's other stages do; pgd raised a RuntimeError from the max() of its
    empty KKT residuals and bandit one from reshaping its empty per-sample features."""
    kwargs = {"levels": (4, 10), "mode": "at_most"} if name in ("mckp", "bandit") else {}
    if name == "hierarchical":
        kwargs = {"region_size": (1, 1)}
    alloc = create_allocator(name, budget=40, min_tokens=4, max_tokens=10, **kwargs)
    u = torch.zeros(0, 4)
    t = alloc(u, context=torch.zeros(0, 4, 5)) if name == "bandit" else alloc(u)
    assert t.shape == (0, 4) and t.dtype == torch.int64


@pytest.mark.parametrize("name", STATIC)
@pytest.mark.parametrize("bad", [float("nan"), float("-inf"), float("inf")])
def test_relaxed_refuses_non_finite_utility(name, bad):
    """relaxed() answered a NaN or -inf utility with the uniform allocation (proportional's share fell back to 1/K,
    uniform never looked); forward refuses it, and so does the relaxation now, naming the value. projection, mckp,
    threshold and hierarchical returned NaN for a NaN utility and named the wrong value for inf ("y contains ...
    nan", from the projection of their targets)."""
    u = torch.zeros(1, 200)
    u[0, 7] = bad
    with pytest.raises(ValueError, match=rf"non-finite.*\(0, 7\): {bad}$"):
        create_allocator(name).relaxed(u)


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_tokens=0), "needs min_tokens > 0, got 0"),
    (dict(max_iter=0), "max_iter must be >= 1, got 0"),
    (dict(tol=0.0), r"tol > 0.*tol=0\.0"),
    (dict(kkt_tol=0.0), r"kkt_tol > 0.*kkt_tol=0\.0"),
    (dict(kkt_tol=-1e-4), r"kkt_tol=-0\.0001"),
])
def test_pgd_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_allocator("pgd", **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_iter=2.5), "max_iter must be an integer, got float: 2.5"),
    (dict(tol=float("nan")), "tol=nan"),
    (dict(kkt_tol=float("nan")), "kkt_tol=nan"),
])
def test_pgd_refuses_nan_tolerances_and_fractional_max_iter(kwargs, match):
    """A NaN tol never stopped the loop early and a NaN kkt_tol never warned (`nan <= 0` is False, so both passed the
    check); max_iter=2.5 raised a bare TypeError from range() at the first call."""
    with pytest.raises(ValueError, match=match):
        create_allocator("pgd", **kwargs)


def test_pgd_kkt_certificate_on_hand_made_points():
    # Row 0: a patch at lo whose marginal utility w/t = 6 beats the free patches' ν = 2: violation (6 - 2) / 2 = 2.
    # Row 1: a patch at hi with w/t = 0.2 below ν = 4: violation (4 - 0.2) / 4 = 0.95 (relative to ν, not absolute).
    # Row 2: a free patch 0.05 above lo with w/t = 1 against 2 for the others: ν = 5/3, violation (2/3) / (5/3) = 0.4
    # (counted as "at lo", where w/t < ν is allowed, it would pass unnoticed).
    alloc = create_allocator("pgd", budget=11, min_tokens=1, max_tokens=10)
    w = torch.tensor([[6.0, 10.0, 10.0], [2.0, 20.0, 20.0], [1.05, 10.0, 10.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 5.0, 5.0], [10.0, 5.0, 5.0], [1.05, 5.0, 5.0]], dtype=torch.float64)
    nu, resid = alloc._kkt(w, t)
    torch.testing.assert_close(nu, torch.tensor([2.0, 4.0, 5 / 3], dtype=torch.float64))
    torch.testing.assert_close(resid, torch.tensor([2.0, 0.95, 0.4], dtype=torch.float64))


def test_pgd_shadow_price_with_every_patch_at_a_bound():
    # w = 2·softmax(log 3, 0) = (1.5, 0.5), budget 3 in [1, 2]: the optimum (2, 1) has no free patch; any ν between
    # the bound groups' marginal utilities 0.5 (at lo) and 0.75 (at hi) certifies it, and the midpoint is reported.
    alloc = create_allocator("pgd", budget=3, min_tokens=1, max_tokens=2)
    t, info = alloc.solve(torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64))
    assert t.tolist() == [[2.0, 1.0]]
    torch.testing.assert_close(info.shadow_price, torch.tensor([0.625], dtype=torch.float64))
    assert info.kkt_residual.tolist() == [0.0]


def test_pgd_warns_exactly_above_kkt_tol():
    u = torch.randn(3, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    alloc = create_allocator("pgd", budget=1280, min_tokens=4, max_tokens=100, max_iter=3)
    worst = float(alloc.solve(u)[1].kkt_residual.max())
    alloc.kkt_tol = 0.9 * worst
    with pytest.warns(RuntimeWarning, match="KKT residual"):
        alloc(u)
    alloc.kkt_tol = 1.1 * worst
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        alloc(u)


def test_pgd_relaxed_equals_the_optimum_it_steps_from():
    # At the optimum w/t is one ν on the free patches, so the projected step P(t + η·w/t) lands on t again: the
    # relaxation's value is the continuous optimum (its gradient is the cheap surrogate).
    u = torch.randn(3, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    alloc = create_allocator("pgd", budget=1280, min_tokens=4, max_tokens=100)
    t, _ = alloc.solve(u)
    torch.testing.assert_close(alloc.relaxed(u), t, rtol=0, atol=1e-6)


def test_hierarchical_region_utility_is_a_soft_maximum():
    # Two 1x4 regions. Row 0: one very relevant patch (2.5) against four neutral ones; a mean would rank the neutral
    # region first (-6.9 < 0), log-sum-exp ranks it second (2.5 > log 4). Row 1: four patches at 1 against one at 2;
    # a hard maximum would rank the single patch first, log-sum-exp ranks the four (1 + log 4 > 2).
    alloc = create_allocator("hierarchical", budget=160, min_tokens=1, max_tokens=100, patch_grid=(1, 8),
                             region_size=(1, 4))
    u = torch.tensor([[2.5, -10, -10, -10, 0, 0, 0, 0], [1, 1, 1, 1, 2, -10, -10, -10]], dtype=torch.float64)
    regions = alloc(u).view(2, 2, 4).sum(-1)
    assert (regions[:, 0] > regions[:, 1]).all(), regions


def test_hierarchical_one_region_is_the_capped_softmax_with_its_gradient():
    # A single region holds the whole budget, so the patch stage alone decides: t = lo + (B - K·lo)·softmax(u) =
    # 10 + 40·(0.75, 0.25), and the relaxation carries that map's gradient (40·s(1 - s) = 7.5 for d t_0 / d u_0).
    alloc = create_allocator("hierarchical", budget=60, min_tokens=10, max_tokens=100, patch_grid=(1, 2),
                             region_size=(1, 2))
    u = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64, requires_grad=True)
    assert alloc(u).tolist() == [[40, 20]]
    r = alloc.relaxed(u)
    torch.testing.assert_close(r.detach(), torch.tensor([[40.0, 20.0]], dtype=torch.float64))
    (grad,) = torch.autograd.grad(r[0, 0], u)
    torch.testing.assert_close(grad, torch.tensor([[7.5, -7.5]], dtype=torch.float64))


def test_hierarchical_region_must_tile_both_grid_sides():
    with pytest.raises(ValueError, match=r"region_size \(2, 2\) does not tile the patch grid \(4, 5\)"):
        create_allocator("hierarchical", budget=20 * 10, min_tokens=1, max_tokens=30, patch_grid=(4, 5))(
            torch.zeros(1, 20))


@pytest.mark.parametrize("region_size, match", [
    ((0, 2), r"entry must be >= 1, got 0"),
    ((2,), r"two positive ints \(rows, cols\), got \(2,\)"),
    ((1.5, 2), r"entry must be an integer, got float: 1.5"),
    ((True, 2), r"entry must be an integer, got bool: True"),
    ("ab", r"two positive ints \(rows, cols\), got 'ab'"),
])
def test_hierarchical_refuses_a_bad_region_size(region_size, match):
    """region_size (1.5, 2) was truncated to (1, 2) and (True, 2) taken as (1, 2) silently; 'ab' raised a TypeError."""
    with pytest.raises(ValueError, match=match):
        create_allocator("hierarchical", region_size=region_size)


def test_hierarchical_refuses_a_bare_int_patch_grid():
    # patch_grid=16 (K where the grid was meant) raised a TypeError from tuple(16) ('int' object is not iterable).
    with pytest.raises(ValueError, match=r"patch_grid must be two positive ints \(rows, cols\), got 16"):
        create_allocator("hierarchical", budget=64, min_tokens=1, max_tokens=16, patch_grid=16)


@pytest.mark.parametrize("budget, lo, hi, k, rows, scale, seed", [(13200, 64, 400, 200, 4, 3.0, 1),
                                                                   (64 * 50, 1, 3000, 64, 4, 1.5, 1)])
def test_pgd_stops_at_the_optimum_within_max_iter(budget, lo, hi, k, rows, scale, seed):
    # The default preset: the ascent test's rounding slack must stay ~eps (a slack 1e6 times larger let non-ascent
    # steps through and the moves never fell below tol: all 500 iterations ran). The wide-range case has free
    # patches with weights e^±4 apart: without momentum (FISTA, restarted only when f drops) 500 iterations ended
    # ~6 tokens off; with it about 300 (measured) reach the optimum.
    u = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    alloc = create_allocator("pgd", budget=budget, min_tokens=lo, max_tokens=hi)
    t, info = alloc.solve(u)
    ref = waterfill_log_f64((k * torch.softmax(u, -1)).numpy(), float(budget), float(lo), float(hi))
    np.testing.assert_allclose(t.numpy(), ref, rtol=0, atol=1e-3)
    assert info.extra["iterations"] < alloc.max_iter and (info.kkt_residual < 1e-6).all()


def test_base_checks_name_the_offending_value():
    with pytest.raises(ValueError, match="min_tokens must be >= 0, got -1"):
        create_allocator("uniform", min_tokens=-1)
    with pytest.raises(ValueError, match="budget must be an integer, got True"):
        create_allocator("uniform", budget=True)
    # lo == hi is allowed (every patch fixed); only lo > hi is not.
    assert create_allocator("uniform", budget=8, min_tokens=2, max_tokens=2)(torch.zeros(1, 4)).tolist() == [[2] * 4]
    # Only level-based allocators take a (B, K, L) utility.
    with pytest.raises(ValueError, match=r"expects utility of shape \(B, K\), got \(1, 200, 4\)"):
        create_allocator("projection")(torch.zeros(1, 200, 4))
    # Two non-finite values: the count and the first one are named.
    u = torch.zeros(1, 200)
    u[0, 7], u[0, 9] = float("inf"), float("nan")
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\); first at \(0, 7\): inf"):
        create_allocator("projection")(u)


def test_threshold_default_is_the_row_mean():
    # Row mean 2.5 (resp. 3): only the 10 (resp. 9) clears it; a median would lift the others too.
    alloc = create_allocator("threshold", budget=40, min_tokens=5, max_tokens=20)
    t = alloc(torch.tensor([[0.0, 0.0, 0.0, 10.0], [0.0, 1.0, 2.0, 9.0]]))
    assert t.tolist() == [[7, 7, 6, 20]] * 2


def test_threshold_relaxed_sharpens_with_a_small_temperature():
    alloc = create_allocator("threshold", budget=40, min_tokens=5, max_tokens=20, threshold=0.0, temperature=0.01)
    torch.testing.assert_close(alloc.relaxed(torch.tensor([[1.0, -1.0, 2.0, -3.0]])),
                               torch.tensor([[15.0, 5.0, 15.0, 5.0]]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature must be > 0, got 0.0"),
    (dict(temperature=float("nan")), "temperature must be > 0, got nan"),
    (dict(threshold=float("nan")), "threshold must be finite or None, got nan"),
])
def test_threshold_refuses_bad_settings(kwargs, match):
    """A NaN temperature passed `<= 0` and made every relaxed() value NaN; a NaN threshold put every patch low."""
    with pytest.raises(ValueError, match=match):
        create_allocator("threshold", **kwargs)


def test_proportional_shares_the_free_tokens_above_the_row_minimum():
    # w = u - min(u) = (0, 1, 3): the 24 free tokens split (0, 6, 18) on top of lo = 2.
    alloc = create_allocator("proportional", budget=30, min_tokens=2, max_tokens=30)
    u = torch.tensor([[0.0, 1.0, 3.0]])
    assert alloc(u).tolist() == [[2, 8, 20]]
    torch.testing.assert_close(alloc.relaxed(u), torch.tensor([[2.0, 8.0, 20.0]]))


@pytest.mark.parametrize("grid, region, hot", [((4, 4), (2, 2), [(0, 2), (0, 3), (1, 2), (1, 3)]),
                                               ((2, 6), (2, 2), [(0, 2), (0, 3), (1, 2), (1, 3)]),
                                               ((4, 6), (2, 3), [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)])])
def test_hierarchical_regions_are_contiguous_tiles(grid, region, hot):
    # Every patch of one tile is relevant: that tile is a region, so it gets the largest total and its patches
    # (equal utility) the most tokens each, wherever the tile sits in the grid.
    k = grid[0] * grid[1]
    alloc = create_allocator("hierarchical", budget=k * 10, min_tokens=2, max_tokens=40, patch_grid=grid,
                             region_size=region)
    u = torch.zeros(1, k, dtype=torch.float64)
    for r, c in hot:
        u[0, r * grid[1] + c] = 3.0
    t = alloc(u).view(*grid)
    mask = torch.zeros(grid, dtype=torch.bool)
    for r, c in hot:
        mask[r, c] = True
    assert int(t[mask].min()) > int(t[~mask].max()), t


def test_pgd_does_not_stop_where_momentum_cycles():
    # Regression: the stop test measured |x_new - x| only. Here FISTA's extrapolated point z was projected to the
    # corner (20, 9, 9) twice running and the step from it landed on the previous x again: a zero move, so the loop
    # stopped after 5 iterations 0.03 tokens off the optimum (KKT residual 2e-3, a warning to "raise max_iter").
    # The optimum in closed form: w_2/9 is far below ν, so patch 2 sits at lo = 9 and the other two share the rest,
    # t_i = w_i / ν with ν = (w_0 + w_1) / (38 - 9).
    w = torch.tensor([[2.06018, 0.939223, 5.973e-4]], dtype=torch.float64)
    alloc = create_allocator("pgd", budget=38, min_tokens=9, max_tokens=34)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        t, info = alloc.solve(w.log())
    w = 3 * w / w.sum()  # the weights pgd sees: K·softmax(log w)
    nu = (w[0, 0] + w[0, 1]) / 29
    torch.testing.assert_close(t, torch.stack([w[0, 0] / nu, w[0, 1] / nu, torch.tensor(9.0).double()])[None],
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(info.shadow_price, nu[None], rtol=1e-6, atol=0)
    assert (info.kkt_residual < 1e-6).all()
