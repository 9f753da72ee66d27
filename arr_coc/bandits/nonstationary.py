"""Forgetting for non-stationary bandits: sliding window, exponential discount, and Page–Hinkley change detection.

Every statistics-based policy in :mod:`arr_coc.bandits` keeps per-arm sums of per-observation contributions (counts,
reward sums, Gram matrices). A forgetting rule says how those sums age:

* :class:`SlidingWindow` keeps only the last ``size`` observations (SW-UCB, Garivier & Moulines 2011).
* :class:`Discount` multiplies all statistics by ``gamma`` at every observation (D-UCB, Garivier & Moulines 2011;
  with LinUCB, the discounted ridge estimate of D-LinUCB, Russac et al. 2019, though the width is read from the
  discounted Gram matrix rather than their γ²-weighted sandwich). A batch of N rows counts as N consecutive time
  steps, so the batched update equals the sequential one.
* :class:`PageHinkley` runs a two-sided Page–Hinkley test (Page 1954; Hinkley 1971) per arm on the prediction residual
  ``r - r_hat`` and resets that arm's statistics when the cumulative deviation exceeds ``threshold`` (as in the
  adaptive-window / change-detection bandits of Hartland et al. 2006 and Liu et al. 2018). For the context-free
  policies ``r_hat`` is the running mean of the arm's earlier rewards since its last reset, updated row by row (a
  batch equals the same rows one at a time; an arm's first row after a reset has no prediction and is not tested).
  For the linear policies it is the (nearly, ε-ridge) unregularised least-squares fit on the arm's rows since its
  last reset and before the batch (for HybridLinUCB, the joint fit with the shared β), not the ridge prediction,
  whose shrinkage is a bias decaying over each arm's warm-up that the test mistook for a change (134 resets in 2000
  stationary rows). The fit is fixed for the batch, unlike the mean policies' row-by-row mean, so a batch is not the
  same as its rows one at a time. A row is tested only if its arm had at least F rows (F the feature width) and the
  fit predicts it from at least one row's worth of data (leverage ``φᵀ(G + εI)⁻¹φ <= 1``); rows of an arm after
  its alarm in a batch are not tested either (the alarm discards the data of their prediction).

The dataclasses here are the public configuration; the helpers below implement them on batched tensors without a
Python loop over the rows (the Page–Hinkley scan loops only once per alarm raised in a batch).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import _check_int, _check_real

__all__ = ["SlidingWindow", "Discount", "PageHinkley", "Forgetting", "forgetting_from_dict"]


@dataclass(frozen=True)
class SlidingWindow:
    """Keep only the most recent ``size`` observations (over all arms)."""

    size: int  # number of most recent observations kept

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _check_int("SlidingWindow.size", self.size))


@dataclass(frozen=True)
class Discount:
    """Multiply every statistic by ``gamma`` once per observation; the effective memory is about 1/(1-gamma)."""

    gamma: float  # discount per observation, in (0, 1]

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", _check_real("Discount.gamma", self.gamma, low=0.0, high=1.0, low_open=True))


@dataclass(frozen=True)
class PageHinkley:
    """Two-sided Page–Hinkley test on each arm's residual stream; an alarm resets that arm.

    The statistic for an upward shift is ``m_t - min_s m_s`` with ``m_t = sum_s (e_s - mean_s - delta)``; the downward
    one mirrors it. An alarm fires when either exceeds ``threshold`` after at least ``min_samples`` residuals.
    The residual ``e`` is taken against an unbiased prediction from the arm's earlier rows since its last reset (the
    running mean for context-free policies, least squares for linear ones; see the module docstring), so a
    stationary arm essentially never alarms; rows without such a prediction are not tested and not counted.
    """

    delta: float = 0.05  # tolerated drift magnitude (reward units)
    threshold: float = 5.0  # alarm threshold lambda (reward units)
    min_samples: int = 5  # residuals an arm needs since its last reset before it may alarm

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta", _check_real("PageHinkley.delta", self.delta, low=0.0))
        object.__setattr__(self, "threshold", _check_real("PageHinkley.threshold", self.threshold, low=0.0,
                                                          low_open=True))
        object.__setattr__(self, "min_samples", _check_int("PageHinkley.min_samples", self.min_samples))


Forgetting = Union[SlidingWindow, Discount, PageHinkley]
_KINDS = {"SlidingWindow": SlidingWindow, "Discount": Discount, "PageHinkley": PageHinkley}


def _forgetting_to_dict(f: Forgetting | None) -> dict[str, Any] | None:
    return None if f is None else {"kind": type(f).__name__, **asdict(f)}


def forgetting_from_dict(d: dict[str, Any] | None) -> Forgetting | None:
    """Inverse of the config serialisation used by ``save``: ``{"kind": "Discount", "gamma": 0.99}`` -> ``Discount``."""
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ValueError(f"forgetting config must be a dict or None, got {d!r}")
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown forgetting kind {kind!r}; expected one of {sorted(_KINDS)}")
    known = {f.name: f for f in fields(_KINDS[kind])}
    unknown = sorted(map(str, set(d) - set(known)))
    if unknown:
        raise ValueError(f"unknown {kind} field(s) {unknown}; expected {sorted(known)}")
    missing = sorted(name for name, f in known.items() if name not in d and f.default is MISSING)
    if missing:
        raise ValueError(f"{kind} config is missing {missing}")
    return _KINDS[kind](**d)


def _check_forgetting(f: object) -> Forgetting | None:
    if f is None or isinstance(f, (SlidingWindow, Discount, PageHinkley)):
        return f
    raise ValueError(f"forgetting must be None, SlidingWindow, Discount or PageHinkley, got {f!r}")


def _discount_weights(n: int, gamma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Weights ``gamma**(n-1-i)`` for rows ``i < n``: the newest row has weight 1.  Shape ``(n,)``."""
    ages = torch.arange(n - 1, -1, -1, device=device, dtype=dtype)
    return torch.pow(torch.as_tensor(gamma, dtype=dtype, device=device), ages)


