"""Tests for the balancing stage: each opponent tension moves a real allocation in its documented direction.

Directions are measured through the ``projection`` allocator with room to move (K=64, 20 tokens per patch on average,
4..100 per patch): focus raises the Gini coefficient of the budgets, explore raises their correlation with the
uncertainty, compress puts more patches at ``min_tokens``, and weight j raises their correlation with score j.
"""

from __future__ import annotations

import math

import pytest
import torch

from arr_coc import Balancing, create_allocator
from arr_coc.knowing import standardize

B, K, LO, HI = 8, 64, 4, 100
BUDGET = K * 20


def gini(t):
    """Gini coefficient of each row (0: all equal; (n-1)/n: one entry holds everything)."""
    x = t.double().sort(-1).values
    n = x.shape[-1]
    i = torch.arange(1, n + 1, dtype=x.dtype)
    return ((2 * i - n - 1) * x).sum(-1) / (n * x.sum(-1))


def corr(a, b):
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a.double() - a.double().mean(-1, keepdim=True)
    b = b.double() - b.double().mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


@pytest.fixture(scope="module")
def alloc():
    return create_allocator("projection", BUDGET, LO, HI)


@pytest.fixture(scope="module")
def scores():
    g = torch.Generator().manual_seed(0)
    return standardize(torch.randn(B, K, 3, generator=g), dim=1)  # as Knowing emits them


@pytest.fixture(scope="module")
def uncertainty():
    return torch.rand(B, K, generator=torch.Generator().manual_seed(1))


def _budgets(alloc, scores, uncertainty=None, **init):
    t = alloc(Balancing(3, **init)(scores, uncertainty=uncertainty))
    assert torch.all(t.sum(-1) == BUDGET) and t.min() >= LO and t.max() <= HI
    return t


def _strictly_increasing(xs):
    return all(a < b for a, b in zip(xs, xs[1:]))


def test_gini_helper():
    assert gini(torch.full((1, 10), 3.0)).item() == 0
    torch.testing.assert_close(gini(torch.tensor([[0.0, 0, 0, 5]])), torch.tensor([0.75], dtype=torch.float64))
    torch.testing.assert_close(gini(torch.tensor([[1.0, 2, 3, 4]])), torch.tensor([0.25], dtype=torch.float64))


# -- the formula -------------------------------------------------------------------------------------------------------


def test_neutral_balancing_is_the_weighted_sum(scores, uncertainty):
    bal = Balancing(3, init_weights=[0.5, -1.0, 2.0])
    want = scores @ torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(bal(scores), want)
    # explore = 0: the uncertainty has no effect.
    torch.testing.assert_close(bal(scores, uncertainty=uncertainty), want)


def test_each_tension_matches_its_documented_formula(scores, uncertainty):
    bal = Balancing(3, init_weights=[1.0, 2.0, 3.0], init_focus=2.5, init_explore=0.7, init_compress=1.3)
    u = scores @ torch.tensor([1.0, 2.0, 3.0]) + 0.7 * standardize(uncertainty, dim=1)
    u = u - 1.3 * torch.nn.functional.softplus(u.mean(-1, keepdim=True) - u)
    torch.testing.assert_close(bal(scores, uncertainty=uncertainty), 2.5 * u)


def test_compress_keeps_the_ranking(scores):
    # The applied weight stays above -1, so u -> u - c·softplus(mean - u) is strictly increasing for every learned
    # value: a raw weight of -3 used to lift the lowest patches past the mean and reverse their order.
    base = Balancing(3)(scores)
    for c in (0.5, 3.0, -0.5, -3.0, -20.0):
        u = Balancing(3, init_compress=c)(scores)
        assert torch.equal(u.argsort(-1), base.argsort(-1)), c


def test_particularize_weight_is_expm1_and_learnable(scores):
    bal = Balancing(3, init_compress=-2.0)
    u0 = scores @ torch.ones(3)
    want = u0 - math.expm1(-2.0) * torch.nn.functional.softplus(u0.mean(-1, keepdim=True) - u0)
    torch.testing.assert_close(bal(scores), want)
    bal(scores).square().sum().backward()
    assert bal.compress.grad is not None and bal.compress.grad.abs().item() > 0
    # Positive weights are applied as they are (the shipped models' 0.18-4.77 keep their meaning).
    assert Balancing(3, init_compress=4.77).compress_weight().item() == pytest.approx(4.77)


