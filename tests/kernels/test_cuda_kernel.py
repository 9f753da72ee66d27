"""The CUDA kernel against the float64 reference (GPU only: ``pytest -m gpu tests/kernels``).

Over 10^4 random rows: the default preset (K=200, B=13,200, 64..400), loose budgets, ties, per-element bounds, K=1,
K at the warp-slot boundaries, K=1000 and K=5000 (the block path), float64, bfloat16 and float16. Every case checks
|sum(x) - B| <= 1e-3 B, the bounds, max error <= 1e-4 relative to the float64 reference (plus one ulp of the storage
dtype for half types), that the fused rounding hits B exactly and equals the reference rounding of the same x bit for
bit, and that the backward matches the reference backward.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import pytest
import torch

from arr_coc.kernels import capped_simplex_projection, dispatch, project_and_round, round_to_budget
from arr_coc.kernels.reference import projection_backward, projection_forward, round_largest_remainder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEV = "cuda"


@pytest.fixture(scope="module")
def ext():
    old = dispatch._override_impl
    dispatch._override_impl = "cuda"  # a failed build raises here instead of silently testing the reference
    try:
        yield dispatch.load_kernel()
    finally:
        dispatch._override_impl = old


@dataclass(frozen=True)
class Case:
    name: str
    rows: int
    k: int
    dtype: torch.dtype = torch.float32
    lo: int = 64
    hi: int = 400
    budget: int | None = 13_200  # None: a random feasible integer budget per row
    dist: str = "normal"  # normal | softmax | ties | equal | small
    per_element: bool = False


CASES = [
    Case("preset", 8192, 200),
    Case("preset_softmax_targets", 1024, 200, dist="softmax"),
    Case("loose_budget", 1024, 200, lo=0, hi=10_000, budget=50, dist="small"),
    Case("random_budgets_unit_box", 1024, 200, lo=0, hi=1, budget=None, dist="small"),
    Case("ties", 512, 200, dist="ties"),
    Case("all_equal", 256, 200, dist="equal"),
    Case("per_element_bounds", 512, 200, lo=0, hi=0, budget=None, per_element=True),
    Case("k1", 1024, 1, lo=0, hi=100, budget=None),
    Case("k33_partial_slot", 256, 33, lo=0, hi=50, budget=None),
    Case("k256", 256, 256, lo=0, hi=400, budget=None),
    Case("k257_v16", 256, 257, lo=0, hi=400, budget=None),
    Case("k1000", 256, 1000, lo=0, hi=400, budget=None),
    Case("k1024", 128, 1024, lo=0, hi=400, budget=None),
    Case("k1025_block", 64, 1025, lo=0, hi=400, budget=None),
    Case("k5000_block", 64, 5000, lo=0, hi=400, budget=None),
    Case("float64", 512, 200, dtype=torch.float64),
    Case("bfloat16_preset", 1024, 200, dtype=torch.bfloat16),
    Case("float16_preset", 1024, 200, dtype=torch.float16),
    Case("float16_random", 512, 200, dtype=torch.float16, lo=0, hi=256, budget=None),
]


def test_cases_cover_ten_thousand_rows():
    assert sum(c.rows for c in CASES) >= 10_000


def _make(case: Case, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r, k = case.rows, case.k
    if case.dist == "normal":
        y = torch.randn(r, k, generator=g, dtype=torch.float64) * 100 + 66
    elif case.dist == "small":
        y = torch.randn(r, k, generator=g, dtype=torch.float64)
    elif case.dist == "softmax":
        u = torch.randn(r, k, generator=g, dtype=torch.float64) * 3
        y = case.lo + (13_200 - k * case.lo) * torch.softmax(u, -1)
    elif case.dist == "ties":
        y = torch.randint(0, 3, (r, k), generator=g).double() * 100
    else:  # equal
        y = torch.full((r, k), 5.0, dtype=torch.float64)
    if case.per_element:
        lo = torch.randint(0, 64, (r, k), generator=g)
        hi = lo + torch.randint(1, 400, (r, k), generator=g)
    else:
        lo, hi = torch.tensor(case.lo), torch.tensor(case.hi)
    lo_sum, hi_sum = lo.expand(r, k).sum(-1), hi.expand(r, k).sum(-1)
    if case.budget is None:
        b = lo_sum + ((hi_sum - lo_sum) * torch.rand(r, generator=g, dtype=torch.float64)).long()
    else:
        b = torch.full((r,), case.budget, dtype=torch.long)
    assert bool((lo_sum <= b).all() and (b <= hi_sum).all())
    return y.to(case.dtype).to(DEV), b.to(DEV), lo.to(DEV), hi.to(DEV)


def _ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of |x| in ``dtype`` (float64 result)."""
    if dtype in (torch.float32, torch.float64):
        return torch.zeros_like(x, dtype=torch.float64)
    mant = {torch.bfloat16: 7, torch.float16: 10}[dtype]
    e = torch.floor(torch.log2(x.double().abs().clamp_min(2.0**-14)))
    return torch.pow(2.0, e - mant)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_and_rounding_match_reference(ext, case):
    y, b, lo, hi = _make(case, seed=zlib.crc32(case.name.encode()))
    acc = torch.float64 if case.dtype == torch.float64 else torch.float32
    r, k = y.shape
    x = dispatch.cuda_projection_forward(ext, y, b.to(acc), lo.to(acc), hi.to(acc))
    assert x.dtype == y.dtype and x.shape == y.shape and bool(torch.isfinite(x).all())
    ref = projection_forward(y.double(), b.double(), lo.double(), hi.double())  # the float64 truth

    # Budget before rounding: 1e-3 B, plus the storage rounding of half types (random, about sqrt(K) half-ulps).
    xd = x.double()
    ulp = _ulp(ref, case.dtype)
    slack = 2 * math.sqrt(k) * ulp.amax(-1)
    gap = (xd.sum(-1) - b.double()).abs()
    assert bool((gap <= 1e-3 * b.double().abs().clamp_min(1) + slack).all()), f"max gap {gap.max().item()}"
    # Bounds, exactly (every bound here is representable in the dtype).
    assert bool((xd >= lo.double()).all() and (xd <= hi.double()).all())
    # Accuracy against float64, relative to the row's scale; half types also round once to their storage.
    scale = ref.abs().amax(-1, keepdim=True).clamp_min(1)
    ref_st = ref.to(case.dtype).double()
    err = ((xd - ref_st).abs() - ulp).clamp_min(0) / scale
    assert err.max().item() <= 1e-4, f"max relative error {err.max().item():.3g}"

    # The op path (registered CUDA kernel) gives the same x.
    assert torch.equal(capped_simplex_projection(y, b.to(acc), lo.to(acc), hi.to(acc)), x)

    # Fused projection + rounding: same x, integers hit B exactly, keep bounds, equal the reference rounding of x.
    x2, t = dispatch.cuda_project_and_round(ext, y, b, lo, hi)
    assert torch.equal(x2, x)
    assert t.dtype == torch.int64
    assert torch.equal(t.sum(-1), b)
    assert bool((t >= lo).all() and (t <= hi).all())
    assert torch.equal(t, round_largest_remainder(x2, b, lo, hi))
    assert torch.equal(dispatch.cuda_round(ext, x2, b, lo, hi), t)
    x3, t3 = project_and_round(y, b, lo, hi)
    assert torch.equal(x3, x) and torch.equal(t3, t)

    # Warp and block paths agree (the block path is the general one).
    if k <= dispatch.WARP_MAX_K:
        xb = dispatch.cuda_projection_forward(ext, y, b.to(acc), lo.to(acc), hi.to(acc), path=2)
        errb = ((xb.double() - xd).abs() - 2 * ulp).clamp_min(0) / scale
        assert errb.max().item() <= 1e-4


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("preset", "per_element_bounds", "k5000_block",
                                                                  "float64", "bfloat16_preset", "k1")],
                         ids=lambda c: c.name)
