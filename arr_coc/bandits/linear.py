"""Linear contextual bandits, batched in torch: disjoint LinUCB and hybrid LinUCB (Li, Chu, Langford & Schapire 2010),
and linear Thompson sampling (Agrawal & Goyal 2013).

Per arm a the policies keep the ridge statistics ``G_a = Σ x xᵀ`` and ``b_a = Σ r x`` (aged by any forgetting rule of
:mod:`arr_coc.bandits.nonstationary`), and derive ``A_a = λI + G_a``, ``A_a⁻¹`` and ``θ_a = A_a⁻¹ b_a``.

Two solvers keep ``A_a⁻¹`` current:

* ``"cholesky"`` (default): factor all ``A_a`` at once after each update, ``O(A d³)`` independent of the batch size.
* ``"sherman_morrison"``: the rank-m Woodbury identity per arm, which for one row per arm is exactly the
  Sherman–Morrison update ``A⁻¹ - A⁻¹xxᵀA⁻¹ / (1 + xᵀA⁻¹x)``. The rows of a batch are scattered into a padded
  ``(A, m, d)`` tensor (m = most rows any arm received) so every arm updates at once; when m > d a refactorisation is
  cheaper and is used instead. Stationary statistics only.

With :class:`~arr_coc.bandits.nonstationary.PageHinkley` forgetting the change test does not watch the ridge
prediction ``xᵀθ_a``: its shrinkage towards 0 is a bias while an arm warms up (about ``λ·r/n`` at the n-th row for an
intercept context), and its sum tripped the test on stationary arms. It watches the residual against the ε-ridge
least-squares fit ``(G_a + εI)⁻¹b_a`` on the arm's rows before the batch, on rows with leverage at most 1 once the
arm has F rows (:meth:`_LinearPolicy._ph_prediction`). The fit is fixed for the batch.

Thompson draws: for disjoint arms the sampled value ``xᵀθ̃_a`` with ``θ̃_a ~ N(θ_a, v² A_a⁻¹)`` is exactly
``N(xᵀθ_a, v² xᵀA_a⁻¹x)``, so LinTS samples those scalars directly (one independent draw per row and arm) instead of
d-dimensional parameter vectors.

Shapes: N rows, A arms, d context width (F the feature width, d unless an encoder maps it, as in NeuralLinear).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import nonstationary as _ns
from ._base import _StatsPolicy
from ._validate import _check_int, _check_positive

__all__ = ["LinUCB", "LinTS", "HybridLinUCB"]

_SOLVERS = ("cholesky", "sherman_morrison")


def _cholesky(a: Tensor, what: str) -> Tensor:
    chol, info = torch.linalg.cholesky_ex(a)
    _require_factored(info, what)
    return chol


def _require_factored(info: Tensor, what: str) -> None:
    if bool((info != 0).any()):
        raise ValueError(f"{what} is not positive definite (cholesky info={info.tolist()}); increase lam")


class _LinearPolicy(_StatsPolicy):
    """Disjoint per-arm ridge regression on features ``phi(x)`` of width F (identity here)."""

    def __init__(self, n_arms: int, dim: int, feat_dim: int, lam: float, *, solver: str = "cholesky",
                 forgetting=None, device=None, dtype=None) -> None:
        super().__init__(n_arms, dim, dim, forgetting=forgetting, device=device, dtype=dtype)
        self.lam = _check_positive("lam", lam)
        if solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
        if solver == "sherman_morrison" and self.forgetting is not None:
            raise ValueError(f"solver='sherman_morrison' needs stationary statistics, got forgetting={self.forgetting}")
        self.solver = solver
        self.feat_dim = feat_dim
        self._register_stat("gram", (feat_dim, feat_dim))
        self._register_stat("xr", (feat_dim,))
        eye = torch.eye(feat_dim, device=device, dtype=self.dtype)
        self.register_buffer("A_inv", (eye / self.lam).expand(n_arms, -1, -1).clone())
        self.register_buffer("theta", torch.zeros(n_arms, feat_dim, device=device, dtype=self.dtype))

    # ------------------------------------------------------------------ features and statistics
    def _features(self, x: Tensor) -> Tensor:
        return x

    def _contributions(self, x: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        phi = self._features(x)  # (N, F)
        return {"gram": phi[:, :, None] * phi[:, None, :], "xr": rewards[:, None] * phi}

    def precision(self) -> Tensor:
        """``A_a = λI + Σ φφᵀ`` per arm, ``(A, F, F)``."""
        return self.gram + self.lam * torch.eye(self.feat_dim, device=self.device, dtype=self.dtype)

    def _refresh(self) -> None:
        chol = _cholesky(self.precision(), "lam*I + gram")
        self.A_inv.copy_(torch.cholesky_inverse(chol))
        self.theta.copy_(torch.cholesky_solve(self.xr[..., None], chol)[..., 0])

    def _after_add(self, x: Tensor, actions: Tensor, weights: Tensor | None) -> None:
        if self.solver != "sherman_morrison":
            self._refresh()
            return
        phi = self._features(x)
        n = phi.shape[0]
        counts = torch.bincount(actions, minlength=self.n_arms)
        m = int(counts.max())
        if m > self.feat_dim:  # Woodbury on m > F rows costs more than refactoring
            self._refresh()
            return
        # Scatter the rows into a zero-padded (A, m, F) block; padded rows leave the identity untouched.
        order = torch.sort(actions, stable=True).indices
        a_sorted = actions[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n, device=self.device) - starts[a_sorted]
        xs = phi.new_zeros(self.n_arms, m, self.feat_dim)
        xs[a_sorted, slot] = phi[order]
        p = xs @ self.A_inv  # (A, m, F) = X A⁻¹ (A⁻¹ symmetric)
        s = torch.eye(m, device=self.device, dtype=self.dtype) + p @ xs.transpose(1, 2)  # (A, m, m)
        self.A_inv.sub_(p.transpose(1, 2) @ torch.linalg.solve(s, p))
        self.A_inv.copy_(0.5 * (self.A_inv + self.A_inv.transpose(1, 2)))  # keep it symmetric in float32
        self.theta.copy_((self.A_inv @ self.xr[..., None])[..., 0])

    def _predict_chosen(self, x: Tensor, actions: Tensor) -> Tensor:
        return (self._features(x) * self.theta[actions]).sum(-1)

    def _ph_prediction(self, x: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        # Prequential least squares: θ_ls = (G_a + εI)⁻¹ b_a from the arm's rows since its last reset, before this
        # batch (no discounting under Page–Hinkley, so G_a = gram is unregularised; ε from _ns._ph_ridge). The ridge
        # θ_a = (λI + G_a)⁻¹ b_a shrinks towards 0 by about λ/n at the n-th row, a decaying bias whose Page–Hinkley
        # sum crossed the default threshold on stationary streams (134-138 resets in 2000 rows at reward 2 ± 0.1,
        # context [1], by seed). A row is tested only if its arm has at least F rows and the fit predicts it from at
        # least one row's worth of data, h = φᵀ(G_a + εI)⁻¹φ <= 1 (the mean policies' 1/n): a context outside the
        # span of the arm's rows (h ~ 1/ε) has no least-squares prediction, and one barely inside it a residual with
        # variance σ²(1 + h), h up to hundreds while the arm warms up, which alarmed as surely as a bias.
        phi = self._features(x)
        f = self.feat_dim
        eye = torch.eye(f, device=self.device, dtype=self.dtype)
        chol, info = torch.linalg.cholesky_ex(self.gram + _ns._ph_ridge(self.gram)[:, None, None] * eye)
        theta = torch.cholesky_solve(self.xr[..., None], chol)[..., 0]  # (A, F)
        ginv = torch.cholesky_inverse(chol)  # (A, F, F)
        n = phi.shape[0]
        proj = (phi @ ginv.permute(1, 0, 2).reshape(f, -1)).view(n, self.n_arms, f)  # (N, A, F), as in _mean_var
        lev = (proj.gather(1, actions[:, None, None].expand(-1, 1, f))[:, 0] * phi).sum(-1)
        ok = (self.counts >= f) & (info == 0)
        return (phi * theta[actions]).sum(-1), ok[actions] & (lev <= 1.0)

    # ------------------------------------------------------------------ estimates
    def _mean_var(self, contexts: Tensor, per_arm: bool) -> tuple[Tensor, Tensor]:
        """Posterior mean and ``φᵀA⁻¹φ`` per row and arm, each ``(N, A)``."""
        phi = self._features(contexts)
        if per_arm:  # phi (N, A, F)
            mean = torch.einsum("naf,af->na", phi, self.theta)
            var = torch.einsum("naf,afg,nag->na", phi, self.A_inv, phi)
        else:  # phi (N, F): one (N, F) x (F, A*F) GEMM instead of A broadcast matmuls
            n, f = phi.shape
            mean = phi @ self.theta.T
            proj = (phi @ self.A_inv.permute(1, 0, 2).reshape(f, -1)).view(n, self.n_arms, f)  # (N, A, F) = φᵀA_a⁻¹
            var = (proj * phi[:, None, :]).sum(-1)
        return mean, var.clamp_min(0.0)  # round-off can make a tiny quadratic form negative

    # ------------------------------------------------------------------ Thompson draws (LinTS, NeuralLinear "ts")
    @staticmethod
    def _draws(mean: Tensor, scale: Tensor, samples: int | None, generator) -> Tensor:
        """``mean + scale·ε`` with standard normal ε: ``(N, A)``, or ``(S, N, A)`` for ``samples=S``."""
        shape = mean.shape if samples is None else (samples, *mean.shape)
        return mean + scale * torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)

    def _ts_probabilities(self, mean: Tensor, scale: Tensor, generator) -> Tensor:
        """Monte Carlo action probabilities from ``n_mc`` draws, ``(N, A)``."""
        winners = self._draws(mean, scale, self.n_mc, generator).argmax(-1)  # (S, N)
        probs = torch.zeros_like(mean)
        probs.scatter_add_(1, winners.T, torch.ones_like(winners.T, dtype=mean.dtype))
        return probs / self.n_mc

    def _ts_select(self, mean: Tensor, scale: Tensor, generator) -> tuple[Tensor, Tensor]:
        """One draw per row picks the action; ``n_mc`` more estimate its propensity."""
        actions = self._draws(mean, scale, None, generator).argmax(-1)
        probs = self._mc_probs(self._draws(mean, scale, self.n_mc, generator), actions, self.n_arms)
        return actions, probs.gather(1, actions[:, None])[:, 0]

    def expected_reward(self, contexts: Tensor) -> Tensor:
        """Posterior-mean reward ``φᵀθ_a``.

        Shapes:
            contexts ``(N, d)`` or ``(N, A, d)`` -> ``(N, A)``.
        """
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            return self._mean_var(contexts, per_arm)[0]

    def uncertainty(self, contexts: Tensor) -> Tensor:
        """Posterior standard deviation factor ``sqrt(φᵀA_a⁻¹φ)`` (the UCB width before scaling by alpha).

        Shapes:
            contexts ``(N, d)`` or ``(N, A, d)`` -> ``(N, A)``.
        """
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            return self._mean_var(contexts, per_arm)[1].sqrt()

    def _config(self) -> dict[str, Any]:
        return {"n_arms": self.n_arms, "dim": self.dim, "lam": self.lam, "solver": self.solver, **super()._config()}


class LinUCB(_LinearPolicy):
    """Disjoint LinUCB: pick ``argmax_a xᵀθ_a + alpha * sqrt(xᵀA_a⁻¹x)`` (ties split evenly).

    Args:
        n_arms: number of arms A.
        dim: context width d.
        alpha: exploration scale of the confidence width.
        lam: ridge regulariser λ (> 0).
        solver: ``"cholesky"`` or ``"sherman_morrison"`` (see module docstring).
        forgetting: optional forgetting rule. ``Discount`` gives a discounted LinUCB: the discounted ridge estimate of
            D-LinUCB (Russac et al. 2019), but its width uses the discounted Gram matrix, ``xᵀA⁻¹x``, not their
            ``xᵀV⁻¹ṼV⁻¹x`` (Ṽ discounted by γ²), which is narrower; so it explores somewhat more than D-LinUCB.
            ``PageHinkley`` tests residuals against the arm's least-squares fit before each batch (module docstring).
        device: state device.
        dtype: state dtype; contexts must match.

    Shapes:
        select: contexts ``(N, d)`` or ``(N, A, d)`` -> actions ``(N,)``, propensities ``(N,)``.
    """

    def __init__(self, n_arms: int, dim: int, alpha: float = 1.0, lam: float = 1.0, *, solver: str = "cholesky",
                 forgetting=None, device=None, dtype=None) -> None:
        super().__init__(n_arms, dim, dim, lam, solver=solver, forgetting=forgetting, device=device, dtype=dtype)
        self.alpha = _check_positive("alpha", alpha, allow_zero=True)

    def scores(self, contexts: Tensor) -> Tensor:
        """UCB score per row and arm, ``(N, A)``."""
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            mean, var = self._mean_var(contexts, per_arm)
            return mean + self.alpha * var.sqrt()

    def action_probabilities(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return self._argmax_probs(self.scores(contexts))

    def select(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self._argmax_select(self.scores(contexts), generator)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "alpha": self.alpha}


class LinTS(_LinearPolicy):
    """Linear Thompson sampling: each row draws ``xᵀθ̃_a ~ N(xᵀθ_a, v² xᵀA_a⁻¹x)`` and takes the argmax.

    Args:
        n_arms: number of arms A.
        dim: context width d.
        v: posterior scale (Agrawal & Goyal's v).
        lam: ridge regulariser λ (> 0).
        n_mc: extra draws for the Monte Carlo propensities; an arm chosen with probability p gets
            ``1 - (1 - p)^(n_mc+1)`` of its due inverse-propensity weight, so raise it for off-policy evaluation of
            targets that favour rare arms (:mod:`arr_coc.bandits.ope`).
        solver: ``"cholesky"`` or ``"sherman_morrison"``.
        forgetting: optional forgetting rule; ``PageHinkley`` as for :class:`LinUCB`.
        device: state device.
        dtype: state dtype; contexts must match.

    Shapes:
        select: contexts ``(N, d)`` or ``(N, A, d)`` -> actions ``(N,)``, propensities ``(N,)``.
    """

    def __init__(self, n_arms: int, dim: int, v: float = 1.0, lam: float = 1.0, *, n_mc: int = 64,
                 solver: str = "cholesky", forgetting=None, device=None, dtype=None) -> None:
        super().__init__(n_arms, dim, dim, lam, solver=solver, forgetting=forgetting, device=device, dtype=dtype)
        self.v = _check_positive("v", v, allow_zero=True)
        self.n_mc = _check_int("n_mc", n_mc)

    def action_probabilities(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            mean, var = self._mean_var(contexts, per_arm)
            return self._ts_probabilities(mean, self.v * var.sqrt(), generator)

    def select(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            mean, var = self._mean_var(contexts, per_arm)
            return self._ts_select(mean, self.v * var.sqrt(), generator)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "v": self.v, "n_mc": self.n_mc}


class HybridLinUCB(_StatsPolicy):
    """Hybrid LinUCB (Li et al. 2010, Algorithm 2): ``r = zᵀβ + xᵀθ_a`` with β shared by all arms.

    The context's first ``dim`` columns are the arm-specific features x and the last ``shared_dim`` columns the shared
    features z, so contexts have width ``dim + shared_dim``. Shared features help most with per-arm contexts
    ``(N, A, dim + shared_dim)``; with shared contexts zᵀβ shifts all arms equally. Estimates follow from the joint
    ridge problem by a Schur complement on the arm blocks (equal to Li et al.'s incremental form):

    ``A0 = λI + Σ zzᵀ - Σ_a B_aᵀ A_a⁻¹ B_a``, ``β = A0⁻¹(Σ r z - Σ_a B_aᵀ A_a⁻¹ b_a)``, ``θ_a = A_a⁻¹(b_a - B_a β)``,
    with ``B_a = Σ x zᵀ``; the width is ``sqrt((z - w)ᵀA0⁻¹(z - w) + xᵀA_a⁻¹x)`` with ``w = B_aᵀA_a⁻¹x``.

    Args:
        n_arms: number of arms A.
        dim: arm-specific feature width d.
        shared_dim: shared feature width k.
        alpha: exploration scale.
        lam: ridge regulariser λ for both β and θ.
        forgetting: optional forgetting rule. ``PageHinkley`` tests residuals against the joint ε-ridge least-squares
            fit of β and θ before each batch (rows whose arm has d + k rows and leverage at most 1), not this
            ridge estimate: against the ridge prediction a stationary arm (x = [1], z = [u], reward 2 ± 0.1) was
            reset 131 times in 2000 rows.
        device: state device.
        dtype: state dtype.

    Shapes:
        select: contexts ``(N, d + k)`` or ``(N, A, d + k)`` -> actions ``(N,)``, propensities ``(N,)``.
    """

    def __init__(self, n_arms: int, dim: int, shared_dim: int, alpha: float = 1.0, lam: float = 1.0, *,
                 forgetting=None, device=None, dtype=None) -> None:
        shared_dim = _check_int("shared_dim", shared_dim)
        dim = _check_int("dim", dim)
        super().__init__(n_arms, dim + shared_dim, dim + shared_dim, forgetting=forgetting, device=device, dtype=dtype)
        self.arm_dim, self.shared_dim = dim, shared_dim
        self.alpha = _check_positive("alpha", alpha, allow_zero=True)
        self.lam = _check_positive("lam", lam)
        d, k = dim, shared_dim
        for name, shape in (("gram", (d, d)), ("xr", (d,)), ("cross", (d, k)), ("zz", (k, k)), ("zr", (k,))):
            self._register_stat(name, shape)
        dt, dev = self.dtype, self.device
        self.register_buffer("A_inv", (torch.eye(d, device=dev, dtype=dt) / self.lam).expand(n_arms, -1, -1).clone())
        self.register_buffer("A0_inv", torch.eye(k, device=dev, dtype=dt) / self.lam)
        self.register_buffer("beta", torch.zeros(k, device=dev, dtype=dt))
        self.register_buffer("theta", torch.zeros(n_arms, d, device=dev, dtype=dt))

    def _split(self, c: Tensor) -> tuple[Tensor, Tensor]:
        return c[..., : self.arm_dim], c[..., self.arm_dim:]

    def _contributions(self, x: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        xa, z = self._split(x)
        return {"gram": xa[:, :, None] * xa[:, None, :], "xr": rewards[:, None] * xa,
                "cross": xa[:, :, None] * z[:, None, :], "zz": z[:, :, None] * z[:, None, :],
                "zr": rewards[:, None] * z}

    def _joint_fit(self, ridge_d: float | Tensor, ridge_k: float | Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The joint ridge fit of the shared β and each arm's θ_a on the current statistics, by the Schur complement
        of the shared block (Li et al. 2010, Algorithm 2): per-arm blocks ``ridge_d·I + gram`` (a number, or ``(A, 1,
        1)``) and the shared block with ``ridge_k·I``. Returns ``(chol (A, d, d), info (A,), chol0 (k, k), info0,
        beta (k,), theta (A, d))``; the caller decides what a failed factorisation (``info != 0``) means."""
        eye_d = torch.eye(self.arm_dim, device=self.device, dtype=self.dtype)
        eye_k = torch.eye(self.shared_dim, device=self.device, dtype=self.dtype)
        chol, info = torch.linalg.cholesky_ex(self.gram + ridge_d * eye_d)
        ainv_b = torch.cholesky_solve(self.cross, chol)  # (A, d, k) = A_a⁻¹ B_a
        ainv_xr = torch.cholesky_solve(self.xr[..., None], chol)[..., 0]  # (A, d)
        a0 = ridge_k * eye_k + self.zz.sum(0) - (self.cross.transpose(1, 2) @ ainv_b).sum(0)
        b0 = self.zr.sum(0) - (self.cross.transpose(1, 2) @ ainv_xr[..., None])[..., 0].sum(0)
        chol0, info0 = torch.linalg.cholesky_ex(0.5 * (a0 + a0.T))
        beta = torch.cholesky_solve(b0[:, None], chol0)[:, 0]
        theta = ainv_xr - (ainv_b @ beta[None, :, None])[..., 0]
        return chol, info, chol0, info0, beta, theta

    def _refresh(self) -> None:
        chol, info, chol0, info0, beta, theta = self._joint_fit(self.lam, self.lam)
        _require_factored(info, "lam*I + gram")
        self.A_inv.copy_(torch.cholesky_inverse(chol))
        _require_factored(info0, "shared block A0")
        self.A0_inv.copy_(torch.cholesky_inverse(chol0))
        self.beta.copy_(beta)
        self.theta.copy_(theta)

    def _predict_chosen(self, x: Tensor, actions: Tensor) -> Tensor:
        xa, z = self._split(x)
        return (xa * self.theta[actions]).sum(-1) + z @ self.beta

    def _ph_prediction(self, x: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        # The joint least-squares fit of the hybrid model (shared β, per-arm θ_a) on the rows since each arm's last
        # reset, before this batch: _refresh's Schur-complement solve with a tiny ε (_ns._ph_ridge) in place of λ.
        # As for the disjoint policies, a row is tested only if its arm has d + k rows and the fit's leverage, the
        # width of _mean_var with the ε-inverses, is at most 1.
        xa, z = self._split(x)
        d, k = self.arm_dim, self.shared_dim
        chol, info, chol0, info0, beta, theta = self._joint_fit(_ns._ph_ridge(self.gram)[:, None, None],
                                                                _ns._ph_ridge(self.zz.sum(0)))
        u = torch.cholesky_solve(xa[:, :, None], chol[actions])[..., 0]  # (N, d) = A_ε⁻¹x
        zw = z - (self.cross[actions] * u[:, :, None]).sum(1)  # z - B_aᵀA_ε⁻¹x
        lev = (zw * torch.cholesky_solve(zw.T, chol0).T).sum(-1) + (xa * u).sum(-1)
        ok = (self.counts >= d + k) & (info == 0).all() & (info0 == 0) & torch.isfinite(beta).all()
        return (xa * theta[actions]).sum(-1) + z @ beta, ok[actions] & (lev <= 1.0)

    def _mean_var(self, contexts: Tensor, per_arm: bool) -> tuple[Tensor, Tensor]:
        xa, z = self._split(contexts)
        if not per_arm:  # broadcast shared contexts to every arm
            xa = xa[:, None].expand(-1, self.n_arms, -1)
            z = z[:, None].expand(-1, self.n_arms, -1)
        mean = torch.einsum("nad,ad->na", xa, self.theta) + z @ self.beta
        u = torch.einsum("ade,nae->nad", self.A_inv, xa)  # A_a⁻¹x
        w = torch.einsum("adk,nad->nak", self.cross, u)  # B_aᵀA_a⁻¹x
        zw = z - w
        var = torch.einsum("nak,kl,nal->na", zw, self.A0_inv, zw) + (xa * u).sum(-1)
        return mean, var.clamp_min(0.0)

    def scores(self, contexts: Tensor) -> Tensor:
        """UCB score per row and arm, ``(N, A)``."""
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            mean, var = self._mean_var(contexts, per_arm)
            return mean + self.alpha * var.sqrt()

    def uncertainty(self, contexts: Tensor) -> Tensor:
        """Joint posterior width ``sqrt(var)`` per row and arm, ``(N, A)``."""
        contexts, per_arm = self._check_contexts(contexts)
        with torch.no_grad():
            return self._mean_var(contexts, per_arm)[1].sqrt()

    def action_probabilities(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return self._argmax_probs(self.scores(contexts))

    def select(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self._argmax_select(self.scores(contexts), generator)

    def _config(self) -> dict[str, Any]:
        return {"n_arms": self.n_arms, "dim": self.arm_dim, "shared_dim": self.shared_dim, "alpha": self.alpha,
                "lam": self.lam, **super()._config()}

