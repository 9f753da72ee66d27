"""Off-policy evaluation of a target policy from logged bandit data: IPS, SNIPS and doubly robust, each with a
percentile bootstrap confidence interval.

* IPS (Horvitz & Thompson 1952; in bandits e.g. Li et al. 2011): ``mean_i w_i r_i`` with ``w_i = π(a_i|x_i) / p_i``;
  unbiased whenever the logged propensities ``p_i`` are correct and positive wherever π acts.
* SNIPS (Swaminathan & Joachims 2015): ``Σ w_i r_i / Σ w_i``; biased by O(1/n) but with far lower variance.
* DR (Dudík, Langford & Li 2011): ``mean_i [Σ_a π(a|x_i) q̂(x_i, a) + w_i (r_i - q̂(x_i, a_i))]``; unbiased if either
  the propensities or the reward model are correct. :func:`fit_reward_model` fits per-arm ridge regressions with
  K-fold cross-fitting (Chernozhukov et al. 2018) so that q̂ for a row never saw that row's reward.

Monte Carlo propensities (the Thompson-sampling policies: :class:`~arr_coc.bandits.ThompsonSampling`,
:class:`~arr_coc.bandits.LinTS`, the ``"ts"`` head of :class:`~arr_coc.bandits.NeuralLinear`) are not exact: with S
extra draws an arm chosen with true probability p is logged with ``p̂ = (C + 1) / (S + 1)``, ``C ~ Binomial(S, p)``,
and ``E[1 / p̂] = (1 - (1 - p)^(S+1)) / p``, so IPS and DR give that arm ``1 - (1 - p)^(S+1)`` of its due weight:
negligible for ``p ≫ 1/S``, about 0.63 at ``p = 1/S``. When the target policy favours arms the logging policy
rarely chose, log with ``n_mc`` large enough that ``1/n_mc`` is well below the smallest propensity that matters.

Everything is torch and runs on the device of the inputs; bootstrap replicates are drawn in chunks, never row by row.
Shapes: N logged rows, A arms, d context width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from arr_coc._utils import _check_tensor

from ._validate import _check_int, _check_positive, _check_real

__all__ = ["OPEResult", "ips", "snips", "dr", "fit_reward_model"]


@dataclass(frozen=True)
class OPEResult:
    """An off-policy estimate with its bootstrap uncertainty."""

    value: float  # point estimate of the target policy's expected reward
    ci_low: float  # lower end of the percentile bootstrap interval
    ci_high: float  # upper end of the percentile bootstrap interval
    std_err: float  # bootstrap standard deviation of the estimate
    n: int  # number of logged rows used


def _check_float(name: str, t: object, shape: tuple[int, ...] | None = None) -> Tensor:
    _check_tensor(name, t)
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        idx = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s), first at {idx}: {t[idx]}")
    return t


def _check_logged(rewards: Tensor, actions: Tensor, pscore: Tensor, target_probs: Tensor) -> tuple[Tensor, ...]:
    rewards = _check_float("rewards", rewards)
    if rewards.dim() != 1 or rewards.shape[0] < 1:
        raise ValueError(f"rewards must have shape (N,) with N >= 1, got {tuple(rewards.shape)}")
    n = rewards.shape[0]
    target_probs = _check_float("target_probs", target_probs)
    if target_probs.dim() != 2 or target_probs.shape[0] != n:
        raise ValueError(f"target_probs must have shape ({n}, n_arms), got {tuple(target_probs.shape)}")
    n_arms = target_probs.shape[1]
    pscore = _check_float("pscore", pscore, (n,))
    if not isinstance(actions, Tensor) or actions.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"actions must be an int64/int32 tensor, got {getattr(actions, 'dtype', type(actions))}")
    if tuple(actions.shape) != (n,):
        raise ValueError(f"actions must have shape ({n},), got {tuple(actions.shape)}")
    devices = {t.device for t in (rewards, actions, pscore, target_probs)}
    if len(devices) > 1:
        raise ValueError(f"inputs are on different devices: {sorted(map(str, devices))}")
    actions = actions.long()
    out = (actions < 0) | (actions >= n_arms)
    if bool(out.any()):
        i = int(out.nonzero()[0, 0])
        raise ValueError(f"action {int(actions[i])} at row {i} is out of range [0, {n_arms})")
    bad = (pscore <= 0) | (pscore > 1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"pscore must lie in (0, 1]; row {i} has {float(pscore[i])}")
    if bool((target_probs < 0).any()):
        raise ValueError(f"target_probs has negative entries, e.g. {float(target_probs.min())}")
    row_err = (target_probs.sum(1) - 1).abs()
    if bool((row_err > 1e-4).any()):
        i = int(row_err.argmax())
        raise ValueError(f"target_probs rows must sum to 1; row {i} sums to {float(target_probs[i].sum())}")
    return rewards, actions, pscore, target_probs


def _bootstrap(num: Tensor, den: Tensor | None, n_boot: int, alpha: float, generator: torch.Generator | None,
               chunk: int) -> tuple[float, float, float]:
    """Percentile bootstrap of ``mean(num)`` (or ``Σnum / Σden``); returns ``(low, high, std)``.

    A ratio replicate whose resampled ``Σden`` is 0 (every drawn row has zero weight) is undefined, like the estimate
    itself would be, and is left out of the interval and the standard deviation rather than counted as 0.
    """
    n_boot = _check_int("n_boot", n_boot, min_value=2)
    alpha = _check_real("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    chunk = _check_int("chunk", chunk)
    n = num.shape[0]
    stats = []
    for start in range(0, n_boot, chunk):  # chunks of replicates bound memory at chunk * N indices
        reps = min(chunk, n_boot - start)
        idx = torch.randint(0, n, (reps, n), generator=generator, device=num.device)
        if den is None:
            stats.append(num[idx].mean(1))
        else:
            total = den[idx].sum(1)
            stats.append(torch.where(total > 0, num[idx].sum(1) / total, float("nan")))
    s = torch.cat(stats).double()
    if den is not None:
        s = s[~s.isnan()]
        if s.shape[0] < 2:
            raise ValueError(f"only {s.shape[0]} of {n_boot} bootstrap replicates drew a row with positive weight; "
                             "the interval is undefined (too few rows where the target policy acts)")
    q = torch.quantile(s, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=s.dtype, device=s.device))
    return float(q[0]), float(q[1]), float(s.std())


def ips(rewards: Tensor, actions: Tensor, pscore: Tensor, target_probs: Tensor, *, n_boot: int = 1000,
        alpha: float = 0.05, generator: torch.Generator | None = None, chunk: int = 64) -> OPEResult:
    """Inverse propensity scoring.

    Args:
        rewards: logged rewards.
        actions: logged actions.
        pscore: logging policy's probability of each logged action, in (0, 1].
        target_probs: the evaluated policy's action distribution on each logged context.
        n_boot: bootstrap replicates.
        alpha: 1 - confidence level of the interval.
        generator: RNG for the bootstrap.
        chunk: replicates drawn at once.

    Returns:
        :class:`OPEResult`.

    Shapes:
        rewards, actions, pscore: ``(N,)``; target_probs: ``(N, A)``.
    """
    rewards, actions, pscore, target_probs = _check_logged(rewards, actions, pscore, target_probs)
    w = target_probs.gather(1, actions[:, None])[:, 0] / pscore
    v = w * rewards
    low, high, se = _bootstrap(v, None, n_boot, alpha, generator, chunk)
    return OPEResult(float(v.mean()), low, high, se, int(v.shape[0]))


def snips(rewards: Tensor, actions: Tensor, pscore: Tensor, target_probs: Tensor, *, n_boot: int = 1000,
          alpha: float = 0.05, generator: torch.Generator | None = None, chunk: int = 64) -> OPEResult:
    """Self-normalised IPS; arguments and shapes as :func:`ips`."""
    rewards, actions, pscore, target_probs = _check_logged(rewards, actions, pscore, target_probs)
    w = target_probs.gather(1, actions[:, None])[:, 0] / pscore
    if float(w.sum()) <= 0:
        raise ValueError("SNIPS is undefined: the target policy puts zero probability on every logged action")
    low, high, se = _bootstrap(w * rewards, w, n_boot, alpha, generator, chunk)
    return OPEResult(float((w * rewards).sum() / w.sum()), low, high, se, int(w.shape[0]))


def dr(rewards: Tensor, actions: Tensor, pscore: Tensor, target_probs: Tensor, reward_hat: Tensor, *,
       n_boot: int = 1000, alpha: float = 0.05, generator: torch.Generator | None = None, chunk: int = 64
       ) -> OPEResult:
    """Doubly robust estimate with a reward model ``reward_hat[i, a] ≈ E[r | x_i, a]``.

    Args:
        rewards: logged rewards.
        actions: logged actions.
        pscore: logging propensities in (0, 1].
        target_probs: evaluated policy's action distribution per logged context.
        reward_hat: reward-model predictions for every arm (use :func:`fit_reward_model` for cross-fitted ones).
        n_boot: bootstrap replicates.
        alpha: 1 - confidence level.
        generator: RNG for the bootstrap.
        chunk: replicates drawn at once.

    Returns:
        :class:`OPEResult`.

    Shapes:
        rewards, actions, pscore: ``(N,)``; target_probs, reward_hat: ``(N, A)``.
    """
    rewards, actions, pscore, target_probs = _check_logged(rewards, actions, pscore, target_probs)
    reward_hat = _check_float("reward_hat", reward_hat, tuple(target_probs.shape))
    if reward_hat.device != rewards.device:
        raise ValueError(f"reward_hat is on {reward_hat.device}, rewards on {rewards.device}")
    w = target_probs.gather(1, actions[:, None])[:, 0] / pscore
    q_logged = reward_hat.gather(1, actions[:, None])[:, 0]
    v = (target_probs * reward_hat).sum(1) + w * (rewards - q_logged)
    low, high, se = _bootstrap(v, None, n_boot, alpha, generator, chunk)
    return OPEResult(float(v.mean()), low, high, se, int(v.shape[0]))


def fit_reward_model(contexts: Tensor, actions: Tensor, rewards: Tensor, n_arms: int, *, lam: float = 1.0,
                     n_folds: int = 2, generator: torch.Generator | None = None) -> Tensor:
    """Cross-fitted per-arm ridge regression (with intercept) of the reward on the context.

    Rows are split at random into ``n_folds`` folds; each fold's predictions come from models fitted on the others.
    With ``n_folds=1`` the model is fitted and evaluated on all rows (in-sample, slightly optimistic).

    Args:
        contexts: ``(N, d)`` shared or ``(N, A, d)`` per-arm contexts.
        actions: logged actions.
        rewards: logged rewards.
        n_arms: number of arms A.
        lam: ridge penalty (> 0; the intercept is penalised too, which keeps every arm's system solvable).
        n_folds: number of cross-fitting folds.
        generator: RNG for the fold assignment.

    Returns:
        ``(N, A)`` predicted reward of every arm on every row.
    """
    n_arms = _check_int("n_arms", n_arms)
    contexts = _check_float("contexts", contexts)
    if contexts.dim() not in (2, 3) or (contexts.dim() == 3 and contexts.shape[1] != n_arms):
        raise ValueError(f"contexts must be (N, d) or (N, {n_arms}, d), got {tuple(contexts.shape)}")
    n = contexts.shape[0]
    rewards = _check_float("rewards", rewards, (n,))
    if rewards.dtype != contexts.dtype or rewards.device != contexts.device:
        raise ValueError(f"rewards ({rewards.dtype}, {rewards.device}) must match contexts' dtype and device "
                         f"({contexts.dtype}, {contexts.device})")
    if not isinstance(actions, Tensor) or actions.dtype not in (torch.int64, torch.int32) or actions.shape != (n,):
        raise ValueError(f"actions must be an int64/int32 tensor of shape ({n},)")
    actions = actions.long()
    if bool(((actions < 0) | (actions >= n_arms)).any()):
        raise ValueError(f"actions must lie in [0, {n_arms}); got range [{int(actions.min())}, {int(actions.max())}]")
    lam = _check_positive("lam", lam)
    if not (_check_int("n_folds", n_folds) <= n):
        raise ValueError(f"n_folds must be an int in [1, {n}], got {n_folds!r}")
    n_folds = int(n_folds)
    ones = contexts.new_ones(*contexts.shape[:-1], 1)
    feats = torch.cat([contexts, ones], -1)  # (N, d+1) or (N, A, d+1)
    if feats.dim() == 2:
        feats = feats[:, None].expand(-1, n_arms, -1)
    rows = torch.arange(n, device=contexts.device)
    chosen = feats[rows, actions]  # (N, p)
    p = chosen.shape[1]
    fold = torch.randperm(n, generator=generator, device=contexts.device) % n_folds if n_folds > 1 else \
        torch.zeros(n, dtype=torch.long, device=contexts.device)
    onehot = torch.nn.functional.one_hot(actions, n_arms).to(contexts.dtype)  # (N, A)
    eye = torch.eye(p, dtype=contexts.dtype, device=contexts.device)
    out = torch.empty(n, n_arms, dtype=contexts.dtype, device=contexts.device)
    for k in range(n_folds):  # a loop over folds; each fold's fit is one batched solve over all arms
        train = (fold != k) if n_folds > 1 else torch.ones(n, dtype=torch.bool, device=contexts.device)
        m = onehot * train[:, None].to(contexts.dtype)  # (N, A)
        gram = torch.einsum("na,np,nq->apq", m, chosen, chosen) + lam * eye  # (A, p, p)
        rhs = torch.einsum("na,np,n->ap", m, chosen, rewards)
        coef = torch.linalg.solve(gram, rhs[..., None])[..., 0]  # (A, p)
        test = fold == k
        out[test] = torch.einsum("nap,ap->na", feats[test], coef)
    return out
