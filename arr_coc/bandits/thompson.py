"""Thompson sampling for context-free arms (Thompson 1933; Agrawal & Goyal 2012; Chapelle & Li 2011),
with Beta–Bernoulli or Gaussian posteriors, batched, and optional forgetting.

Each row of a batch draws its own posterior sample, so a batch of N decisions equals N independent Thompson draws
from the same posterior. Thompson sampling has no closed-form action probabilities; propensities are Monte Carlo
estimates over ``n_mc`` extra draws (cached until the next update, since every row shares the posterior) pooled with
the draw actually used (so a chosen arm never gets propensity 0). They are estimates: an arm of true probability p
gets ``1 - (1 - p)^(n_mc+1)`` of its due inverse-propensity weight (:mod:`arr_coc.bandits.ope`), and because the
draws are shared until the next update, their error is shared by every row selected in between.

Beta sampling uses Marsaglia & Tsang (2000) gamma variates built from normal and uniform draws, so an explicit
``torch.Generator`` gives reproducible results on any device.

Shapes: N rows, A arms. Contexts are accepted in either layout and only N is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._validate import _check_int, _check_positive, _check_real
from .greedy import _MeanPolicy

__all__ = ["ThompsonSampling"]

_PRIORS = ("beta", "gaussian")
_MC_SEED = 0x7A5C0DE  # offset of the private Monte Carlo generator's seed (see ThompsonSampling._win_counts)


def _sample_log_gamma(alpha: Tensor, generator: torch.Generator | None) -> Tensor:
    """Logarithms of Gamma(alpha, 1) variates of the same shape as ``alpha`` (alpha > 0), Marsaglia–Tsang with boosting.

    Returned in log space because a Gamma variate with a small shape underflows: for alpha = 0.01 about 40% of them lie
    below 1e-38. Boosting draws ``G ~ Gamma(alpha + 1)`` and ``U ~ U(0, 1)`` and returns ``log G + log(U) / alpha``,
    which stays finite. Without an explicit generator, torch's native sampler (same distribution, faster) draws G.
    """
    boost = alpha < 1
    a = torch.where(boost, alpha + 1, alpha)
    tiny = torch.finfo(a.dtype).tiny
    if generator is None:
        out = torch._standard_gamma(a.contiguous())
        u = torch.rand(a.shape, device=a.device, dtype=a.dtype)
        return torch.log(out.clamp_min(tiny)) + torch.where(boost, torch.log(u.clamp_min(tiny)) / alpha, 0.0)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    # Rejection rounds of 4 candidates per element: acceptance is >95% per candidate for a >= 1, so one round almost
    # always finishes (an element is left over with probability < 1e-5) and later rounds are rare.
    for _ in range(16):
        z = torch.randn((4, *a.shape), generator=generator, device=a.device, dtype=a.dtype)
        u = torch.rand((4, *a.shape), generator=generator, device=a.device, dtype=a.dtype)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(tiny)) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(tiny)))
        dv = d * v
        cand = dv[3]
        for j in (2, 1, 0):  # the first accepted candidate wins (argmax over an int8 axis is slow on CPU)
            cand = torch.where(ok[j], dv[j], cand)
        take = ok.any(0) & todo
        out = torch.where(take, cand, out)
        todo = todo & ~take
        if not bool(todo.any()):
            break
    out = torch.where(todo, d, out)  # practically unreachable; fall back to the mode-ish value instead of garbage
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
    return torch.log(out.clamp_min(tiny)) + torch.where(boost, torch.log(u.clamp_min(tiny)) / alpha, 0.0)


def _sample_beta(alpha: Tensor, beta: Tensor, generator: torch.Generator | None) -> Tensor:
    """Beta(alpha, beta) as ``X / (X + Y) = sigmoid(log X - log Y)`` from two Gamma variates, computed in log space
    so that shapes well below 1 (whose Gamma variates underflow) keep the distribution's symmetry."""
    return torch.sigmoid(_sample_log_gamma(alpha, generator) - _sample_log_gamma(beta, generator))


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
                 prior_mean: float = 0.0, prior_var: float = 1.0, noise_var: float = 1.0, n_mc: int = 1024,
                 forgetting=None, device=None, dtype=None) -> None:
        super().__init__(n_arms, initial_value=0.0, forgetting=forgetting, device=device, dtype=dtype)
        if prior not in _PRIORS:
            raise ValueError(f"prior must be one of {_PRIORS}, got {prior!r}")
        n_mc = _check_int("n_mc", n_mc)
        self.prior = prior
        self.alpha0 = _check_positive("alpha0", alpha0)
        self.beta0 = _check_positive("beta0", beta0)
        self.prior_mean = _check_real("prior_mean", prior_mean)
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
        """Posterior parameters per arm, each ``(A,)``: ``(alpha, beta)`` (Beta) or ``(mean, variance)`` (Gaussian)."""
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

    def _refresh(self) -> None:
        super()._refresh()
        self._mc_cache = None  # the posterior changed: the Monte Carlo win counts are stale

    def _win_counts(self) -> Tensor:
        """How often each arm wins in ``n_mc`` posterior draws, ``(A,)``.

        All rows share one posterior, and it changes only in ``update``, so one set of draws serves every ``select``
        until the next update. The draws come from a private generator seeded by the number of observations, not from
        the caller's: a ``select`` with a seeded generator then consumes it the same way whether or not the cache was
        just rebuilt, so it is reproducible.
        """
        cache = getattr(self, "_mc_cache", None)
        if cache is None or cache.device != self.device or cache.dtype != self.dtype:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(_MC_SEED + int(self.steps))
            winners = self._draw((self.n_mc,), gen).argmax(-1)  # (S,)
            cache = torch.bincount(winners, minlength=self.n_arms).to(self.dtype)
            self._mc_cache = cache
        return cache

    def action_probabilities(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        contexts, _ = self._check_contexts(contexts)
        probs = self._win_counts() / self.n_mc
        return probs[None, :].expand(contexts.shape[0], -1)

    def select(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        contexts, _ = self._check_contexts(contexts)
        counts = self._win_counts()
        actions = self._draw((contexts.shape[0],), generator).argmax(-1)  # (N,) one Thompson draw per row
        # The row's own draw is pooled with the S cached ones, so a chosen arm never gets propensity 0.
        props = (counts[actions] + 1) / (self.n_mc + 1)
        return actions, props

    def _config(self) -> dict[str, Any]:
        cfg = super()._config()
        cfg.pop("initial_value")
        return {**cfg, "prior": self.prior, "alpha0": self.alpha0, "beta0": self.beta0, "prior_mean": self.prior_mean,
                "prior_var": self.prior_var, "noise_var": self.noise_var, "n_mc": self.n_mc}
