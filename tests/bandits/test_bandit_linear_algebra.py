"""Linear-algebra checks: incremental inverses and estimates against direct solves; batched equals sequential."""

from __future__ import annotations

import pytest
import torch

from arr_coc.bandits import Discount, HybridLinUCB, LinTS, LinUCB, SlidingWindow


def _data(n, a, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    acts = torch.randint(0, a, (n,), generator=g)
    r = torch.randn(n, generator=g, dtype=dtype)
    return x, acts, r


def _direct(x, acts, r, a, lam, weights=None):
    d = x.shape[1]
    w = torch.ones(x.shape[0], dtype=x.dtype) if weights is None else weights
    a_inv, theta = [], []
    for arm in range(a):
        m = (acts == arm).to(x.dtype) * w
        gram = lam * torch.eye(d, dtype=x.dtype) + (x * m[:, None]).T @ x
        b = (x * (m * r)[:, None]).sum(0)
        a_inv.append(torch.linalg.inv(gram))
        theta.append(torch.linalg.solve(gram, b))
    return torch.stack(a_inv), torch.stack(theta)


@pytest.mark.parametrize("solver", ["cholesky", "sherman_morrison"])
@pytest.mark.parametrize("batch", [1, 3, 40])
def test_incremental_inverse_matches_direct_solve(solver, batch):
    a, d, lam = 3, 4, 0.7
    x, acts, r = _data(120, a, d)
    pol = LinUCB(a, d, lam=lam, solver=solver, dtype=torch.float64)
    for s in range(0, 120, batch):
        pol.update(x[s:s + batch], acts[s:s + batch], r[s:s + batch])
    a_inv, theta = _direct(x, acts, r, a, lam)
    assert torch.allclose(pol.A_inv, a_inv, atol=1e-10, rtol=1e-8)
    assert torch.allclose(pol.theta, theta, atol=1e-10, rtol=1e-8)


def test_sherman_morrison_float32_stays_close():
    a, d = 2, 6
    x, acts, r = _data(200, a, d, dtype=torch.float32)
    pol = LinUCB(a, d, solver="sherman_morrison")
    for s in range(200):
        pol.update(x[s:s + 1], acts[s:s + 1], r[s:s + 1])
    a_inv, theta = _direct(x.double(), acts, r.double(), a, 1.0)
    assert torch.allclose(pol.A_inv.double(), a_inv, atol=1e-5)
    assert torch.allclose(pol.theta.double(), theta, atol=1e-4)


def test_ucb_scores_match_formula():
    a, d = 3, 4
    x, acts, r = _data(60, a, d)
    pol = LinUCB(a, d, alpha=0.8, lam=1.0, dtype=torch.float64)
    pol.update(x, acts, r)
    a_inv, theta = _direct(x, acts, r, a, 1.0)
    q = torch.randn(7, d, dtype=torch.float64)
    want = q @ theta.T + 0.8 * torch.sqrt(torch.einsum("nd,ade,ne->na", q, a_inv, q))
    assert torch.allclose(pol.scores(q), want, atol=1e-10)
    # per-arm contexts use each arm's own vector
    qa = torch.randn(7, a, d, dtype=torch.float64)
    want = torch.einsum("nad,ad->na", qa, theta) + 0.8 * torch.sqrt(torch.einsum("nad,ade,nae->na", qa, a_inv, qa))
    assert torch.allclose(pol.scores(qa), want, atol=1e-10)


def test_per_arm_contexts_update_uses_chosen_arm_vector():
    a, d = 3, 2
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(30, a, d, generator=g, dtype=torch.float64)
    acts = torch.randint(0, a, (30,), generator=g)
    r = torch.randn(30, generator=g, dtype=torch.float64)
    pol = LinTS(a, d, dtype=torch.float64)
    pol.update(ctx, acts, r)
    chosen = ctx[torch.arange(30), acts]
    _, theta = _direct(chosen, acts, r, a, 1.0)
    assert torch.allclose(pol.theta, theta, atol=1e-10)


def test_discount_batched_equals_sequential():
    a, d, gamma = 2, 3, 0.9
    x, acts, r = _data(30, a, d)
    batched = LinUCB(a, d, forgetting=Discount(gamma), dtype=torch.float64)
    batched.update(x, acts, r)
    seq = LinUCB(a, d, forgetting=Discount(gamma), dtype=torch.float64)
    for i in range(30):
        seq.update(x[i:i + 1], acts[i:i + 1], r[i:i + 1])
    assert torch.allclose(batched.gram, seq.gram, atol=1e-12)
    assert torch.allclose(batched.theta, seq.theta, atol=1e-12)
    weights = gamma ** torch.arange(29, -1, -1, dtype=torch.float64)
    _, theta = _direct(x, acts, r, a, 1.0, weights)
    assert torch.allclose(batched.theta, theta, atol=1e-10)


def test_sliding_window_equals_fit_on_last_rows():
    a, d, w = 3, 3, 25
    x, acts, r = _data(70, a, d)
    pol = LinUCB(a, d, forgetting=SlidingWindow(w), dtype=torch.float64)
    for s in range(0, 70, 9):  # batch boundaries that do not align with the window
        pol.update(x[s:s + 9], acts[s:s + 9], r[s:s + 9])
    _, theta = _direct(x[-w:], acts[-w:], r[-w:], a, 1.0)
    assert torch.allclose(pol.theta, theta, atol=1e-10)
    assert float(pol.counts.sum()) == w


def test_hybrid_matches_joint_ridge():
    a, d, k, lam = 3, 2, 3, 0.5
    g = torch.Generator().manual_seed(4)
    ctx = torch.randn(80, a, d + k, generator=g, dtype=torch.float64)
    acts = torch.randint(0, a, (80,), generator=g)
    r = torch.randn(80, generator=g, dtype=torch.float64)
    pol = HybridLinUCB(a, d, k, alpha=1.3, lam=lam, dtype=torch.float64)
    pol.update(ctx[:50], acts[:50], r[:50])
    pol.update(ctx[50:], acts[50:], r[50:])

    def phi(c, arm):  # joint feature [z, 0.., x in block arm, ..0]
        out = torch.zeros(c.shape[0], k + a * d, dtype=torch.float64)
        out[:, :k] = c[:, d:]
        out[:, k + arm * d: k + (arm + 1) * d] = c[:, :d]
        return out

    chosen = ctx[torch.arange(80), acts]
    feats = torch.cat([phi(chosen[i:i + 1], int(acts[i])) for i in range(80)])
    gram = lam * torch.eye(k + a * d, dtype=torch.float64) + feats.T @ feats
    w = torch.linalg.solve(gram, feats.T @ r)
    assert torch.allclose(pol.beta, w[:k], atol=1e-10)
    assert torch.allclose(pol.theta, w[k:].view(a, d), atol=1e-10)
    q = torch.randn(5, a, d + k, generator=g, dtype=torch.float64)
    ginv = torch.linalg.inv(gram)
    want = torch.stack([(phi(q[:, arm], arm) @ w) + 1.3 * torch.sqrt(
        torch.einsum("np,pq,nq->n", phi(q[:, arm], arm), ginv, phi(q[:, arm], arm))) for arm in range(a)], 1)
    assert torch.allclose(pol.scores(q), want, atol=1e-9)


def test_hybrid_page_hinkley_residual_uses_the_full_posterior_mean():
    # Page–Hinkley watches r - prediction; the prediction must include the shared part zᵀβ, not only xᵀθ_a.
    a, d, k = 3, 2, 2
    g = torch.Generator().manual_seed(7)
    ctx = torch.randn(40, a, d + k, generator=g, dtype=torch.float64)
    acts = torch.randint(0, a, (40,), generator=g)
    r = ctx[torch.arange(40), acts, d:].sum(-1) + torch.randn(40, generator=g, dtype=torch.float64)
    pol = HybridLinUCB(a, d, k, alpha=0.0, dtype=torch.float64)
    pol.update(ctx, acts, r)
    assert float(pol.beta.abs().max()) > 0.1
    q = torch.randn(9, a, d + k, generator=g, dtype=torch.float64)
    qa = torch.randint(0, a, (9,), generator=g)
    want = pol.scores(q).gather(1, qa[:, None])[:, 0]  # alpha = 0: the posterior mean
    assert torch.allclose(pol._predict_chosen(q[torch.arange(9), qa], qa), want, atol=1e-12)


def test_lints_select_draws_with_the_posterior_standard_deviation():
    # The action draw is mean + v·sqrt(xᵀA⁻¹x)·ε, ε the generator's first (N, A) standard normals.
    a, d, v = 3, 2, 0.7
    x, acts, r = _data(30, a, d)
    pol = LinTS(a, d, v=v, dtype=torch.float64)
    pol.update(x, acts, r)
    q = torch.randn(200, d, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    eps = torch.randn(200, a, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    want = (pol.expected_reward(q) + v * pol.uncertainty(q) * eps).argmax(1)
    got, _ = pol.select(q, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got, want)