def test_a_large_compress_weight_keeps_finite_gradients(scores):
    # The particularize branch exp(c) - 1 overflows for c > 88 in float32; where() gives that branch a zero gradient,
    # but 0 · inf is NaN, so the branch must never see a large c.
    bal = Balancing(3, init_compress=100.0)
    bal(scores).square().sum().backward()
    for name in ("weights", "log_focus", "compress"):  # explore has no gradient without an uncertainty
        assert torch.isfinite(bal.get_parameter(name).grad).all(), name
    assert bal.compress.grad.abs().item() > 0


# -- directions, measured through the projection allocator -------------------------------------------------------------
# log_focus = -1.5 keeps every patch below max_tokens, so only the tension under test changes the allocation. The
# tests further below repeat the checks at the default focus, where patches saturate.


def test_focus_raises_gini(alloc, scores):
    g = [gini(_budgets(alloc, scores, init_focus=math.exp(lf))) for lf in (-3.0, -2.0, -1.5, -1.0)]
    assert all(torch.all(a < b) for a, b in zip(g, g[1:])), [x.tolist() for x in g]


def test_low_focus_tends_to_uniform(alloc, scores):
    t = _budgets(alloc, scores, init_focus=1e-4)
    assert t.max() - t.min() <= 1


def test_explore_raises_correlation_with_uncertainty(alloc, scores, uncertainty):
    c = [corr(_budgets(alloc, scores, uncertainty, init_explore=e, init_focus=math.exp(-1.5)), uncertainty).mean()
         for e in (-2.0, -1.0, 0.0, 1.0, 2.0)]
    assert _strictly_increasing(c), c
    assert c[0] < -0.3 and c[-1] > 0.3  # exploit avoids unsure patches, explore seeks them


def test_explore_raises_correlation_at_the_default_focus(alloc, scores, uncertainty):
    c = [corr(_budgets(alloc, scores, uncertainty, init_explore=e), uncertainty).mean() for e in (-1.0, 0.0, 1.0, 2.0)]
    assert _strictly_increasing(c), c


def test_compress_puts_more_patches_at_min_tokens(alloc, scores):
    n = [(_budgets(alloc, scores, init_compress=c, init_focus=math.exp(-1.5)) == LO).sum().item()
         for c in (0.0, 2.0, 4.0, 6.0)]
    assert _strictly_increasing(n), n
    assert (_budgets(alloc, scores, init_compress=-1.0, init_focus=math.exp(-1.5)) == LO).sum() <= n[0]


def test_particularize_lifts_the_floor(alloc, scores):
    lo = [_budgets(alloc, scores, init_compress=c, init_focus=math.exp(-1.5)).min(-1).values.double().mean()
          for c in (0.0, -0.5, -0.9)]
    assert _strictly_increasing(lo), lo


@pytest.mark.parametrize("j", [0, 1, 2])
def test_weight_raises_correlation_with_its_score(alloc, scores, j):
    c = []
    for wj in (0.0, 1.0, 2.0, 4.0):
        w = [1.0, 1.0, 1.0]
        w[j] = wj
        c.append(corr(_budgets(alloc, scores, init_weights=w, init_focus=math.exp(-1.5)), scores[..., j]).mean())
    assert _strictly_increasing(c), c


# At the default focus (1.0) the utility spread is large enough that the top patches reach max_tokens. These checks
# guard the capped-softmax relaxation (excess above the cap is shared in proportion to the softmax, not equally), which
# keeps every tension monotone through saturation. They failed with uncapped softmax targets + Euclidean projection.


def test_focus_raises_gini_through_saturation(alloc, scores):
    g = [gini(_budgets(alloc, scores, init_focus=math.exp(lf))).mean() for lf in (-1.0, 0.0, 1.0, 2.0)]
    assert _strictly_increasing(g), g


def test_compress_puts_patches_at_min_tokens_at_the_default_focus(alloc, scores):
    n = [(_budgets(alloc, scores, init_compress=c) == LO).sum().item() for c in (0.0, 2.0, 8.0)]
    assert _strictly_increasing(n), n


def test_weight_raises_correlation_at_the_default_focus(alloc, scores):
    c = []
    for wj in (1.0, 2.0, 4.0):
        c.append(corr(_budgets(alloc, scores, init_weights=[wj, 1.0, 1.0]), scores[..., 0]).mean())
    assert _strictly_increasing(c), c


# -- gradients and parameters ------------------------------------------------------------------------------------------


