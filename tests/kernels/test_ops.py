"""The ``torch.library`` ops on CPU: opcheck, parity with the reference, torch.compile, fallback and override."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from arr_coc.kernels import capped_simplex_projection, dispatch, ops, project_and_round, round_to_budget
from arr_coc.kernels.reference import projection_backward, projection_forward, round_largest_remainder

DTYPES = (torch.float32, torch.float64)


def _problem(r: int, k: int, dtype: torch.dtype, *, seed: int = 0, per_element: bool = False):
    """Rows of ``y`` with integer budgets and bounds (scalar or per element) that are feasible."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(r, k, generator=g, dtype=torch.float64) * 3 + 4).to(dtype)
    if per_element:
        lo = torch.randint(0, 3, (r, k), generator=g)
        hi = lo + torch.randint(1, 8, (r, k), generator=g)
    else:
        lo, hi = torch.tensor(1), torch.tensor(7)
    lo_sum, hi_sum = lo.expand(r, k).sum(-1), hi.expand(r, k).sum(-1)
    budget = lo_sum + ((hi_sum - lo_sum) * torch.rand(r, generator=g, dtype=torch.float64)).long()
    return y, budget, lo, hi


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------------------------------------
# opcheck: schema, fake impl, autograd registration and AOT dispatch of every op.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_element", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_projection(dtype, per_element, requires_grad):
    y, b, lo, hi = _problem(3, 6, dtype, per_element=per_element)
    acc = _acc(dtype)
    y = y.requires_grad_(requires_grad)
    b = b.to(acc).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.arr_coc.capped_simplex_projection.default, (y, b, lo.to(acc), hi.to(acc)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("requires_grad", [False, True])  # True: the double-backward registration too
def test_opcheck_projection_backward(dtype, requires_grad):
    y, b, lo, hi = _problem(3, 6, dtype, per_element=True)
    acc = _acc(dtype)
    x = projection_forward(y, b.to(acc), lo.to(acc), hi.to(acc))
    g = torch.randn_like(x).requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.arr_coc.capped_simplex_projection_backward.default, (x, lo.to(acc), hi.to(acc), g))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_element", [False, True])
def test_opcheck_round(dtype, per_element):
    y, b, lo, hi = _problem(4, 7, dtype, per_element=per_element)
    acc = _acc(dtype)
    x = projection_forward(y, b.to(acc), lo.to(acc), hi.to(acc))
    torch.library.opcheck(torch.ops.arr_coc.round_to_budget.default, (x, b, lo, hi))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_element", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_project_and_round(dtype, per_element, requires_grad):
    y, b, lo, hi = _problem(3, 6, dtype, per_element=per_element)
    torch.library.opcheck(torch.ops.arr_coc.project_and_round.default, (y.requires_grad_(requires_grad), b, lo, hi))