def _ring_append(bufs: tuple[Tensor, ...], rows: tuple[Tensor, ...], pos: Tensor, length: Tensor) -> None:
    """Append ``rows`` (each ``(n, ...)``) to the ring buffers ``bufs`` (each ``(size, ...)``), keeping the newest.

    ``pos`` (next slot) and ``length`` (filled slots) are 0-d long tensors, advanced in place.
    """
    size, n_new = bufs[0].shape[0], rows[0].shape[0]
    keep = min(n_new, size)
    first = n_new - keep
    slots = (int(pos) + first + torch.arange(keep, device=pos.device)) % size
    for buf, new in zip(bufs, rows):
        buf[slots] = new[first:]
    pos.copy_((pos + n_new) % size)
    length.copy_(torch.clamp(length + n_new, max=size))


_PH_FIELDS = ("n", "mean", "up", "up_min", "dn", "dn_max")


def _ph_ridge(gram: Tensor) -> Tensor:
    """Ridge ``eps`` per matrix for the linear policies' (nearly) unregularised Page–Hinkley fits, ``(..., F, F)`` ->
    ``(...)``: ``c * (trace / F + 1)`` with ``c = max(1e-6, 10 F u)`` (u the dtype's epsilon), tiny against the Gram
    matrix's scale but large enough for Cholesky to factor a singular Gram matrix computed in float32. Growing with
    the trace, the shrinkage it causes is a fixed fraction of the fit, not a bias that decays as rows arrive."""
    f = gram.shape[-1]
    c = max(1e-6, 10 * f * torch.finfo(gram.dtype).eps)
    return c * (gram.diagonal(dim1=-2, dim2=-1).sum(-1) / f + 1.0)