def test_backward_matches_reference(ext, case):
    y, b, lo, hi = _make(case, seed=7)
    acc = torch.float64 if case.dtype == torch.float64 else torch.float32
    x = dispatch.cuda_projection_forward(ext, y, b.to(acc), lo.to(acc), hi.to(acc))
    g = torch.randn(y.shape, device=DEV, dtype=torch.float64).to(y.dtype)
    gy_ref, gb_ref = projection_backward(x, lo.to(acc), hi.to(acc), g)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(case.dtype, 1e-2)
    for path in (0, 2) if case.k <= dispatch.WARP_MAX_K else (0,):
        gy, gb = dispatch.cuda_projection_backward(ext, x, lo.to(acc), hi.to(acc), g, path=path)
        torch.testing.assert_close(gy, gy_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(gb, gb_ref, rtol=tol, atol=tol)
        assert torch.equal(gy == 0, gy_ref == 0) or case.dtype in (torch.bfloat16, torch.float16)
    # Through autograd and the registered op.
    yg = y.detach().clone().requires_grad_()
    bg = b.to(acc).requires_grad_()
    xo = capped_simplex_projection(yg, bg, lo.to(acc), hi.to(acc))
    gy_a, gb_a = torch.autograd.grad(xo, (yg, bg), g)
    gy_r, gb_r = projection_backward(xo.detach(), lo.to(acc), hi.to(acc), g)
    torch.testing.assert_close(gy_a, gy_r, rtol=tol, atol=tol)
    torch.testing.assert_close(gb_a, gb_r.to(acc), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rounding_down_and_negative_remainders(ext, dtype):
    # D < 0: integer x that over-shoots B by 2 (float drift) must give back 2 from the smallest remainders above lo.
    g = torch.Generator().manual_seed(3)
    t0 = torch.randint(1, 9, (64, 50), generator=g)
    b = t0.sum(-1) - 2
    x = t0.to(dtype).to(DEV)
    b, lo, hi = b.to(DEV), torch.tensor(0, device=DEV), torch.tensor(10, device=DEV)
    t = dispatch.cuda_round(ext, x, b, lo, hi)
    assert torch.equal(t, round_largest_remainder(x, b, lo, hi))
    assert torch.equal(t.sum(-1), b)
    # Values in (-1, 0): x - floor(x) is inexact in float32, so the kernel switches to double keys.
    y = torch.randn(256, 50, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    bz = torch.zeros(256, dtype=torch.long, device=DEV)
    lo3, hi3 = torch.tensor(-3, device=DEV), torch.tensor(3, device=DEV)
    x2, t2 = dispatch.cuda_project_and_round(ext, y, bz, lo3, hi3)
    assert bool(((x2 < 0) & (x2 > -1)).any())
    assert torch.equal(t2, round_largest_remainder(x2, bz, lo3, hi3))
    assert torch.equal(t2.sum(-1), bz)
    assert torch.equal(round_to_budget(x2, bz, lo3, hi3), t2)


def test_reference_override_on_cuda(ext):
    case = CASES[0]
    y, b, lo, hi = _make(case, seed=11)
    old = dispatch._override_impl
    dispatch._override_impl = "reference"
    try:
        x = capped_simplex_projection(y[:64], b[:64].float(), lo.float(), hi.float())
    finally:
        dispatch._override_impl = old
    assert torch.equal(x, projection_forward(y[:64], b[:64].float(), lo.float(), hi.float()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cuda(ext, dtype):
    g = torch.Generator().manual_seed(5)
    y = (torch.randn(4, 40, generator=g) * 3 + 4).to(dtype).to(DEV)
    b = torch.full((4,), 150, device=DEV)
    lo, hi = torch.tensor(1, device=DEV), torch.tensor(7, device=DEV)
    bf, lof, hif = b.float(), lo.float(), hi.float()
    torch.library.opcheck(torch.ops.arr_coc.capped_simplex_projection.default,
                          (y.clone().requires_grad_(), bf.clone().requires_grad_(), lof, hif))
    x = torch.ops.arr_coc.capped_simplex_projection(y, bf, lof, hif)
    bwd = torch.ops.arr_coc.capped_simplex_projection_backward.default
    torch.library.opcheck(bwd, (x, lof, hif, torch.randn_like(x)))
    torch.library.opcheck(torch.ops.arr_coc.round_to_budget.default, (x, b, lo, hi))  # x in its own dtype
    torch.library.opcheck(torch.ops.arr_coc.project_and_round.default, (y.clone().requires_grad_(), b, lo, hi))


def test_compile_fullgraph_cuda(ext):
    torch._dynamo.reset()

    def f(y):
        x, t = project_and_round(y, 150, 1, 7)
        return capped_simplex_projection(y, 150.0, 1.0, 7.0).square().sum(), t

    y = torch.randn(4, 40, device=DEV, requires_grad=True)
    loss, t = torch.compile(f, fullgraph=True)(y)
    loss.backward()
    assert torch.equal(t.sum(-1), torch.full((4,), 150, device=DEV))
    assert y.grad is not None and bool(torch.isfinite(y.grad).all())


# ----------------------------------------------------------------------------------------------------------------------
# Layouts the cases above do not reach: more rows than a 65,535 grid dimension, strided (non-contiguous) inputs,
# bounds broadcast per column or per row (strides (0, 1) and (1, 0)) and budgets with a 0 or non-unit stride.


def _max_rel_err(x: torch.Tensor, y, b, lo, hi) -> float:
    ref = projection_forward(y.double(), b.double(), lo.double(), hi.double())
    scale = ref.abs().amax(-1, keepdim=True).clamp_min(1)
    return ((x.double() - ref).abs() / scale).max().item()


@pytest.mark.parametrize("k", [45, 1030], ids=["warp_k45", "block_k1030"])
def test_more_rows_than_grid_dim_limit(ext, k):
    # R = 70,001 > 65,535 rows (and not a multiple of the 4 rows per block); K not a multiple of 32.
    r = 70_001 if k <= dispatch.WARP_MAX_K else 66_001
    g = torch.Generator().manual_seed(21)
    y = (torch.randn(r, k, generator=g) * 5 + 3).to(DEV)
    b = torch.full((r,), 4 * k, dtype=torch.long, device=DEV)
    lo, hi = torch.tensor(0, device=DEV), torch.tensor(10, device=DEV)
    x = dispatch.cuda_projection_forward(ext, y, b.float(), lo.float(), hi.float())
    assert _max_rel_err(x, y, b, lo, hi) <= 1e-4
    # Every row was written, the last ones included.
    assert bool(((x.double().sum(-1) - b.double()).abs() <= 1e-3 * b.double()).all())
    gy, gb = dispatch.cuda_projection_backward(ext, x, lo.float(), hi.float(), torch.ones_like(x))
    assert gy.shape == x.shape and gb.shape == (r,)
    assert torch.equal(gy, torch.zeros_like(gy))  # g constant: g - mean_F(g) = 0 on F, 0 off F
    if k <= dispatch.WARP_MAX_K:
        x2, t = dispatch.cuda_project_and_round(ext, y, b, lo, hi)
        assert torch.equal(x2, x) and torch.equal(t.sum(-1), b)
        assert torch.equal(t, round_largest_remainder(x2, b, lo, hi))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_inputs_and_broadcast_bounds(ext, dtype):
    r, k = 300, 45
    g = torch.Generator().manual_seed(22)
    # y non-contiguous: the transpose of a (K, R) tensor.
    y = (torch.randn(k, r, generator=g) * 20 + 30).to(dtype).to(DEV).t()
    assert not y.is_contiguous()
    lo = torch.randint(0, 5, (k,), generator=g).to(DEV)  # per column: strides (0, 1) once expanded
    hi = torch.randint(50, 100, (r, 1), generator=g).to(DEV)  # per row: strides (1, 0)
    lo_sum, hi_sum = lo.sum().expand(r), (hi * k).squeeze(-1)
    b_wide = torch.stack([(lo_sum + hi_sum) // 2, torch.zeros_like(lo_sum)], -1)  # (R, 2)
    b = b_wide[:, 0]  # int64, row stride 2: reaches the rounding as is
    bf = b_wide.float()[:, 0]  # already the accumulation dtype, so dispatch passes it on without a copy
    assert b.stride() == (2,) and bf.stride() == (2,)
    acc = torch.float32
    x = dispatch.cuda_projection_forward(ext, y, bf, lo.to(acc), hi.to(acc))
    # Same bits as on contiguous, fully materialised inputs (the kernel's arithmetic does not depend on the strides).
    yc, lof, hif = y.contiguous(), lo.expand(r, k).contiguous(), hi.expand(r, k).contiguous()
    xc = dispatch.cuda_projection_forward(ext, yc, b.contiguous().to(acc), lof.to(acc), hif.to(acc))
    assert torch.equal(x, xc)
    assert _max_rel_err(x.float(), y.float(), b, lo, hi) <= 1e-4 + (1e-2 if dtype == torch.bfloat16 else 0)
    # Fused rounding with the same layouts, and rounding of a non-contiguous x.
    x2, t = dispatch.cuda_project_and_round(ext, y, b, lo, hi)
    assert torch.equal(x2, x) and torch.equal(t.sum(-1), b)
    assert torch.equal(t, round_largest_remainder(x2, b, lo, hi))
    xt = x2.t().contiguous().t()  # same values, column-major
    assert torch.equal(dispatch.cuda_round(ext, xt, b, lo, hi), t)
    # Backward with an expanded (0-stride) incoming gradient and strided bounds.
    g1 = torch.ones((), dtype=dtype, device=DEV).expand(r, k)
    gy, gb = dispatch.cuda_projection_backward(ext, x, lo.to(acc), hi.to(acc), g1)
    gy_ref, gb_ref = projection_backward(x, lof.to(acc), hif.to(acc), g1.contiguous())
    torch.testing.assert_close(gy, gy_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gb, gb_ref, rtol=1e-2, atol=1e-2)
    # The public op with a scalar budget (0-stride rows) on a 3-D strided y and (N, K) bounds.
    y3 = (torch.randn(4, 10, k, generator=g) * 20 + 30).to(dtype).to(DEV)[:, ::2]  # (4, 5, K), non-contiguous
    lo3 = torch.randint(0, 5, (5, k), generator=g).to(DEV)
    b3 = int(lo3.sum(-1).max()) + 10 * k
    x3 = capped_simplex_projection(y3, float(b3), lo3.float(), 60.0)
    b3_rows = torch.full((4, 5), b3, device=DEV)
    err3 = _max_rel_err(x3.float(), y3.float(), b3_rows, lo3, torch.tensor(60, device=DEV))
    assert err3 <= 1e-4 + (1e-2 if dtype == torch.bfloat16 else 0)
    _, t3 = project_and_round(y3, b3, lo3, 60)
    assert torch.equal(t3.sum(-1), b3_rows)


def test_negative_zero_remainders_rank_as_zero(ext):
    # x = -0.0 entries must rank like +0.0 (ties to the lower index), not above every positive remainder.
    x = torch.zeros(8, 40, device=DEV)
    x[:, ::3] = -0.0
    x[:, 5] = 0.25
    x[:, 7] = 0.25
    b = torch.full((8,), 3, device=DEV)
    lo, hi = torch.tensor(0, device=DEV), torch.tensor(5, device=DEV)
    t = dispatch.cuda_round(ext, x, b, lo, hi)
    assert torch.equal(t, round_largest_remainder(x, b, lo, hi))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_backward_with_bounds_the_dtype_cannot_hold(ext, dtype):
    # A clamped bf16 entry holds bf16(0.1), not 0.1: the kernel's free mask must read it as clamped, like the
    # reference's (both compare with bounds_as_stored).
    g = torch.Generator(device=DEV).manual_seed(3)
    y = torch.randn(64, 50, device=DEV, generator=g).to(dtype)
    lo, hi, b = torch.tensor(0.1, device=DEV), torch.tensor(0.7, device=DEV), torch.full((64,), 12.0, device=DEV)
    x = dispatch.cuda_projection_forward(ext, y, b, lo, hi)
    gx = torch.randn(64, 50, device=DEV, generator=g).to(dtype)
    gy_ref, gb_ref = projection_backward(x, lo, hi, gx)
    x64 = projection_forward(y.double(), b.double(), lo.double(), hi.double())
    clamped = (x64 <= 0.1) | (x64 >= 0.7)
    for path in (0, 2):
        gy, gb = dispatch.cuda_projection_backward(ext, x, lo, hi, gx, path=path)
        assert torch.equal(gy == 0, gy_ref == 0)
        assert bool((gy[clamped] == 0).all())
        torch.testing.assert_close(gy, gy_ref, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(gb, gb_ref, rtol=1e-2, atol=1e-2)


def test_fused_rounding_of_a_coarse_half_x_is_refused_like_the_reference(ext):
    # bf16 stores 513.5 as 512: x = [1000, 512, 512] leaves 3 units for the 2 entries below hi. The reference refuses
    # it before rounding; the kernel's result (which lifts the entry at hi) must be refused too, not returned.
    y = torch.tensor([[5000.0, 513.5, 513.5]], device=DEV, dtype=torch.bfloat16)
    for dev in ("cpu", DEV):
        with pytest.raises(ValueError, match="must go up"):
            project_and_round(y.to(dev), 2027, 0, 1000)


def test_rounding_with_integers_past_float32_matches_the_reference(ext):
    # hi = 2^24 + 1 is not a float32: such rows take the reference rounding, bit for bit.
    x = torch.tensor([[16777216.0, 0.0]], device=DEV, dtype=torch.float64).float()
    b, lo, hi = torch.tensor([16777217], device=DEV), torch.tensor(0, device=DEV), torch.tensor(16777217, device=DEV)
    assert torch.equal(dispatch.cuda_round(ext, x, b, lo, hi), round_largest_remainder(x, b, lo, hi))


@pytest.mark.parametrize("k", [8, 200, 1030], ids=["warp_k8", "warp_k200", "block_k1030"])
@pytest.mark.parametrize("per_element", [False, True], ids=["scalar_lo", "per_element_lo"])
def test_far_negative_lo_does_not_loosen_the_stopping_rule(ext, k, per_element):
    # The Newton tolerance scales with |B| + 2 sum|lo|; with lo = -1e6 far from binding that was ~15 on K=8 and
    # accepted tau = 0.375 with the wrong active set (x summed to 0.4, not 1). A row with a negative lo re-checks the
    # acceptance on the scale of its own values (newton_tighten).
    g = torch.Generator().manual_seed(k)
    y = torch.linspace(4, -3, 8).repeat(4, (k + 7) // 8)[:, :k].contiguous()
    y[1:] += torch.randn(3, k, generator=g) * 3
    b = torch.tensor([1.0, 0.0, -2.0, 5.0])
    lo = torch.full((4, k), -1e6) if per_element else torch.tensor(-1e6)
    hi = torch.tensor(1.0)
    x = dispatch.cuda_projection_forward(ext, y.to(DEV), b.to(DEV), lo.to(DEV), hi.to(DEV)).cpu()
    x64 = projection_forward(y.double(), b.double(), lo.double(), hi.double())
    assert (x.double().sum(-1) - b.double()).abs().max() <= 1e-3 * b.abs().clamp_min(1).max()
    torch.testing.assert_close(x.double(), x64, rtol=0, atol=1e-4 * float(x64.abs().max()))
