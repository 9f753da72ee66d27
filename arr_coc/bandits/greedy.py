"""Context-free value-based exploration: ε-greedy and softmax (Boltzmann) over per-arm mean rewards.

Both have closed-form action probabilities, so their propensities are exact, which is what off-policy evaluation needs
(Sutton & Barto 2018, ch. 2; Auer et al. 2002 for ε_t-greedy). Statistics may be aged with any forgetting rule from
:mod:`arr_coc.bandits.nonstationary`.

Shapes: N rows, A arms. Contexts are accepted in either layout (``(N, d)`` or ``(N, A, d)``) and only N is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import _StatsPolicy
from ._validate import _check_positive, _check_real

__all__ = ["EpsilonGreedy", "Softmax"]


class _MeanPolicy(_StatsPolicy):
    """Per-arm sample means with an ``initial_value`` for arms without data."""

    _contextual = False
    # Page–Hinkley residuals are taken against the running mean of the arm's own earlier rewards, without prior or
    # initial_value: against a prediction still moving from its starting value towards the arm's mean, a stationary
    # arm whose mean lies a few thresholds' worth from that value alarmed every few rows, forever (each alarm
    # restarted the warm-up).
    _ph_running_mean = True

    def __init__(self, n_arms: int, *, initial_value: float = 0.0, forgetting=None, device=None, dtype=None) -> None:
        super().__init__(n_arms, None, 0, forgetting=forgetting, device=device, dtype=dtype)
        self.initial_value = _check_real("initial_value", initial_value)
        self._register_stat("reward_sums", ())

    def _contributions(self, x: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        return {"reward_sums": rewards}

    @property
    def means(self) -> Tensor:
        """Per-arm mean reward, ``(A,)``; ``initial_value`` where an arm has no (undiscounted-away) data."""
        seen = self.counts > 0
        fallback = torch.full_like(self.counts, self.initial_value)
        # Divide by the count itself however small (a discounted count decays geometrically): a floor such as 1e-12
        # would shrink the mean of an arm left unplayed for a few hundred steps towards 0.
        return torch.where(seen, self.reward_sums / torch.where(seen, self.counts, 1.0), fallback)

    def _predict_chosen(self, x: Tensor, actions: Tensor) -> Tensor:
        return self.means[actions]

    def _arm_probs(self) -> Tensor:
        """Context-free action distribution, ``(A,)``; subclasses with a closed form override it."""
        raise NotImplementedError

    # Settings that shape the cached action distribution (and ThompsonSampling's Monte Carlo draws): assigning one on
    # a live policy drops the caches, as an update does (it kept serving the old distribution).
    _CACHE_SETTINGS = frozenset({"initial_value", "epsilon", "temperature", "c", "n_mc", "prior_mean", "prior_var",
                                 "noise_var", "alpha0", "beta0"})

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self._CACHE_SETTINGS:
            self._refresh()

    def _refresh(self) -> None:
        self._cache = None  # statistics changed: the cached distribution is stale

    def _probs_and_cdf(self) -> tuple[Tensor, Tensor]:
        """The shared distribution and its CDF, cached between updates (state changes only in ``update``)."""
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0].device != self.device or cache[0].dtype != self.dtype:
            probs = self._arm_probs()
            cache = (probs, probs.cumsum(0))
            self._cache = cache
        return cache

    def action_probabilities(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        contexts, _ = self._check_contexts(contexts)
        return self._probs_and_cdf()[0][None, :].expand(contexts.shape[0], -1)

    def select(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        contexts, _ = self._check_contexts(contexts)
        probs, cdf = self._probs_and_cdf()
        # Every row shares one distribution: inverse-CDF sampling of the whole batch in one searchsorted; scaling by
        # the total keeps u strictly below the last CDF value, so zero-probability arms are never drawn.
        u = torch.rand(contexts.shape[0], generator=generator, device=self.device, dtype=self.dtype) * cdf[-1]
        actions = torch.searchsorted(cdf, u, right=True).clamp_max(self.n_arms - 1)
        return actions, probs[actions]

    def _config(self) -> dict[str, Any]:
        return {"n_arms": self.n_arms, "initial_value": self.initial_value, **super()._config()}


class EpsilonGreedy(_MeanPolicy):
    """ε-greedy: the best empirical arm with probability 1-ε (ties split evenly), a uniform arm otherwise.

    Args:
        n_arms: number of arms A.
        epsilon: exploration probability in [0, 1].
        initial_value: mean assumed for arms without data.
        forgetting: optional forgetting rule (see :mod:`arr_coc.bandits.nonstationary`).
        device: state device.
        dtype: state dtype.

    Shapes:
        select: contexts ``(N, ...)`` -> actions ``(N,)``, propensities ``(N,)``.
    """

    def __init__(self, n_arms: int, epsilon: float = 0.1, *, initial_value: float = 0.0, forgetting=None,
                 device=None, dtype=None) -> None:
        super().__init__(n_arms, initial_value=initial_value, forgetting=forgetting, device=device, dtype=dtype)
        self.epsilon = _check_real("epsilon", epsilon, low=0.0, high=1.0)

    def _arm_probs(self) -> Tensor:
        greedy = self._argmax_probs(self.means[None, :])[0]  # (A,)
        return (1 - self.epsilon) * greedy + self.epsilon / self.n_arms

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "epsilon": self.epsilon}


class Softmax(_MeanPolicy):
    """Boltzmann exploration: ``P(a) ∝ exp(mean_a / temperature)``.

    Args:
        n_arms: number of arms A.
        temperature: softmax temperature (> 0); small values approach greedy.
        initial_value: mean assumed for arms without data.
        forgetting: optional forgetting rule.
        device: state device.
        dtype: state dtype.

    Shapes:
        select: contexts ``(N, ...)`` -> actions ``(N,)``, propensities ``(N,)``.
    """

    def __init__(self, n_arms: int, temperature: float = 0.1, *, initial_value: float = 0.0, forgetting=None,
                 device=None, dtype=None) -> None:
        super().__init__(n_arms, initial_value=initial_value, forgetting=forgetting, device=device, dtype=dtype)
        self.temperature = _check_positive("temperature", temperature)

    def _arm_probs(self) -> Tensor:
        return torch.softmax(self.means / self.temperature, dim=-1)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "temperature": self.temperature}