def _page_hinkley_scan(
    state: dict[str, Tensor], signal: Tensor, actions: Tensor, n_arms: int, cfg: PageHinkley,
    running_mean: tuple[Tensor, Tensor] | None = None, tested: Tensor | None = None
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Batched two-sided Page–Hinkley over a batch of residuals, in row order, per arm.

    Args:
        state: per-arm running state, each ``(A,)``: ``n`` count, ``mean``, ``up``/``up_min``, ``dn``/``dn_max``.
        signal: residuals in arrival order; with ``running_mean``, the rewards themselves.
        actions: arm of each residual.
        n_arms: number of arms A.
        cfg: test parameters.
        running_mean: ``(counts, sums)`` per arm, ``(A,)`` each, of the observations since each arm's last reset.
            Row i is then tested on ``r_i - (mean of its arm's earlier observations since the last reset)``, exactly
            as if the rows came one at a time (an alarm restarts that mean); a row whose arm has no earlier
            observation has no prediction and is not tested. Without it, ``signal`` is tested as given.
        tested: ``(N,)`` bool, rows whose ``signal`` is a residual at all (the linear policies' prequential
            prediction needs enough earlier rows of the arm); other rows enter neither the test nor its state, and
            their ``signal`` is ignored (it may be NaN). It describes the state before the batch: rows of an arm
            after that arm's alarm in this batch are not tested either, since their prediction came from the
            statistics the alarm discards. ``None``: every row is tested.

    Returns:
        ``(keep, alarmed, new_state)``: ``keep`` marks rows that arrive after their arm's last alarm in this batch
        (only those enter the reset statistics); ``alarmed`` marks arms that raised at least one alarm.

    Shapes:
        signal, actions, keep: ``(N,)``; alarmed and every state entry: ``(A,)``.
    """
    n_rows = signal.shape[0]
    dev, dt = signal.device, signal.dtype
    keep = torch.ones(n_rows, dtype=torch.bool, device=dev)
    alarmed = torch.zeros(n_arms, dtype=torch.bool, device=dev)
    active = torch.ones(n_rows, dtype=torch.bool, device=dev)
    st = {k: state[k].clone() for k in _PH_FIELDS}
    rows = torch.arange(n_rows, device=dev)
    predictable = None
    if running_mean is not None:
        base_n, base_sum = running_mean[0].to(dt).clone(), running_mean[1].to(dt).clone()
        rewards = signal
    if tested is not None:
        predictable = tested.to(torch.bool)
        signal = torch.where(predictable, signal, 0.0)  # 0 * NaN would leak into the cumulative sums
    # Each pass either finishes or drops at least one row, so this loop runs at most (#alarms + 1) times.
    while True:
        tested = active if predictable is None else active & predictable
        if running_mean is not None:  # residual against the running mean of the arm's earlier rows
            seen = F.one_hot(actions, n_arms).to(dt) * active[:, None].to(dt)  # (N, A)
            n_before = (base_n + seen.cumsum(0) - seen).gather(1, actions[:, None])[:, 0]
            sum_before = (base_sum + (seen * rewards[:, None]).cumsum(0) - seen * rewards[:, None])
            sum_before = sum_before.gather(1, actions[:, None])[:, 0]
            tested = tested & (n_before > 0)
            signal = torch.where(tested, rewards - sum_before / n_before.clamp_min(1.0), 0.0)
        onehot = F.one_hot(actions, n_arms).to(dt) * tested[:, None].to(dt)  # (N, A)
        cnt = st["n"] + onehot.cumsum(0)  # (N, A) residuals seen including row i
        csum = st["n"] * st["mean"] + (onehot * signal[:, None]).cumsum(0)
        mean = csum / cnt.clamp_min(1.0)
        dev_ = onehot * (signal[:, None] - mean)  # zero on rows of other arms, so cumsums carry over them
        up = st["up"] + (dev_ - cfg.delta * onehot).cumsum(0)
        dn = st["dn"] + (dev_ + cfg.delta * onehot).cumsum(0)
        up_min = torch.minimum(st["up_min"], up.cummin(0).values)
        dn_max = torch.maximum(st["dn_max"], dn.cummax(0).values)
        stat = torch.maximum(up - up_min, dn_max - dn)
        alarm = (stat > cfg.threshold) & (onehot > 0) & (cnt >= cfg.min_samples)  # (N, A)
        any_alarm = alarm.any(0)  # (A,)
        last = {"n": cnt[-1], "mean": mean[-1], "up": up[-1], "up_min": up_min[-1], "dn": dn[-1], "dn_max": dn_max[-1]}
        if not bool(any_alarm.any()):
            for k in _PH_FIELDS:
                st[k] = last[k]
            break
        # argmax over a bool column returns its first True: the first alarm row of each alarmed arm.
        first = torch.where(any_alarm, alarm.to(torch.int8).argmax(0), torch.full_like(any_alarm, -1, dtype=torch.long))
        drop = any_alarm[actions] & (rows <= first[actions])
        keep &= ~drop
        alarmed |= any_alarm
        for k in _PH_FIELDS:  # arms without an alarm are final; alarmed arms restart from zero
            st[k] = torch.where(any_alarm, torch.zeros_like(last[k]), last[k])
        # Next pass: only rows of alarmed arms after their alarm still need scanning.
        active = any_alarm[actions] & (rows > first[actions]) & active
        if running_mean is not None:  # an alarmed arm's statistics restart from the rows after its alarm
            base_n = torch.where(any_alarm, 0.0, base_n)
            base_sum = torch.where(any_alarm, 0.0, base_sum)
        if predictable is not None:  # a prediction fixed before the batch is void for an arm once it alarms
            predictable = predictable & ~any_alarm[actions]
        if not bool(active.any()):
            break
    return keep, alarmed, st
