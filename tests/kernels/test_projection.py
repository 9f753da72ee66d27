"""Capped-simplex projection: parity with an independent float64 solver, gradients, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arr_coc import capped_simplex_projection
from _solvers import project_f64


def _rel_err(x: torch.Tensor, ref: np.ndarray, y: torch.Tensor | None = None) -> float:
    """Max error relative to the problem's magnitude: x = y - tau can only be as exact as y itself is."""
    scale = max(1.0, float(np.abs(ref).max()), float(y.abs().max()) if y is not None else 0.0)
    return float(np.abs(x.double().numpy() - ref).max()) / scale


def _check(x: torch.Tensor, budget, lo, hi, tol_sum: float) -> None:
    xd = x.double()
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    hi_t = torch.as_tensor(hi, dtype=torch.float64)
    assert torch.isfinite(xd).all()
    assert (xd >= lo_t - 1e-6 * lo_t.abs().clamp_min(1)).all()
    assert (xd <= hi_t + 1e-6 * hi_t.abs().clamp_min(1)).all()
    b = torch.as_tensor(budget, dtype=torch.float64)
    assert ((xd.sum(-1) - b).abs() <= tol_sum * b.abs().clamp_min(1)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_preset_matches_float64(dtype):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(512, 200, generator=g, dtype=torch.float64) * 80 + 66
    y[:64] = torch.randn(64, 200, generator=g, dtype=torch.float64) * 1e4  # wild targets
    x = capped_simplex_projection(y.to(dtype), 13200.0, 64.0, 400.0)
    assert x.dtype == dtype and x.shape == y.shape
    ref = project_f64(y.numpy(), 13200.0, 64.0, 400.0)
    assert _rel_err(x, ref) <= (1e-5 if dtype == torch.float32 else 1e-10)
    _check(x, 13200.0, 64.0, 400.0, 1e-6)


def test_ties_all_equal_and_duplicates():
    y = torch.full((3, 200), 5.0, dtype=torch.float64)
    x = capped_simplex_projection(y, 13200.0, 64.0, 400.0)
    assert torch.allclose(x, torch.full_like(x, 66.0))
    y = torch.tensor([[1.0, 1.0, 1.0, 3.0, 3.0]], dtype=torch.float64)
    x = capped_simplex_projection(y, 4.0, 0.0, 1.5)
    np.testing.assert_allclose(x.numpy(), project_f64(y.numpy(), 4.0, 0.0, 1.5), atol=1e-12)
    assert x[0, 0] == x[0, 1] == x[0, 2] and x[0, 3] == x[0, 4]


@pytest.mark.parametrize("mag", [1e-20, 1e-6, 1.0, 1e6, 1e20])
def test_huge_and_tiny_magnitudes(mag):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(64, 50, generator=g, dtype=torch.float64) * mag
    lo, hi, b = -mag, 2 * mag, 10 * mag
    for dt in (torch.float32, torch.float64):
        x = capped_simplex_projection(y.to(dt), b, lo, hi)
        ref = project_f64(y.numpy(), b, lo, hi)
        err = float(np.abs(x.double().numpy() - ref).max()) / mag
        assert err <= (1e-5 if dt == torch.float32 else 1e-10)


def test_float64_near_the_bottom_of_the_normal_range():
    # Regression: the solver's residual tolerance had an absolute floor of finfo.tiny (2.2e-308, the smallest normal
    # float64), so at budgets ~1e-307 its first iterate was "converged" and rows summed ~1% off the budget. By hand,
    # y = s·[3, 1, 0, -5], B = 3s, 0 <= x <= 4s: tau = s/2 frees the first two entries ((3s - tau) + (s - tau) = 3s)
    # and clamps the others (-s/2 and -5.5s below 0), so x = s·[2.5, 0.5, 0, 0], exact in float64 up to rounding.
    s = 1e-307
    y = torch.tensor([[3.0, 1.0, 0.0, -5.0]], dtype=torch.float64) * s
    x = capped_simplex_projection(y, 3 * s, 0.0, 4 * s)
    expected = torch.tensor([[2.5, 0.5, 0.0, 0.0]], dtype=torch.float64) * s
    assert ((x - expected).abs() <= 1e-14 * s).all()
    # Random rows at this scale and in the subnormal range against the sort-based solver, which itself underflows
    # there: the projection is positively homogeneous, so solve the rows scaled up by 2^e (exact) and scale back.
    g = torch.Generator().manual_seed(3)
    for e in (1020, 1023, 1030):  # s ~ 1.1e-307 (normal), 1.1e-308 and 8.7e-311 (subnormal)
        s = float(np.ldexp(1.0, -e))
        y = torch.randn(16, 20, generator=g, dtype=torch.float64) * s
        x = capped_simplex_projection(y, 5 * s, 0.0, s)
        ref = np.ldexp(project_f64(np.ldexp(y.numpy(), e), 5.0, 0.0, 1.0), -e)
        assert float(np.abs(x.numpy() - ref).max()) <= 1e-11 * s
        assert float((x.sum(-1) - 5 * s).abs().max()) <= 1e-11 * s


def test_float64_near_its_max_does_not_overflow():
    # Regression: sums of K values near float64's max (the tolerance sum|x|, the bracket's midpoint) overflowed to inf,
    # the solver stopped at once and returned a wrong point, silently (all entries at lo, summing to -inf).
    # By hand: no bound is active, so tau = (sum(y) - B) / K = (2e308 - 1e308) / 3 and x = y - tau, all inside
    # (-1.7e308, 1.7e308); in the second case the first two entries are free, 3e308 - 2 tau = 1e308 gives tau = 1e308,
    # and the third clamps at 0.
    y = torch.tensor([[1.5e308, 1.5e308, -1e308]], dtype=torch.float64)
    x = capped_simplex_projection(y, 1e308, -1.7e308, 1.7e308)
    tau = 1e308 / 3
    expected = torch.tensor([[1.5e308 - tau, 1.5e308 - tau, -1e308 - tau]], dtype=torch.float64)
    assert torch.allclose(x, expected, rtol=1e-15, atol=0)
    y = torch.tensor([[1.5e308, 1.5e308, 0.0]], dtype=torch.float64)
    x = capped_simplex_projection(y, 1e308, 0.0, 1.7e308)
    assert torch.allclose(x, torch.tensor([[0.5e308, 0.5e308, 0.0]], dtype=torch.float64), rtol=1e-15, atol=0)


def test_k_equals_one():
    y = torch.tensor([[3.0], [-7.0], [100.0]])
    x = capped_simplex_projection(y, torch.tensor([2.0, 5.0, 9.0]), 0.0, 10.0)
    assert torch.equal(x, torch.tensor([[2.0], [5.0], [9.0]]))


def test_per_row_budget_and_per_element_bounds():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(4, 3, 30, generator=g, dtype=torch.float64)
    lo = torch.rand(4, 3, 30, generator=g, dtype=torch.float64) - 1
    hi = lo + torch.rand(4, 3, 30, generator=g, dtype=torch.float64) * 2
    frac = torch.rand(4, 3, generator=g, dtype=torch.float64)
    b = lo.sum(-1) + frac * (hi.sum(-1) - lo.sum(-1))
    x = capped_simplex_projection(y, b, lo, hi)
    np.testing.assert_allclose(x.numpy(), project_f64(y.numpy(), b.numpy(), lo.numpy(), hi.numpy()), atol=1e-10)
    x32 = capped_simplex_projection(y.float(), b.float(), lo.float(), hi.float())
    assert _rel_err(x32, project_f64(y.float().double().numpy(), b.float().double().numpy(),
                                    lo.float().double().numpy(), hi.float().double().numpy())) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    y = (torch.randn(16, 200, generator=torch.Generator().manual_seed(3)) * 50 + 66).to(dtype)
    x = capped_simplex_projection(y, 13200.0, 64.0, 400.0)
    assert x.dtype == dtype
    ref = project_f64(y.double().numpy(), 13200.0, 64.0, 400.0)
    # Output is rounded to the half type: error is its resolution at ~400, not the solver's.
    assert float(np.abs(x.double().numpy() - ref).max()) <= 400 * (2 ** -7 if dtype == torch.bfloat16 else 2 ** -10)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 40),
    rows=st.integers(1, 5),
    lo=st.floats(-100, 100),
    width=st.floats(0, 100),
    frac=st.floats(0, 1),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_float64(k, rows, lo, width, frac, scale, seed):
    hi = lo + width
    b = k * lo + frac * k * (hi - lo)
    b = min(max(b, k * lo), k * hi)
    y = torch.randn(rows, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale * max(width, 1)
    x = capped_simplex_projection(y, b, lo, hi)
    ref = project_f64(y.numpy(), b, lo, hi)
    assert _rel_err(x, ref) <= 1e-9
    x32 = capped_simplex_projection(y.float(), b, lo, hi)
    ref32 = project_f64(y.float().double().numpy(), np.float32(b), np.float32(lo), np.float32(hi))
    assert _rel_err(x32, ref32, y) <= 1e-5


def test_gradcheck_y_and_budget():
    g = torch.Generator().manual_seed(4)
    y = (torch.randn(3, 7, generator=g, dtype=torch.float64) * 2).requires_grad_()
    # Budgets off the kinks of s(tau) (an integer budget with 0..1 bounds can land exactly on one).
    b = torch.tensor([1.3, 2.7, 3.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: capped_simplex_projection(a, c, 0.0, 1.0), (y, b))
    # Scalar budget tensor broadcast over rows.
    b0 = torch.tensor(2.9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: capped_simplex_projection(a, c, -0.5, 1.0), (y, b0))


def test_gradgradcheck_y_and_budget():
    # The backward is linear in the incoming gradient with a mask that is piecewise constant in x, so second-order
    # autograd (Hessian-vector products, gradient penalties) must go through it; it used to raise "no autograd
    # formula was registered" for arr_coc.capped_simplex_projection_backward.
    g = torch.Generator().manual_seed(4)
    y = (torch.randn(3, 7, generator=g, dtype=torch.float64) * 2).requires_grad_()
    b = torch.tensor([1.3, 2.7, 3.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, c: capped_simplex_projection(a, c, 0.0, 1.0), (y, b))
    lo = -torch.rand(3, 7, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(3, 7, generator=g, dtype=torch.float64) + 0.2
    bm = ((lo.sum(-1) + hi.sum(-1)) / 2).requires_grad_()  # per-element bounds
    assert torch.autograd.gradgradcheck(lambda a, c: capped_simplex_projection(a, c, lo, hi), (y, bm))
    # The Hessian of |P(y)|^2 is 2 JᵀJ with J = diag(m) - m mᵀ/n on the free set.
    y0, b0 = y.detach()[:1], b.detach()[:1]
    hess = torch.autograd.functional.hessian(lambda a: capped_simplex_projection(a, b0, 0.0, 1.0).square().sum(), y0)
    x = capped_simplex_projection(y0, b0, 0.0, 1.0)[0]
    m = ((x > 0) & (x < 1)).double()
    jac = torch.diag(m) - torch.outer(m, m) / m.sum()
    torch.testing.assert_close(hess.reshape(7, 7), 2 * jac.T @ jac)


def test_backward_formula_and_all_bound_row():
    y = torch.tensor([[0.0, 10.0, -10.0, 0.5]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(1.8, dtype=torch.float64, requires_grad=True)
    x = capped_simplex_projection(y, b, 0.0, 1.0)
    g = torch.tensor([[1.0, 2.0, 3.0, 5.0]], dtype=torch.float64)
    x.backward(g)
    m = ((x > 0) & (x < 1)).double()
    n = m.sum()
    assert n == 2  # coordinates 0 and 3 are free, 1 is at hi, 2 at lo
    expect = m * (g - (m * g).sum() / n)
    torch.testing.assert_close(y.grad, expect)
    torch.testing.assert_close(b.grad, (m * g).sum() / n)
    # Every coordinate at a bound: zero gradient.
    y2 = torch.tensor([[5.0, -5.0]], dtype=torch.float64, requires_grad=True)
    capped_simplex_projection(y2, 1.0, 0.0, 1.0).sum().backward()
    assert torch.equal(y2.grad, torch.zeros_like(y2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_backward_reads_clamped_entries_at_bounds_the_dtype_cannot_hold(dtype):
    # lo = 0.1 and hi = 0.7 are not representable in bf16/fp16: a clamped entry holds the rounded bound. The free mask
    # must compare with that (it called every lo-clamped bf16 entry free: gradient errors of 3 on unit gradients).
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, 50, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    lo, hi, b = 0.1, 0.7, 12.0
    x = capped_simplex_projection(y, b, lo, hi)
    gx = torch.randn(4, 50, generator=g, dtype=torch.float64).to(dtype)
    x.backward(gx)
    y64 = y.detach().double().requires_grad_()
    x64 = capped_simplex_projection(y64, b, lo, hi)
    x64.backward(gx.double())
    clamped = (x64 <= lo) | (x64 >= hi)
    assert clamped.sum() > 100  # the case bites: most entries sit on a bound
    assert torch.equal(y.grad[clamped], torch.zeros_like(y.grad[clamped]))
    # Elsewhere only the storage of g_y in the half dtype differs (a free entry within half an ulp of a bound, which
    # the output cannot tell from a clamped one, does not occur at this seed).
    torch.testing.assert_close(y.grad.double(), y64.grad, rtol=0, atol=4 * torch.finfo(dtype).eps * 4)


def test_vectorised_no_row_loop_large_batch():
    # Many rows in one call are solved to the same accuracy as few rows (no per-row Python work needed).
    y = torch.randn(4096, 200, generator=torch.Generator().manual_seed(5)) * 80 + 66
    x = capped_simplex_projection(y, 13200.0, 64.0, 400.0)
    ref = project_f64(y[:32].double().numpy(), 13200.0, 64.0, 400.0)
    assert _rel_err(x[:32], ref) <= 1e-5
    _check(x, 13200.0, 64.0, 400.0, 1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(budget=200 * 64 - 1.0), r"infeasible budget.*12799.*12800"),
        (dict(budget=200 * 400 + 1.0), r"infeasible budget.*80001.*80000"),
        (dict(lo=500.0), r"lo > hi"),
    ],
)
def test_infeasible_and_bad_bounds(kwargs, match):
    args = dict(budget=13200.0, lo=64.0, hi=400.0) | kwargs
    with pytest.raises(ValueError, match=match):
        capped_simplex_projection(torch.zeros(2, 200), args["budget"], args["lo"], args["hi"])


def test_non_finite_inputs_raise():
    y = torch.zeros(2, 5)
    y[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"y contains 1 non-finite.*\(1, 3\)"):
        capped_simplex_projection(y, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="budget contains"):
        capped_simplex_projection(torch.zeros(2, 5), torch.tensor([1.0, float("inf")]), 0.0, 1.0)
    with pytest.raises(ValueError, match="hi contains"):
        capped_simplex_projection(torch.zeros(2, 5), 1.0, 0.0, float("inf"))


def test_bad_shapes_dtypes_devices():
    with pytest.raises(ValueError, match="floating-point"):
        capped_simplex_projection(torch.zeros(2, 5, dtype=torch.long), 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"budget of shape \(3,\)"):
        capped_simplex_projection(torch.zeros(2, 5), torch.ones(3), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"lo of shape \(4,\)"):
        capped_simplex_projection(torch.zeros(2, 5), 1.0, torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="would enlarge"):
        capped_simplex_projection(torch.zeros(5), 1.0, torch.zeros(2, 5), 1.0)
    with pytest.raises(ValueError, match="meta"):
        capped_simplex_projection(torch.zeros(2, 5), 1.0, torch.zeros(5, device="meta"), 1.0)
    with pytest.raises(ValueError, match="K >= 1"):
        capped_simplex_projection(torch.zeros(2, 0), 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="number or a tensor"):
        capped_simplex_projection(torch.zeros(2, 5), "1", 0.0, 1.0)


def test_shape_check_agrees_with_torch_broadcast_shapes():
    # The argument checks use a plain-Python broadcast (torch.broadcast_shapes is ~20x slower per call): same answer,
    # None where torch raises.
    import itertools

    from arr_coc.kernels.ops import _broadcast_shape

    shapes = [(), (1,), (16,), (32, 16), (32, 1), (1, 16), (2, 32, 16), (3,), (32, 3), (5, 1, 16), (0,), (0, 16)]
    for a, b in itertools.product(shapes, shapes):
        try:
            want = tuple(torch.broadcast_shapes(torch.Size(a), torch.Size(b)))
        except RuntimeError:
            want = None
        assert _broadcast_shape(a, b) == want, (a, b)
    # Budget per row: (2,) against rows (2,) fits; a (2, 1) budget would enlarge the row shape.
    with pytest.raises(ValueError, match=r"budget of shape \(2, 1\)"):
        capped_simplex_projection(torch.zeros(2, 5), torch.ones(2, 1), 0.0, 1.0)
    assert capped_simplex_projection(torch.zeros(2, 5), torch.tensor([1.0, 2.0]), 0.0, 1.0).sum(-1).tolist() == \
        pytest.approx([1.0, 2.0])


@pytest.mark.parametrize("which", ["budget", "lo", "hi"])
@pytest.mark.parametrize("other", [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32])
def test_tensor_of_another_dtype_is_refused(which, other):
    # A budget/bound tensor of another dtype than y's used to be converted silently (float64 rounded to float32, an
    # integer budget cast); it must be refused, naming both dtypes. Python numbers stay accepted.
    y = torch.zeros(2, 5)
    args = dict(budget=2.0, lo=0.0, hi=1.0)
    args[which] = torch.tensor(args[which], dtype=other)
    with pytest.raises(ValueError, match=rf"{which} has dtype {other} but y has dtype torch.float32"):
        capped_simplex_projection(y, args["budget"], args["lo"], args["hi"])


def test_matching_tensor_dtypes_are_accepted():
    for dt in (torch.float32, torch.float64):
        y = torch.zeros(2, 5, dtype=dt)
        x = capped_simplex_projection(y, torch.tensor([2.0, 3.0], dtype=dt), torch.tensor(0.0, dtype=dt),
                                      torch.ones(5, dtype=dt))
        assert x.dtype == dt and torch.allclose(x.sum(-1).double(), torch.tensor([2.0, 3.0], dtype=torch.float64))
    # Half y is solved in float32, so float32 bounds are as good as its own dtype; float64 ones are not.
    for dt in (torch.float16, torch.bfloat16):
        y = torch.zeros(2, 5, dtype=dt)
        for bdt in (dt, torch.float32):
            x = capped_simplex_projection(y, torch.tensor(2.0, dtype=bdt), torch.tensor(0.0, dtype=bdt), 1.0)
            assert x.dtype == dt and torch.equal(x, torch.full_like(x, 0.4))
        with pytest.raises(ValueError, match=rf"lo has dtype torch.float64 but y has dtype {dt}"):
            capped_simplex_projection(y, 2.0, torch.tensor(0.0, dtype=torch.float64), 1.0)


def test_subnormal_bounds_budget_equal_to_sum_lo_is_feasible():
    # Regression (found by hypothesis in CI): lo ~ 1e-44 is subnormal in float32, so lo and budget = K·lo each round
    # onto the subnormal grid when cast; the feasibility check must allow that absolute rounding, not call it
    # infeasible. A budget clearly below sum(lo) must still be rejected.
    lo = 1.095299542976964e-44
    y = torch.tensor([[1e-3, -2e-3, 5e-4]], dtype=torch.float32)
    x = capped_simplex_projection(y, 3 * lo, lo, lo)
    assert torch.equal(x, torch.full_like(x, float(np.float32(lo))))
    with pytest.raises(ValueError, match="infeasible budget"):
        capped_simplex_projection(y, 1.0, 2.0, 3.0)