# ----------------------------------------------------------------------------------------------------------------------
# Parity of the registered CPU path with the reference.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_element", [False, True])
def test_cpu_op_parity_with_reference(dtype, per_element):
    y, b, lo, hi = _problem(64, 23, dtype, seed=1, per_element=per_element)
    acc = _acc(dtype)
    bf, lof, hif = b.to(acc), lo.to(acc), hi.to(acc)
    x_ref = projection_forward(y, bf, lof, hif)
    x_op = torch.ops.arr_coc.capped_simplex_projection(y, bf, lof, hif)
    assert torch.equal(x_op, x_ref)
    assert torch.equal(capped_simplex_projection(y, bf, lof, hif), x_ref)
    t_ref = round_largest_remainder(x_ref, b, lo, hi)
    assert torch.equal(torch.ops.arr_coc.round_to_budget(x_ref, b, lo, hi), t_ref)
    assert torch.equal(round_to_budget(x_ref, b, lo, hi), t_ref)
    x2, t2 = torch.ops.arr_coc.project_and_round(y, b, lo, hi)
    assert torch.equal(x2, x_ref) and torch.equal(t2, t_ref)
    x3, t3 = project_and_round(y, b, lo, hi)
    assert torch.equal(x3, x_ref) and torch.equal(t3, t_ref)
    assert torch.equal(t3.sum(-1), b)
    g = torch.randn_like(x_ref)
    gy_ref, gb_ref = projection_backward(x_ref, lof, hif, g)
    gy, gb = torch.ops.arr_coc.capped_simplex_projection_backward(x_ref, lof, hif, g)
    assert torch.equal(gy, gy_ref) and torch.equal(gb, gb_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_autograd_matches_reference_backward(dtype):
    y, b, lo, hi = _problem(16, 11, dtype, seed=2)
    acc = _acc(dtype)
    y = y.requires_grad_()
    bf = b.to(acc).requires_grad_()
    x = capped_simplex_projection(y, bf, lo.to(acc), hi.to(acc))
    g = torch.randn_like(x)
    gy, gb = torch.autograd.grad(x, (y, bf), g)
    gy_ref, gb_ref = projection_backward(x.detach(), lo.to(acc), hi.to(acc), g)
    torch.testing.assert_close(gy, gy_ref, rtol=0, atol=0)
    torch.testing.assert_close(gb, gb_ref, rtol=0, atol=0)
    # The fused op differentiates x the same way; the integers carry no gradient.
    x2, t2 = project_and_round(y, b, lo, hi)
    assert not t2.requires_grad
    (gy2,) = torch.autograd.grad(x2, y, g)
    torch.testing.assert_close(gy2, gy_ref, rtol=0, atol=0)


def test_project_and_round_validates():
    y = torch.randn(2, 5)
    with pytest.raises(ValueError, match="integer"):
        project_and_round(y, 10.5, 0, 5)
    with pytest.raises(ValueError, match="infeasible"):
        project_and_round(y, 30, 0, 5)
    with pytest.raises(ValueError, match="non-finite"):
        project_and_round(torch.tensor([[1.0, float("nan")]]), 2, 0, 2)


# ----------------------------------------------------------------------------------------------------------------------
# torch.compile traces through the ops without graph breaks (fullgraph=True raises on one).


def test_compile_fullgraph_projection_and_backward():
    torch._dynamo.reset()

    def f(y, b):
        x = capped_simplex_projection(y, b, 1.0, 7.0)
        return (x * x).sum()

    y, b, _, _ = _problem(4, 9, torch.float32, seed=3)
    b = b.float()
    yc, ye = y.clone().requires_grad_(), y.clone().requires_grad_()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(yc, b)
    out.backward()
    f(ye, b).backward()
    torch.testing.assert_close(out, f(y, b))
    torch.testing.assert_close(yc.grad, ye.grad)


def test_compile_fullgraph_inductor_project_and_round():
    torch._dynamo.reset()

    def f(y):
        x, t = project_and_round(torch.relu(y) * 2.0, 40, 1, 7)
        return x.sum(-1), t

    y = torch.randn(3, 8)
    explanation = torch._dynamo.explain(f)(y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    xs, t = torch.compile(f, fullgraph=True)(y)
    xs_e, t_e = f(y)
    torch.testing.assert_close(xs, xs_e)
    assert torch.equal(t, t_e)
    assert torch.equal(t.sum(-1), torch.full((3,), 40))


# ----------------------------------------------------------------------------------------------------------------------
# Kernel loading: fallback with exactly one warning, and the overrides.


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """Dispatch state as before any load attempt; monkeypatch restores the real state afterwards."""
    monkeypatch.setattr(dispatch, "HAS_CUDA_KERNEL", None)
    monkeypatch.setattr(dispatch, "_ext", None)
    monkeypatch.setattr(dispatch, "_reason", None)
    monkeypatch.setattr(dispatch, "_warned", False)
    monkeypatch.setattr(dispatch, "_override_impl", None)
    monkeypatch.delenv("ARR_COC_KERNEL", raising=False)
    return monkeypatch


def _no_compiler(**_):
    raise RuntimeError("nvcc not found (simulated)")


def test_missing_compiler_falls_back_with_one_warning(fresh_dispatch):
    fresh_dispatch.setattr(dispatch, "_build", _no_compiler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.load_kernel() is None
        assert dispatch.load_kernel() is None
        assert dispatch.cuda_kernel_or_none() is None
        # The CUDA implementations of the ops fall back to the reference (called here on CPU tensors).
        y, b, lo, hi = _problem(8, 12, torch.float32, seed=4)
        x = ops._projection_cuda(y, b.float(), lo.float(), hi.float())
    ours = [w for w in caught if "arr_coc" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert issubclass(ours[0].category, RuntimeWarning)
    assert "nvcc not found (simulated)" in str(ours[0].message) and "reference" in str(ours[0].message)
    assert dispatch.HAS_CUDA_KERNEL is False
    assert "nvcc not found" in dispatch.kernel_status()
    assert torch.equal(x, projection_forward(y, b.float(), lo.float(), hi.float()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_real_build_without_gpu_falls_back(fresh_dispatch):
    with pytest.warns(RuntimeWarning, match="cuda.is_available"):
        assert dispatch.load_kernel() is None
    assert dispatch.HAS_CUDA_KERNEL is False


def test_env_reference_never_builds(fresh_dispatch):
    def fail(**_):
        raise AssertionError("the build must not be attempted when the reference is forced")

    fresh_dispatch.setattr(dispatch, "_build", fail)
    fresh_dispatch.setenv("ARR_COC_KERNEL", "reference")
    assert not dispatch.use_cuda_kernel()
    assert dispatch.cuda_kernel_or_none() is None
    assert dispatch.HAS_CUDA_KERNEL is None


def test_env_cuda_forced_raises_clearly(fresh_dispatch):
    fresh_dispatch.setattr(dispatch, "_build", _no_compiler)
    fresh_dispatch.setenv("ARR_COC_KERNEL", "cuda")
    for _ in range(2):  # also once the failure is cached
        with pytest.raises(RuntimeError, match="ARR_COC_KERNEL=cuda.*nvcc not found"):
            dispatch.cuda_kernel_or_none()


def test_forced_failure_then_auto_still_warns_once(fresh_dispatch):
    # The failure is first met under a forced "cuda" (which raises, no warning); going back to "auto" must then warn
    # once rather than fall back to the reference silently.
    fresh_dispatch.setattr(dispatch, "_build", _no_compiler)
    fresh_dispatch.setattr(dispatch, "_override_impl", "cuda")
    with pytest.raises(RuntimeError, match="nvcc not found"):
        dispatch.load_kernel()
    fresh_dispatch.setattr(dispatch, "_override_impl", "auto")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.load_kernel() is None
        assert dispatch.load_kernel() is None
    ours = [str(w.message) for w in caught if "arr_coc" in str(w.message)]
    assert len(ours) == 1 and "nvcc not found (simulated)" in ours[0], ours


@pytest.mark.parametrize("capability, expect", [
    (None, "9.0+PTX"),                # no GPU (a compile-only build): H100/H200 SASS + PTX
    ((9, 0), "9.0+PTX"),              # H100/H200
    ((8, 0), "8.0;9.0+PTX"),          # A100: PTX for sm_90 cannot run on sm_80, so it needs its own SASS
    ((8, 9), "8.9;9.0+PTX"),          # L4/L40S
    ((10, 0), "9.0;10.0+PTX"),        # B200: its own SASS, PTX of the newest arch
])
def test_arch_list_covers_the_current_gpu(capability, expect):
    assert dispatch._arch_list(capability) == expect


def test_arch_env_is_scoped_and_a_user_setting_wins(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    with dispatch._arch_env((8, 0)) as arch:
        assert arch == os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0+PTX"
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ  # restored: later extensions are not built for our list
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5")
    with dispatch._arch_env((8, 0)) as arch:
        assert arch == "7.5"
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "7.5"


def test_override_beats_env(fresh_dispatch):
    fresh_dispatch.setenv("ARR_COC_KERNEL", "cuda")
    fresh_dispatch.setattr(dispatch, "_override_impl", "reference")
    assert not dispatch.use_cuda_kernel()
    fresh_dispatch.setenv("ARR_COC_KERNEL", "reference")
    fresh_dispatch.setattr(dispatch, "_override_impl", "cuda")
    assert dispatch.use_cuda_kernel()
    fresh_dispatch.setattr(dispatch, "_override_impl", None)
    fresh_dispatch.setenv("ARR_COC_KERNEL", "auto")
    assert dispatch.use_cuda_kernel()


def test_bad_env_value_is_rejected(fresh_dispatch):
    fresh_dispatch.setenv("ARR_COC_KERNEL", "triton")
    with pytest.raises(ValueError, match="triton"):
        dispatch.use_cuda_kernel()


def test_successful_load_is_used_without_warning(fresh_dispatch):
    sentinel = object()
    fresh_dispatch.setattr(dispatch, "_build", lambda **_: sentinel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.cuda_kernel_or_none() is sentinel
    assert dispatch.HAS_CUDA_KERNEL is True
    assert dispatch.kernel_status() == "CUDA kernel loaded"


def test_round_accepts_half_type_points_within_their_precision():
    # A bf16 projection is off the budget by up to half an ulp per entry (here ~0.2 of 150, beyond float32's 1e-3·B
    # allowance): rounding it in its own dtype must work and hit the budget exactly, while the same drift presented
    # as float32 is still refused by name.
    from arr_coc.kernels import capped_simplex_projection, round_to_budget

    g = torch.Generator().manual_seed(5)
    y = (torch.randn(64, 40, generator=g) * 3 + 4).to(torch.bfloat16)
    x = capped_simplex_projection(y, 150.0, 1.0, 7.0)
    assert x.dtype == torch.bfloat16
    drift = (x.double().sum(-1) - 150).abs().max().item()
    assert drift > 0.15  # the case the float32 allowance alone would refuse
    t = round_to_budget(x, 150, 1, 7)
    assert torch.equal(t.sum(-1), torch.full((64,), 150)) and int(t.min()) >= 1 and int(t.max()) <= 7
    row = int((x.double().sum(-1) - 150).abs().argmax())
    with pytest.raises(ValueError, match="round_to_budget expects x on the capped simplex"):
        round_to_budget(x[row:row + 1].float(), 150, 1, 7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_scalar_bound_checks_agree_with_the_general_path(dtype):
    # The one-transfer check for scalar budget/lo/hi must accept and refuse exactly what the elementwise flags do,
    # at the feasibility boundary included (budget = K·lo computed in the working dtype).
    k = 200
    cases = [(13200.0, 64.0, 400.0), (k * 64.0, 64.0, 400.0), (k * 400.0, 64.0, 400.0), (k * 64.0 - 1, 64.0, 400.0),
             (k * 400.0 + 1, 64.0, 400.0), (100.0, 1.0, 0.5), (float("nan"), 1.0, 2.0), (300.0, float("-inf"), 2.0),
             (float(torch.tensor(k, dtype=dtype) * torch.tensor(0.1, dtype=dtype)), 0.1, 1.0)]
    g = torch.Generator().manual_seed(0)
    for bv, lov, hiv in cases:
        for bad_y in (False, True):
            y = torch.randn(3, k, generator=g).to(dtype)
            if bad_y:
                y[1, 7] = float("nan")
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            b = torch.tensor(bv, dtype=acc).expand(3)
            lo, hi = torch.tensor(lov, dtype=acc), torch.tensor(hiv, dtype=acc)
            fast = ops._values_look_ok(y, b, lo, hi)
            general = ops._values_look_ok(y, b.clone(), lo.expand(k).clone(), hi.expand(k).clone())
            assert fast == general, (bv, lov, hiv, bad_y, dtype)
    # integer budgets (the rounding ops): no slack on either path
    y = torch.rand(2, 5) * 3
    for bv in (5, 15, 4, 16):
        b = torch.tensor(bv).expand(2)
        lo, hi = torch.tensor(1), torch.tensor(3)
        assert ops._values_look_ok(y, b, lo, hi) == ops._values_look_ok(y, b.clone(), lo.expand(5).clone(),
                                                                         hi.expand(5).clone()) == (5 <= bv <= 15)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_get_the_float32_feasibility_slack(dtype):
    """The budget and bounds are float32-exact numbers: a half y must not widen the slack to its own ulp (bf16 once
    accepted a budget 1,200 tokens below K*lo)."""
    y = torch.randn(1, 200, generator=torch.Generator().manual_seed(0)).to(dtype)
    for bad in (12000.0, 82000.0):
        with pytest.raises(ValueError, match="infeasible"):
            capped_simplex_projection(y, bad, 64.0, 400.0)
    for ok in (12800.0, 13200.0, 80000.0):
        assert abs(float(capped_simplex_projection(y, ok, 64.0, 400.0).double().sum()) - ok) <= 0.01 * ok


def test_non_contiguous_inputs_pass_opcheck_and_compile():
    """Real outputs and fakes share one (contiguous) layout, so a transposed y compiles (inductor checked strides)."""
    y = (torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 2 + 4).t()  # (4, 6), non-contiguous
    b, lo, hi = torch.tensor(24.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64), torch.tensor(
        7.0, dtype=torch.float64)
    yd = y.double()
    torch.library.opcheck(torch.ops.arr_coc.capped_simplex_projection.default, (yd, b, lo, hi))
    x = capped_simplex_projection(yd, 24.0, 1.0, 7.0)
    torch.library.opcheck(torch.ops.arr_coc.round_to_budget.default, (x.t().contiguous().t(), b.long(), lo.long(),
                                                                      hi.long()))
    f = torch.compile(lambda v: project_and_round(v, 24, 1, 7)[1] * 2, fullgraph=True)
    assert torch.equal(f(y), project_and_round(y, 24, 1, 7)[1] * 2)


def test_far_from_budget_is_refused_per_row():
    """A row with a small budget must not inherit the allowance of a large row in the same batch."""
    x0 = torch.full((1, 5), 3.0)  # sums to 15, budget 10
    with pytest.raises(ValueError, match="sums to 15"):
        round_to_budget(x0, 10, 1, 7)
    with pytest.raises(ValueError, match="sums to 15"):
        round_to_budget(torch.cat([x0, torch.full((1, 5), 2000.0)]), torch.tensor([10, 10000]), 1, 3000)


def test_bounds_that_require_grad_are_refused():
    lo = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(ValueError, match="lo requires grad"):
        capped_simplex_projection(torch.randn(2, 5), 10.0, lo, 7.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_project_unchecked_equals_the_checked_op(dtype):
    # The solvers' inner projection takes the budget at the accumulation precision like the public op (it cast the
    # budget to y's dtype: 13,200 became 13,184 in bf16).
    from arr_coc.kernels.ops import project_unchecked

    g = torch.Generator().manual_seed(2)
    y = (torch.randn(16, 200, generator=g) * 80 + 66).to(dtype)
    x = project_unchecked(y, 13200.0, 64.0, 400.0)
    assert torch.equal(x, capped_simplex_projection(y, 13200.0, 64.0, 400.0))


def test_ints_past_the_float_mantissa_take_the_reference_rounding():
    # The kernel compares its floors with float32 bounds: hi = 2^24 + 1 reads as 2^24 there, and its integers would
    # differ from the reference's (both summing to the budget). Such rows go to the reference.
    i64 = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    assert dispatch.ints_exact_in(torch.float32, i64(2 ** 24), i64(0), i64([-(2 ** 24), 5]))
    assert not dispatch.ints_exact_in(torch.float32, i64(2 ** 24 + 1), i64(0), i64(3))
    assert not dispatch.ints_exact_in(torch.float32, i64(1), i64(-(2 ** 24) - 1), i64(3))
    assert dispatch.ints_exact_in(torch.float64, i64(2 ** 24 + 1), i64(0), i64(3))


def test_fused_result_is_checked_for_bounds_as_well_as_the_sum():
    # A bf16 x of [1000, 512, 512] (513.5 stored as 512) leaves 3 units for 2 entries below hi = 1000: the kernel's
    # selection then lifts the entry at hi too. The sum is exact, so only a bounds check catches it.
    x = torch.tensor([[1000.0, 512.0, 512.0]], dtype=torch.bfloat16)
    b, lo, hi = torch.tensor([2027]), torch.tensor(0), torch.tensor(1000)
    bad = torch.tensor([[1001, 513, 513]])
    with pytest.raises(ValueError, match="3 unit\\(s\\) must go up, but largest-remainder rounding can move only 2"):
        ops._check_rounded(x, bad, b, lo, hi)
    # Out of bounds with a deficit that is fine: named by index.
    x2 = torch.tensor([[3.5, 3.5]])
    with pytest.raises(ValueError, match=r"rounding at index \(0, 0\) gave 6, outside \[0, 5\]"):
        ops._check_rounded(x2, torch.tensor([[6, 1]]), torch.tensor([7]), torch.tensor(0), torch.tensor(5))
    ops._check_rounded(x2, torch.tensor([[4, 3]]), torch.tensor([7]), torch.tensor(0), torch.tensor(5))  # fine


# ----------------------------------------------------------------------------------------------------------------------
# The CUDA path's host syncs, counted on CPU: the "cuda" implementations run on CPU tensors with a fake extension, and a
# dispatch mode records every aten op (on a GPU each is a launch; a scalar read or a blocking copy is a host sync).


class _FakeExt:
    """Stands in for the extension: checks the binding's argument contract and computes with the reference."""

    def __init__(self):
        self.calls = []

    def forward(self, y, budget, budget_i, lo, hi, mode, path=0):
        r, k = y.shape
        acc = _acc(y.dtype)
        assert budget.shape == (r,) and lo.shape == hi.shape == (r, k)
        assert budget.dtype == lo.dtype == hi.dtype == acc
        assert budget_i is None or (budget_i.shape == (r,) and budget_i.dtype == torch.int64)
        self.calls.append((mode, path))
        with torch.utils._python_dispatch._disable_current_modes():  # the kernel's work is one launch: not logged
            x = projection_forward(y, budget, lo, hi) if mode != 2 else None
            t = round_largest_remainder(y if mode == 2 else x, budget_i, lo.long(), hi.long()) if mode else None
        return [x, t]


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the aten ops run, inside our custom ops too (their implementations run under the mode), with the
    composite ops decomposed as they would be on a device."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        self.ops.append(func._opname)
        if func.namespace == "arr_coc":
            with self:
                return torch._library.custom_ops.OPDEFS[func.name().split(".")[0]]._backend_fns[None](*args, **kwargs)
        return func(*args, **kwargs)


@pytest.fixture
def fake_cuda_path(fresh_dispatch):
    """The ops' "cuda" implementations serve CPU tensors, with a fake extension; yields the extension."""
    ext = _FakeExt()
    fresh_dispatch.setattr(dispatch, "HAS_CUDA_KERNEL", True)
    fresh_dispatch.setattr(dispatch, "_ext", ext)
    for op in (ops._projection_op, ops._round_op, ops._project_and_round_op):
        fresh_dispatch.setitem(op._backend_fns, None, op._backend_fns["cuda"])
    # The log only observes: it must not count as a tracing mode (which bypasses the cache of Python-number bounds).
    fresh_dispatch.setattr(ops, "_get_current_dispatch_mode", lambda: None, raising=False)
    return ext


def _logged(fn, monkeypatch):
    """(aten ops, host syncs) of one call of ``fn``: scalar reads, nonzero, Python-number tensors (a blocking
    host-to-device copy on a GPU) and .tolist()."""
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append("tolist") or tolist(t))
    with _OpLog() as log:
        fn()
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    syncs = [op for op in log.ops if op in ("_local_scalar_dense", "nonzero", "lift_fresh")] + reads
    return log.ops, syncs


@pytest.mark.parametrize("r", [1, 4])
def test_cuda_path_host_syncs_with_scalar_bounds(fake_cuda_path, monkeypatch, r):
    # The checks read everything they need in one transfer; the fused op adds the one reading of its result. Before:
    # 1 / 6 / 3 reads plus three blocking copies of the Python numbers per call (and at R > 1 the rounding ops' scalar
    # budget was made contiguous, which sent them to the ~40-op elementwise checks).
    y = torch.randn(r, 200, generator=torch.Generator().manual_seed(0)) * 80 + 66
    x = capped_simplex_projection(y, 13200.0, 64.0, 400.0)
    calls = {"capped_simplex_projection": (lambda: capped_simplex_projection(y, 13200.0, 64.0, 400.0), 1),
             "round_to_budget": (lambda: round_to_budget(x, 13200, 64, 400), 1),
             "project_and_round": (lambda: project_and_round(y, 13200, 64, 400), 2)}
    for name, (fn, want) in calls.items():
        fn()  # first call: the Python numbers' tensors are made (and kept)
        fake_cuda_path.calls.clear()
        _, syncs = _logged(fn, monkeypatch)
        assert len(syncs) == want, (name, syncs)
        assert len(fake_cuda_path.calls) == 1, name  # and the kernel ran (the integers are exact in float32)
    # The checks do not grow with the rows: the same ops at R = 4 as at R = 1 (a scalar budget stays one value).
    if r == 4:
        y1 = y[:1]
        x1 = capped_simplex_projection(y1, 13200.0, 64.0, 400.0)
        for fn4, fn1 in ((lambda: round_to_budget(x, 13200, 64, 400), lambda: round_to_budget(x1, 13200, 64, 400)),
                         (lambda: project_and_round(y, 13200, 64, 400), lambda: project_and_round(y1, 13200, 64, 400))):
            assert _logged(fn4, monkeypatch)[0] == _logged(fn1, monkeypatch)[0]


def test_cuda_path_results_and_errors_match_the_reference(fake_cuda_path):
    """Through the "cuda" implementations (fake extension computing with the reference): the same numbers as the CPU
    ops for transposed y, broadcast bounds and budgets, int32 budgets and half y, and the same errors."""
    g = torch.Generator().manual_seed(3)
    y = torch.randn(6, 10, generator=g) * 3 + 4
    yt = (torch.randn(10, 6, generator=g) * 3 + 4).t()
    lo_pe = torch.randint(0, 3, (6, 10), generator=g)
    hi_pe = lo_pe + torch.randint(1, 8, (6, 10), generator=g)
    bud = lo_pe.sum(-1) + 10
    row_b = torch.tensor([[30.0], [40.0]])
    y3 = torch.randn(2, 3, 10, generator=g) * 3 + 4
    cases = [
        (capped_simplex_projection, (yt, 40.0, 1.0, 7.0)),
        (capped_simplex_projection, (y3, row_b, 1.0, 7.0)),
        (capped_simplex_projection, (y, 40.0, torch.linspace(0, 2, 10), 7.0)),
        (capped_simplex_projection, (y, torch.full((6,), 40.0), torch.arange(6.0).unsqueeze(1) * 0.1, 7.0)),
        (capped_simplex_projection, (y.bfloat16(), torch.full((6,), 40.0), 1.0, 7.0)),
        (project_and_round, (yt, 40, 1, 7)),
        (project_and_round, (y, bud.int(), lo_pe, hi_pe)),
        (project_and_round, (y3, row_b.long(), 1, 7)),
        (project_and_round, (y.double(), 40, 1, 2 ** 53 + 1)),  # past float64's exact integers: reference rounding
        (round_to_budget, (capped_simplex_projection(y, 40.0, 1.0, 7.0).t().contiguous().t(), 40, 1, 7)),
        (round_to_budget, (capped_simplex_projection(y, bud.float(), lo_pe.float(), hi_pe.float()), bud, lo_pe,
                           hi_pe)),
    ]
    modes = []
    for fn, args in cases:
        fake_cuda_path.calls.clear()
        got = fn(*args)
        modes.append([m for m, _ in fake_cuda_path.calls])
        with _reference_impls():
            want = fn(*args)
        for g_, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert torch.equal(g_, w), (fn.__name__, [getattr(a, "shape", a) for a in args])
    # The kernel ran every time: projection (0), fused (1), rounding (2); the integers past 2^53 were rounded by the
    # reference after the kernel's projection.
    assert modes == [[0]] * 5 + [[1]] * 3 + [[0]] + [[2]] * 2, modes
    bad = [
        (capped_simplex_projection, (torch.where(y > 6, float("nan"), y), 40.0, 1.0, 7.0), "y contains"),
        (capped_simplex_projection, (y, torch.tensor([40.0, 40, float("nan"), 40, 40, 40]), 1.0, 7.0),
         r"budget contains 1 non-finite value\(s\); first at index \(2,\)"),
        (capped_simplex_projection, (y, 40.0, 8.0, 7.0), "lo > hi"),
        (capped_simplex_projection, (y, torch.tensor([40.0, 40, 40, 80, 40, 40]), 1.0, 7.0),
         r"infeasible budget at row \(3,\): budget=80 but K·hi = sum\(hi\)=70"),
        (round_to_budget, (torch.full((2, 5), 0.5), 10, 1, 7), r"x is below lo at index \(0, 0\)"),
        (round_to_budget, (torch.full((2, 5), 9.0), 10, 1, 7), r"x is above hi at index \(0, 0\)"),
        (round_to_budget, (torch.full((2, 5), 3.0), 10, 1, 7), r"x sums to 15 at row \(0,\) but budget is 10"),
        (round_to_budget, (torch.full((2, 5), 3.0), 100, 1, 7), "infeasible budget"),
        (round_to_budget, (torch.tensor([[1000.0, 512.0, 512.0]], dtype=torch.bfloat16), 2027, 0, 1000),
         r"3 unit\(s\) must go up"),
        (project_and_round, (y, 80, 1, 7), "infeasible budget"),
    ]
    for fn, args, match in bad:
        with pytest.raises(ValueError, match=match):
            fn(*args)


class _reference_impls:  # noqa: N801 (used as a context manager)
    """The ops' default (reference) implementations for the duration, whatever the fixture installed."""

    def __enter__(self):
        self.saved = [(op, op._backend_fns[None]) for op in (ops._projection_op, ops._round_op,
                                                               ops._project_and_round_op)]
        for op, _ in self.saved:
            op._backend_fns[None] = op._init_fn
        return self

    def __exit__(self, *exc):
        for op, fn in self.saved:
            op._backend_fns[None] = fn


def test_per_row_budget_checks_agree_with_the_general_path():
    # A per-row budget with constant bounds is checked on its min and max on the host: the same answers as the
    # elementwise flags, a row outside the slack on either side included.
    k = 200
    y = torch.randn(3, k, generator=torch.Generator().manual_seed(1))
    lo, hi = torch.tensor(64.0), torch.tensor(400.0)
    for rows in ([13200.0, k * 64.0, k * 400.0], [13200.0, k * 64.0 - 1, 13200.0], [13200.0, 13200.0, k * 400.0 + 1],
                 [13200.0, float("nan"), 13200.0], [float("-inf"), 13200.0, 13200.0]):
        b = torch.tensor(rows)
        assert ops._values_look_ok(y, b, lo, hi) == ops._values_look_ok(y, b, lo.expand(k).clone(),
                                                                         hi.expand(k).clone()), rows
    b = torch.tensor([1000, 200, 1001])
    lo_i, hi_i = torch.tensor(1), torch.tensor(5)
    assert not ops._values_look_ok(y, b, lo_i, hi_i)
    assert ops._values_look_ok(y[:2], b[:2], lo_i, hi_i) is ops._values_look_ok(y[:2], b[:2], lo_i.expand(k).clone(),
                                                                            hi_i.expand(k).clone()) is True


def test_numbers_past_the_dtype_range_are_named():
    # torch's own error named no argument ("Overflow when unpacking long long"), or was an OverflowError.
    x = torch.full((1, 4), 2.5)
    with pytest.raises(ValueError, match="budget=18446744073709551616 does not fit in torch.int64"):
        round_to_budget(x, 2 ** 64, 1, 7)
    with pytest.raises(ValueError, match="lo=-9223372036854775809 does not fit"):
        project_and_round(x, 10, -(2 ** 63) - 1, 7)
    with pytest.raises(ValueError, match="budget=1000.* does not fit in torch.float32"):
        capped_simplex_projection(x, 10 ** 400, 1.0, 7.0)
    # A float past float32's range became inf and was reported as "non-finite inf", not as the number given.
    with pytest.raises(ValueError, match=r"hi=1e\+39 does not fit in torch.float32"):
        capped_simplex_projection(x, 10.0, 1.0, 1e39)
    assert capped_simplex_projection(x.double(), 10.0, 1.0, 1e39).dtype == torch.float64  # fits in float64


def test_python_number_bounds_are_kept_safely(monkeypatch):
    """The 0-d tensors made for Python-number budgets and bounds are kept (on a GPU each was a blocking copy): one
    first made under inference mode must still be savable for backward, -0.0 is not 0.0, and fake tensors made
    while tracing are never kept."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from collections import OrderedDict

    monkeypatch.setattr(ops, "_CONSTANTS", OrderedDict())
    y = torch.randn(2, 5, generator=torch.Generator().manual_seed(0)) + 2
    with torch.inference_mode():
        capped_simplex_projection(y, 10.0, 1.0, 3.0)
    assert len(ops._CONSTANTS) == 3
    yg = y.clone().requires_grad_()
    capped_simplex_projection(yg, 10.0, 1.0, 3.0).pow(2).sum().backward()  # saves the kept lo and hi
    assert yg.grad is not None and torch.isfinite(yg.grad).all()
    neg, pos = ops._constant(-0.0, torch.float32, y.device), ops._constant(0.0, torch.float32, y.device)
    assert torch.signbit(neg) and not torch.signbit(pos)
    assert ops._constant(0.5, torch.float32, y.device) is ops._constant(0.5, torch.float32, y.device)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(y)
        assert capped_simplex_projection(fake, 11.0, 1.5, 3.0).shape == y.shape
    assert all(type(t) is torch.Tensor and not t.is_inference() for t in ops._CONSTANTS.values())
    assert ops._constant(11.0, torch.float32, y.device).item() == 11.0  # a real tensor, made after the tracing
    # Full: the least recently used entry goes, so a long run that meets many budgets keeps its current ones (a cache
    # that stopped growing when full left every later budget a blocking copy per call).
    monkeypatch.setattr(ops, "_MAX_CONSTANTS", 4)
    keep = ops._constant(0.5, torch.float32, y.device)
    for v in range(100):
        ops._constant(float(v), torch.float32, y.device)
        assert ops._constant(0.5, torch.float32, y.device) is keep  # used every step: never the oldest
    assert len(ops._CONSTANTS) == 4
    assert ops._constant(99.0, torch.float32, y.device) is ops._constant(99.0, torch.float32, y.device)


def test_numpy_scalars_are_numbers():
    # np.float32 budgets and bounds were refused as "not a number" (np.float64 passed, being a float subclass).
    np = pytest.importorskip("numpy")
    y = torch.randn(3, 200, generator=torch.Generator().manual_seed(0)) * 80 + 66
    want = capped_simplex_projection(y, 13200.0, 64.0, 400.0)
    got = capped_simplex_projection(y, np.float32(13200), np.float32(64), np.int64(400))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(round_to_budget(got, np.int64(13200), np.int32(64), np.int16(400)),
                       round_to_budget(want, 13200, 64, 400))
    with pytest.raises(ValueError, match="budget must be a number or a tensor"):
        capped_simplex_projection(y, np.bool_(True), 64.0, 400.0)


# ----------------------------------------------------------------------------------------------------------------------
# Added by mutation testing: each test below fails on a small edit of ops.py / dispatch.py that the suite missed.


def test_float_budget_slack_is_a_few_ulps_on_both_check_paths():
    # sum(lo) = 12,800: the slack is 4 ulps of float32 times max(sum|lo|, sum|hi|) = 80,000 (~0.04); a budget 0.1
    # below sum(lo), or 0.1 above sum(hi), is ~100 ulps out and must be refused by the host and the flag checks alike.
    y = torch.randn(1, 200, generator=torch.Generator().manual_seed(0))
    lo, hi = torch.tensor(64.0), torch.tensor(400.0)
    for bv in (12800.0 - 0.1, 80000.0 + 0.1):
        b = torch.tensor([bv])
        assert not ops._values_look_ok(y, b, lo, hi), bv
        assert not ops._values_look_ok(y, b, lo.expand(200).clone(), hi.expand(200).clone()), bv
        with pytest.raises(ValueError, match="infeasible budget"):
            capped_simplex_projection(y, bv, 64.0, 400.0)
    for bv in (12800.0, 80000.0):
        assert ops._values_look_ok(y, torch.tensor([bv]), lo.expand(200).clone(), hi.expand(200).clone())


def test_per_element_lo_above_hi_is_named():
    # Per-element bounds take the elementwise flags; lo > hi in one entry must be refused even when the sums are
    # feasible (sum(lo) = 3 <= 5 <= sum(hi) = 10).
    lo = torch.tensor([0.0, 0.0, 0.0, 0.0, 3.0])
    with pytest.raises(ValueError, match=r"lo > hi at index \(4,\): lo=3.0, hi=2.0"):
        capped_simplex_projection(torch.zeros(2, 5), 5.0, lo, 2.0)


def test_cached_constants_are_kept_per_dtype():
    # 0.1 in float32 is not 0.1 in float64: a cache keyed without the dtype handed float64 callers the float32 value.
    c32 = ops._constant(0.1, torch.float32, torch.device("cpu"))
    c64 = ops._constant(0.1, torch.float64, torch.device("cpu"))
    assert c32.dtype == torch.float32 and c64.dtype == torch.float64 and c64.item() == 0.1
    x = capped_simplex_projection(torch.tensor([[-5.0, -5.0, -5.0, 9.0]], dtype=torch.float64), 1.0, 0.1, 0.7)
    assert x.dtype == torch.float64 and x.min().item() == 0.1


def test_numbers_at_the_edge_of_the_dtype_range():
    x = torch.full((1, 4), 2.5)
    with pytest.raises(ValueError, match="budget=9223372036854775808 does not fit in torch.int64"):
        round_to_budget(x, 2 ** 63, 1, 7)
    big = torch.finfo(torch.float32).max  # fits exactly: accepted
    assert capped_simplex_projection(x, 10.0, 1.0, big).sum().item() == pytest.approx(10.0)


def test_hi_that_requires_grad_is_refused():
    hi = torch.tensor(7.0, requires_grad=True)
    with pytest.raises(ValueError, match="hi requires grad"):
        capped_simplex_projection(torch.randn(2, 5), 10.0, 1.0, hi)


def test_fused_result_below_lo_is_named():
    x = torch.tensor([[3.5, 3.5]])
    with pytest.raises(ValueError, match=r"rounding at index \(0, 0\) gave -1, outside \[0, 10\]"):
        ops._check_rounded(x, torch.tensor([[-1, 8]]), torch.tensor([7]), torch.tensor(0), torch.tensor(10))


def test_kernel_status_before_any_load(fresh_dispatch):
    assert dispatch.kernel_status() == "CUDA kernel not loaded yet (loads on first CUDA call)"


def test_forced_cuda_keeps_the_build_error_as_cause(fresh_dispatch):
    fresh_dispatch.setattr(dispatch, "_build", _no_compiler)
    fresh_dispatch.setenv("ARR_COC_KERNEL", "cuda")
    with pytest.raises(RuntimeError) as info:
        dispatch.load_kernel()
    assert isinstance(info.value.__cause__, RuntimeError) and "simulated" in str(info.value.__cause__)


def test_cuda_home_needs_headers_and_nvcc(tmp_path, monkeypatch):
    from torch.utils import cpp_extension

    only_headers, full = tmp_path / "a", tmp_path / "b"
    for home in (only_headers, full):
        (home / "include").mkdir(parents=True)
        (home / "include" / "cuda_runtime.h").write_text("")
    (full / "bin").mkdir()
    (full / "bin" / "nvcc").write_text("")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(only_headers))
    monkeypatch.setenv("CUDA_HOME", str(full))
    assert dispatch._cuda_home() == str(full)  # the headers-only root is passed over
    assert cpp_extension.CUDA_HOME == str(full)  # and cpp_extension builds with the root found


def test_sources_are_the_cu_and_cpp_files():
    names = [os.path.basename(p) for p in dispatch._sources()]
    assert "binding.cpp" in names and "projection.cu" in names
    assert all(n.endswith((".cu", ".cpp")) for n in names) and names == sorted(names)


def test_build_arguments(tmp_path, monkeypatch):
    # The build is mocked at cpp_extension.load: what it is asked to compile, with which flags and arch list.
    from torch.utils import cpp_extension

    seen = []

    def load(**kwargs):
        seen.append(dict(kwargs, arch=os.environ.get("TORCH_CUDA_ARCH_LIST")))
        return "ext"

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dispatch, "_cuda_home", lambda: "/cuda")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.delenv("ARR_COC_KERNEL_VERBOSE", raising=False)
    assert dispatch._build(require_gpu=False) == "ext"
    monkeypatch.setenv("ARR_COC_KERNEL_VERBOSE", "1")
    dispatch._build(require_gpu=False)
    assert [s["verbose"] for s in seen] == [False, True]
    kw = seen[0]
    assert kw["name"] == "arr_coc_cuda" and kw["sources"] == dispatch._sources() and kw["arch"] == "9.0+PTX"
    assert not any("fast_math" in f for f in kw["extra_cflags"] + kw["extra_cuda_cflags"])  # bit-exact rounding
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ
    monkeypatch.setattr(dispatch, "_CSRC", tmp_path)  # no sources: a clear error, not a build of nothing
    with pytest.raises(RuntimeError, match="no CUDA sources"):
        dispatch._build(require_gpu=False)
    assert len(seen) == 2


def test_cuda_path_takes_the_kernel_rounding_exactly_where_it_is_exact(fake_cuda_path):
    # The fused/rounding kernel is used up to the float's exact integers (|v| <= 2^24 for float32, inclusive) and for
    # K <= 1024 (inclusive); beyond either, the reference rounds (after the kernel's projection for the fused op).
    g = torch.Generator().manual_seed(6)
    y = torch.randn(2, 10, generator=g) * 3 + 4
    cases = [((y, 40, 1, 2 ** 24), [1], [2]), ((y, 40, 1, 2 ** 24 + 1), [0], []),
             ((y.double(), 40, 1, 2 ** 24 + 1), [1], [2])]
    yk = torch.rand(1, 1024, generator=g)
    cases += [((yk, 100, 0, 1), [1], [2]), ((torch.rand(1, 1025, generator=g), 100, 0, 1), [0], [])]
    for args, fused, rounding in cases:
        fake_cuda_path.calls.clear()
        x, t = project_and_round(*args)
        assert [m for m, _ in fake_cuda_path.calls] == fused, (args[0].shape, args[3])
        fake_cuda_path.calls.clear()
        assert torch.equal(round_to_budget(x, *args[1:]), t)
        assert [m for m, _ in fake_cuda_path.calls] == rounding, (args[0].shape, args[3])


def test_cuda_path_with_no_rows(fake_cuda_path):
    # No rows is valid input (the CPU ops return empty results); the exactness test of the CUDA path had no value to
    # read when the budget and bounds were all empty too and raised "stack expects a non-empty TensorList".
    y, b = torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64)
    lo, hi = torch.zeros(0, 5, dtype=torch.int64), torch.ones(0, 5, dtype=torch.int64)
    for bounds in ((1, 7), (lo, hi)):
        x, t = project_and_round(y, b, *bounds)
        assert x.shape == t.shape == (0, 5) and t.dtype == torch.int64
        assert round_to_budget(x, b, *bounds).shape == (0, 5)
    assert dispatch.ints_exact_in(torch.float32, b, lo, hi)


def test_bounds_broadcast_along_one_dim_are_not_one_value():
    # A (2, 1) budget expands to the (2, 3) rows with strides (1, 0), and a (K,) lo expanded to (R, K) has strides
    # (0, 1): some strides are 0 but the values differ, so the one-value host checks must not take them.
    with pytest.raises(ValueError, match=r"infeasible budget at row \(1, 0\): budget=100"):
        capped_simplex_projection(torch.zeros(2, 3, 10), torch.tensor([[30.0], [100.0]]), 1.0, 7.0)
    lo = torch.tensor([0.0, 0.0, 0.0, 0.0, 3.0]).expand(2, 5)
    with pytest.raises(ValueError, match=r"lo > hi at index \(0, 4\)"):
        capped_simplex_projection(torch.zeros(2, 5), 5.0, lo, 2.0)


def test_vmap_over_rows_matches_the_batched_call():
    # README: torch.vmap runs through PyTorch's per-row fallback (no batching rule registered) and agrees exactly.
    y = torch.randn(3, 10, generator=torch.Generator().manual_seed(0)) * 5 + 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's performance warning
        v = torch.vmap(lambda row: capped_simplex_projection(row, 30.0, 0.0, 10.0))(y)
    assert torch.equal(v, capped_simplex_projection(y, 30.0, 0.0, 10.0))


def test_torch_func_grad_jacrev_hessian_and_per_sample_grads_match_autograd():
    # custom_op's register_autograd builds an autograd.Function without setup_context, which torch.func refuses
    # (pytorch/pytorch#168393); the public function routes transformed calls through one that has it.
    g = torch.Generator().manual_seed(1)
    y = torch.randn(4, 12, generator=g, dtype=torch.float64) * 5 + 3
    b = torch.full((4,), 40.0, dtype=torch.float64)
    w = torch.randn(12, generator=g, dtype=torch.float64)

    def loss(y, b):
        return (capped_simplex_projection(y, b, 0.0, 10.0) * w).square().sum()

    yr, br = y.clone().requires_grad_(), b.clone().requires_grad_()
    ref_y, ref_b = torch.autograd.grad(loss(yr, br), (yr, br))
    got_y, got_b = torch.func.grad(loss, argnums=(0, 1))(y, b)
    torch.testing.assert_close(got_y, ref_y)
    torch.testing.assert_close(got_b, ref_b)
    # The Jacobian of one row against autograd's row by row.
    row = lambda r: capped_simplex_projection(r, 40.0, 0.0, 10.0)  # noqa: E731
    jac = torch.func.jacrev(row)(y[0])
    x0 = y[0].clone().requires_grad_()
    out = row(x0)
    ref = torch.stack([torch.autograd.grad(out[i], x0, retain_graph=True)[0] for i in range(12)])
    torch.testing.assert_close(jac, ref)
    # Per-sample gradients: vmap over grad, each row its own loss.
    per = torch.func.vmap(torch.func.grad(lambda r: (row(r) * w).square().sum()))(y)
    for i in range(4):
        xi = y[i].clone().requires_grad_()
        torch.testing.assert_close(per[i], torch.autograd.grad((row(xi) * w).square().sum(), xi)[0])
    # Second order (the double backward) as well.
    f = lambda r: (row(r) * w).square().sum()  # noqa: E731
    torch.testing.assert_close(torch.func.hessian(f)(y[1]), torch.autograd.functional.hessian(f, y[1]))
    # Forward mode: the tangent in y and the budget against autograd's (double-backward) JVP.
    v, vb = torch.randn(4, 12, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    proj = lambda y, b: capped_simplex_projection(y, b, 0.0, 10.0)  # noqa: E731
    _, tangent = torch.func.jvp(proj, (y, b), (v, vb))
    torch.testing.assert_close(tangent, torch.autograd.functional.jvp(proj, (y, b), (v, vb))[1])
    # A bad value is still refused by name under the transform.
    with pytest.raises(ValueError, match="infeasible"):
        torch.func.grad(lambda r: capped_simplex_projection(r, 500.0, 0.0, 10.0).sum())(y[0])