def test_all_tensions_receive_gradients(scores, uncertainty):
    bal = Balancing(3, init_explore=0.3, init_compress=0.3)
    u = bal(scores, uncertainty=uncertainty)
    (u * torch.randn(u.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    for name, p in bal.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_learnable_false_gives_buffers_not_parameters():
    bal = Balancing(3, init_weights=[1.0, 2.0, 3.0], init_focus=2.0, learnable=False)
    assert list(bal.parameters()) == []
    bufs = dict(bal.named_buffers())
    assert set(bufs) == {"weights", "log_focus", "explore", "compress"}
    assert not any(isinstance(b, torch.nn.Parameter) for b in bufs.values())
    assert torch.equal(bufs["weights"], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bufs["log_focus"], torch.tensor([math.log(2.0)]))
    assert set(bal.state_dict()) == set(bufs)
    learn = Balancing(3)
    assert {n for n, _ in learn.named_parameters()} == {"weights", "log_focus", "explore", "compress"}


def test_dtype_follows_the_scores_and_meta_construction(scores):
    u = Balancing(3)(scores.double())
    assert u.dtype == torch.float64
    meta = Balancing(3, device="meta")
    assert all(p.is_meta for p in meta.parameters())


# -- bad input ---------------------------------------------------------------------------------------------------------


def test_errors(scores, uncertainty):
    bal = Balancing(3)
    with pytest.raises(ValueError, match=r"scores have S=2 columns but Balancing\(num_scores=3\)"):
        bal(scores[..., :2])
    with pytest.raises(ValueError, match=r"scores must have 3 dims"):
        bal(scores[0])
    for v in (float("nan"), float("inf")):
        bad = scores.clone()
        bad[1, 2, 0] = v
        with pytest.raises(ValueError, match=r"scores contains 1 non-finite value\(s\); first at index \(1, 2, 0\)"):
            bal(bad)
        bad_u = uncertainty.clone()
        bad_u[0, 5] = v
        with pytest.raises(ValueError, match=r"uncertainty contains 1 non-finite"):
            bal(scores, uncertainty=bad_u)
    with pytest.raises(ValueError, match=r"uncertainty shape \(8, 63\) != scores' \(B, K\) \(8, 64\)"):
        bal(scores, uncertainty=uncertainty[:, :63])
    with pytest.raises(ValueError, match=r"different devices"):
        bal(scores, uncertainty=uncertainty.to("meta"))
    with pytest.raises(ValueError, match=r"init_weights has 2 entries but num_scores=3"):
        Balancing(3, init_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"init_focus must be > 0, got 0"):
        Balancing(3, init_focus=0.0)


def test_uncertainty_in_another_dtype_is_refused(scores, uncertainty):
    bal = Balancing(3)
    with pytest.raises(ValueError, match="uncertainty has dtype torch.float64 but scores have dtype torch.float32"):
        bal(scores, uncertainty=uncertainty.double())
    with pytest.raises(ValueError, match="uncertainty has dtype torch.int64"):
        bal(scores, uncertainty=uncertainty.long())


@pytest.mark.parametrize("kw,msg", [
    ({"init_focus": float("nan")}, r"init_focus must be a finite number, got nan"),
    ({"init_focus": float("inf")}, r"init_focus must be a finite number, got inf"),
    ({"init_explore": float("nan")}, r"init_explore must be a finite number, got nan"),
    ({"init_compress": float("inf")}, r"init_compress must be a finite number, got inf"),
    ({"init_weights": [1.0, float("nan"), 1.0]}, r"init_weights\[1\] must be a finite number, got nan"),
    ({"init_focus": "1"}, r"init_focus must be a finite number, got '1'"),
    ({"init_weights": "abc"}, r"init_weights must be a sequence of numbers, got 'abc'"),
    ({"init_focus": True}, r"init_focus must be a finite number, got True"),
    ({"init_weights": [1.0, False, 1.0]}, r"init_weights\[1\] must be a finite number, got False"),
])
def test_non_finite_or_non_numeric_tensions_are_refused(scores, kw, msg):
    # They were accepted and made every utility NaN or inf (reported, if at all, by the allocator downstream); a
    # string focus failed with a TypeError.
    with pytest.raises(ValueError, match=msg):
        Balancing(3, **kw)


def test_non_tensor_or_integer_inputs_raise_value_error(scores):
    bal = Balancing(3)
    with pytest.raises(ValueError, match=r"scores must be a floating-point tensor, got dtype torch.int64"):
        bal(torch.ones(2, 5, 3, dtype=torch.int64))  # was a RuntimeError from mean()
    with pytest.raises(ValueError, match=r"scores must be a torch.Tensor, got list"):
        bal([[[1.0, 2.0, 3.0]]])  # was an AttributeError
    with pytest.raises(ValueError, match=r"uncertainty must be a torch.Tensor, got list"):
        bal(scores[:1, :2], uncertainty=[[0.0, 1.0]])
