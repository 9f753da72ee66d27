"""Thompson sampling for context-free arms (Thompson 1933; Agrawal & Goyal 2012; Chapelle & Li 2011),
with Beta–Bernoulli or Gaussian posteriors, batched, and optional forgetting.

Each row of a batch draws its own posterior sample, so a batch of N decisions equals N independent Thompson draws
from the same posterior. Thompson sampling has no closed-form action probabilities; propensities are Monte Carlo
estimates over ``n_mc`` extra draws pooled with the draw actually used (so a chosen arm never gets propensity 0).

Beta sampling uses Marsaglia & Tsang (2000) gamma variates built from normal and uniform draws, so an explicit
``torch.Generator`` gives reproducible results on any device.

Shapes: N rows, A arms. Contexts are accepted in either layout and only N is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import _check_positive
from .greedy import _MeanPolicy

__all__ = ["ThompsonSampling"]

_PRIORS = ("beta", "gaussian")


def _sample_gamma(alpha: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gamma(alpha, 1) variates of the same shape as ``alpha`` (alpha > 0), Marsaglia–Tsang with boosting.

    Without an explicit generator, torch's native sampler (same distribution, faster) is used.
    """
    if generator is None:
        return torch._standard_gamma(alpha.contiguous())
    boost = alpha < 1
    a = torch.where(boost, alpha + 1, alpha)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    # Rejection rounds: acceptance is >95% per round for a >= 1, so a handful of vectorised rounds suffice.
    for _ in range(64):
        z = torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype)
        u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-38)) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-38)))
        take = ok & todo
        out = torch.where(take, d * v, out)
        todo = todo & ~ok
        if not bool(todo.any()):
            break
    out = torch.where(todo, d, out)  # practically unreachable; fall back to the mode-ish value instead of garbage
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
    return torch.where(boost, out * u.clamp_min(1e-38) ** (1.0 / alpha), out)


def _sample_beta(alpha: Tensor, beta: Tensor, generator: torch.Generator | None) -> Tensor:
    x = _sample_gamma(alpha, generator)
    y = _sample_gamma(beta, generator)
    return x / (x + y).clamp_min(1e-38)


class ThompsonSampling(_MeanPolicy):
    """Thompson sampling with a Beta–Bernoulli or a Gaussian (known noise variance) posterior per arm.

    Args:
        n_arms: number of arms A.
        prior: ``"beta"`` (rewards must lie in [0, 1]; fractional rewards update as soft successes) or ``"gaussian"``.
        alpha0: Beta prior successes.
        beta0: Beta prior failures.
        prior_mean: Gaussian prior mean.
        prior_var: Gaussian prior variance.
        noise_var: Gaussian reward-noise variance.
        n_mc: extra posterior draws used to estimate propensities.
        forgetting: optional forgetting rule.
        device: state device.
        dtype: state dtype.

    Shapes:
        select: contexts ``(N, ...)`` -> actions ``(N,)``, propensities ``(N,)``.
    """

    def __init__(self, n_arms: int, prior: str = "beta", *, alpha0: float = 1.0, beta0: float = 1.0,
                 prior_mean: float = 0.0, prior_var: float = 1.0, noise_var: float = 1.0, n_mc: int = 256,
                 forgetting=None, device=None, dtype=None) -> None:
        super().__init__(n_arms, initial_value=0.0, forgetting=forgetting, device=device, dtype=dtype)
        if prior not in _PRIORS:
            raise ValueError(f"prior must be one of {_PRIORS}, got {prior!r}")
        if not isinstance(n_mc, int) or n_mc < 1:
            raise ValueError(f"n_mc must be a positive int, got {n_mc!r}")
        self.prior = prior
        self.alpha0 = _check_positive("alpha0", alpha0)
        self.beta0 = _check_positive("beta0", beta0)
        if not isinstance(prior_mean, (int, float)) or prior_mean != prior_mean or abs(prior_mean) == float("inf"):
            raise ValueError(f"prior_mean must be a finite number, got {prior_mean!r}")
        self.prior_mean = float(prior_mean)
        self.prior_var = _check_positive("prior_var", prior_var)
        self.noise_var = _check_positive("noise_var", noise_var)
        self.n_mc = n_mc

    def _check_reward_domain(self, rewards: Tensor) -> None:
        if self.prior == "beta":
            bad = (rewards < 0) | (rewards > 1)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(f"Beta Thompson sampling needs rewards in [0, 1]; row {i} has {float(rewards[i])}")

    def posterior(self) -> tuple[Tensor, Tensor]:
        """Posterior parameters per arm, each ``(A,)``: ``(alpha, beta)`` for Beta, ``(mean, variance)`` for Gaussian."""
        if self.prior == "beta":
            return self.alpha0 + self.reward_sums, self.beta0 + self.counts - self.reward_sums
        precision = 1.0 / self.prior_var + self.counts / self.noise_var
        mean = (self.prior_mean / self.prior_var + self.reward_sums / self.noise_var) / precision
        return mean, 1.0 / precision

    @property
    def means(self) -> Tensor:
        """Posterior mean reward per arm, ``(A,)``."""
        p, q = self.posterior()
        return p / (p + q) if self.prior == "beta" else p

    def _draw(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Posterior samples of every arm's mean, ``(*shape, A)``."""
        p, q = self.posterior()
        if self.prior == "beta":
            return _sample_beta(p.expand(*shape, -1), q.expand(*shape, -1), generator)
        eps = torch.randn(*shape, self.n_arms, generator=generator, device=self.device, dtype=self.dtype)
        return p + q.sqrt() * eps

    def action_probabilities(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        contexts, _ = self._check_contexts(contexts)
        winners = self._draw((self.n_mc,), generator).argmax(-1)  # (S,)
        probs = torch.bincount(winners, minlength=self.n_arms).to(self.dtype) / self.n_mc
        return probs[None, :].expand(contexts.shape[0], -1)

    def select(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        contexts, _ = self._check_contexts(contexts)
        n = contexts.shape[0]
        actions = self._draw((n,), generator).argmax(-1)  # (N,)
        # All rows share one posterior, so one set of S extra draws serves every row.
        counts = torch.bincount(self._draw((self.n_mc,), generator).argmax(-1), minlength=self.n_arms).to(self.dtype)
        props = (counts[actions] + 1) / (self.n_mc + 1)
        return actions, props

    def _config(self) -> dict[str, Any]:
        cfg = super()._config()
        cfg.pop("initial_value")
        return {**cfg, "prior": self.prior, "alpha0": self.alpha0, "beta0": self.beta0, "prior_mean": self.prior_mean,
                "prior_var": self.prior_var, "noise_var": self.noise_var, "n_mc": self.n_mc}
