"""Common machinery for the batched bandit policies: input validation, sufficient statistics with forgetting,
action-probability helpers and safetensors persistence.

A policy is an ``nn.Module`` whose state lives in buffers (and, for :class:`~arr_coc.bandits.NeuralLinear`, parameters),
so ``.to(device)``, ``state_dict()`` and ``load_state_dict()`` work as for any module. Every public method works on a
whole batch at once; nothing loops over rows in Python.

Shapes used throughout:
    N: rows (decisions) in a batch; A: arms; d: context width.
    contexts: ``(N, d)`` shared by all arms, or ``(N, A, d)`` one context per arm.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from arr_coc._utils import _check_tensor

from . import nonstationary as _ns
from ._io import _load_tensors, _save_tensors
from ._validate import _check_int

__all__ = ["BanditPolicy"]

_POLICY_CLASSES: dict[str, type["BanditPolicy"]] = {}


def _resolve_dtype(dtype: torch.dtype | None) -> torch.dtype:
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    return dtype


class BanditPolicy(nn.Module):
    """Base class of all batched bandit policies.

    Subclasses implement :meth:`action_probabilities`, :meth:`select` and :meth:`update`, and list their constructor
    arguments in :meth:`_config` so that :meth:`save` / :meth:`load` can rebuild them.

    Args:
        n_arms: number of arms A.
        dim: context width d, or ``None`` for context-free policies (they accept any context width and use only N).
        device: device of the state.
        dtype: floating dtype of the state; contexts must use the same dtype.
    """

    _contextual: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _POLICY_CLASSES[cls.__name__] = cls

    def __init__(self, n_arms: int, dim: int | None, *, device=None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        n_arms = _check_int("n_arms", n_arms)
        if self._contextual:
            dim = _check_int("dim", dim)
        self.n_arms = n_arms
        self.dim = dim
        # `steps` counts observations seen; it also anchors the policy's device.
        self.register_buffer("steps", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("_dtype_anchor", torch.zeros((), dtype=_resolve_dtype(dtype), device=device))
        # Derived quantities must follow loaded statistics, also when a parent module's load_state_dict loads us.
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._refresh())

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.steps.device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype_anchor.dtype

    # ------------------------------------------------------------------ validation
    def _check_contexts(self, contexts: object) -> tuple[Tensor, bool]:
        """Validate contexts; returns ``(contexts, per_arm)``."""
        _check_tensor("contexts", contexts)
        if contexts.device != self.device:
            raise ValueError(f"contexts are on {contexts.device} but the policy is on {self.device}")
        if contexts.dtype != self.dtype:
            raise ValueError(f"contexts have dtype {contexts.dtype} but the policy uses {self.dtype}")
        if contexts.dim() not in (2, 3):
            raise ValueError(f"contexts must be (N, dim) or (N, n_arms, dim), got shape {tuple(contexts.shape)}")
        if contexts.shape[0] < 1:
            raise ValueError(f"contexts must have at least one row, got shape {tuple(contexts.shape)}")
        per_arm = contexts.dim() == 3
        if per_arm and contexts.shape[1] != self.n_arms:
            raise ValueError(f"per-arm contexts have {contexts.shape[1]} arms, expected n_arms={self.n_arms}")
        if self._contextual and contexts.shape[-1] != self.dim:
            raise ValueError(f"contexts have width {contexts.shape[-1]}, expected dim={self.dim}")
        if not bool(torch.isfinite(contexts).all()):  # one fused reduction on the happy path
            bad = ~torch.isfinite(contexts)
            idx = tuple(bad.nonzero()[0].tolist())
            raise ValueError(f"contexts contain {int(bad.sum())} non-finite value(s), first at {idx}: {contexts[idx]}")
        return contexts, per_arm

    def _check_actions(self, actions: object, n_rows: int) -> Tensor:
        _check_tensor("actions", actions)
        if actions.device != self.device:
            raise ValueError(f"actions are on {actions.device} but the policy is on {self.device}")
        if actions.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"actions must have an integer dtype, got {actions.dtype}")
        if tuple(actions.shape) != (n_rows,):
            raise ValueError(f"actions must have shape ({n_rows},), got {tuple(actions.shape)}")
        actions = actions.long()
        out = (actions < 0) | (actions >= self.n_arms)
        if bool(out.any()):
            i = int(out.nonzero()[0, 0])
            raise ValueError(f"action {int(actions[i])} at row {i} is out of range [0, {self.n_arms})")
        return actions

    def _check_rewards(self, rewards: object, n_rows: int) -> Tensor:
        _check_tensor("rewards", rewards)
        if rewards.device != self.device:
            raise ValueError(f"rewards are on {rewards.device} but the policy is on {self.device}")
        if rewards.is_complex():
            raise ValueError(f"rewards must be real, got dtype {rewards.dtype}")
        if tuple(rewards.shape) != (n_rows,):
            raise ValueError(f"rewards must have shape ({n_rows},), got {tuple(rewards.shape)}")
        rewards = rewards.to(self.dtype)
        bad = ~torch.isfinite(rewards)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"rewards contain {int(bad.sum())} non-finite value(s), first at row {i}: {rewards[i]}")
        return rewards

    # ------------------------------------------------------------------ probability helpers
    @staticmethod
    def _argmax_probs(scores: Tensor) -> Tensor:
        """Uniform distribution over the arms tied at the row maximum.  ``(N, A) -> (N, A)``."""
        best = scores == scores.max(dim=-1, keepdim=True).values
        best = best.to(scores.dtype)
        return best / best.sum(-1, keepdim=True)

    @staticmethod
    def _sample(probs: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Draw one action per row from ``probs (N, A)``; returns ``(actions (N,), propensities (N,))``.

        Inverse-CDF sampling (several times cheaper than ``torch.multinomial`` for small A): the uniform is scaled by
        the row total, so it stays strictly below the last CDF value and never lands on a zero-probability arm.
        """
        cdf = probs.cumsum(-1)
        u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=probs.dtype) * cdf[:, -1:]
        actions = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)
        return actions, probs.gather(-1, actions[:, None]).squeeze(-1)

    @staticmethod
    def _argmax_select(scores: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Argmax per row with uniform random tie-breaking; propensity ``1 / #ties``.  ``(N, A) -> (N,), (N,)``."""
        best = scores == scores.max(dim=-1, keepdim=True).values
        noise = torch.rand(scores.shape, generator=generator, device=scores.device, dtype=scores.dtype)
        actions = torch.where(best, noise + 1.0, noise.new_zeros(())).argmax(-1)
        return actions, 1.0 / best.sum(-1).to(scores.dtype)

    @staticmethod
    def _mc_probs(draw: Tensor, first: Tensor, n_arms: int) -> Tensor:
        """Monte Carlo action probabilities from argmax draws.

        ``draw (S, N, A)`` holds S independent sampled scores; ``first (N,)`` is the action actually taken, which is
        pooled with the S extra draws so that it always has probability >= 1/(S+1) and each row sums to one.
        Returns ``(N, A)``. The chosen arm's estimate ``p̂ = (C+1)/(S+1)`` has ``E[1/p̂] = (1 - (1-p)^(S+1)) / p``:
        inverse-propensity weights of arms rarer than about 1/S come out low (see :mod:`arr_coc.bandits.ope`).
        """
        winners = draw.argmax(-1)  # (S, N)
        counts = torch.zeros(first.shape[0], n_arms, dtype=draw.dtype, device=draw.device)
        counts.scatter_add_(1, winners.T, torch.ones_like(winners.T, dtype=draw.dtype))
        counts.scatter_add_(1, first[:, None], torch.ones_like(first[:, None], dtype=draw.dtype))
        return counts / (draw.shape[0] + 1)

    # ------------------------------------------------------------------ interface
    def action_probabilities(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Probability of each arm under the current policy.

        Args:
            contexts: ``(N, d)`` or ``(N, A, d)``.
            generator: RNG for Monte Carlo estimates (Thompson sampling).

        Returns:
            ``(N, A)`` rows summing to one.
        """
        raise NotImplementedError

    def select(self, contexts: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Choose one arm per row.

        Args:
            contexts: ``(N, d)`` shared by the arms or ``(N, A, d)`` per arm.
            generator: optional RNG on the policy's device.

        Returns:
            ``(actions, propensities)``: int64 ``(N,)`` arms and ``(N,)`` probability of the chosen arm.
        """
        probs = self.action_probabilities(contexts, generator=generator)
        return self._sample(probs, generator)

    def update(self, contexts: Tensor, actions: Tensor, rewards: Tensor) -> None:
        """Incorporate a batch of observed rewards; rows count as consecutive time steps in order.

        Args:
            contexts: ``(N, d)`` or ``(N, A, d)`` (the same layout as given to :meth:`select`).
            actions: ``(N,)`` integer arms in ``[0, A)``.
            rewards: ``(N,)`` finite rewards.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-serialisable) that rebuild this policy."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Write the state dict and the constructor config to a safetensors file."""
        cfg = {"class": type(self).__name__, "config": self._config(), "dtype": str(self.dtype).removeprefix("torch.")}
        _save_tensors(path, self.state_dict(), cfg)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None) -> "BanditPolicy":
        """Rebuild a policy saved with :meth:`save`.

        ``BanditPolicy.load`` returns whichever class was saved; ``LinUCB.load`` additionally checks the class.
        """
        tensors, meta = _load_tensors(path, device=device)
        name = meta.get("class")
        if name not in _POLICY_CLASSES:
            raise ValueError(f"{os.fspath(path)!r} holds unknown policy class {name!r}")
        klass = _POLICY_CLASSES[name]
        if cls is not BanditPolicy and not issubclass(klass, cls):
            raise ValueError(f"{os.fspath(path)!r} holds a {name}, not a {cls.__name__}")
        dtype = getattr(torch, meta["dtype"])
        policy = klass(**klass._decode_config(meta["config"]), device=device, dtype=dtype)
        policy.load_state_dict(tensors)
        return policy

    @classmethod
    def _decode_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        config = dict(config)
        if "forgetting" in config:
            config["forgetting"] = _ns.forgetting_from_dict(config["forgetting"])
        return config

    def _refresh(self) -> None:
        """Recompute derived quantities (posterior means, inverses) from the statistics.  No-op by default."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config().items())


class _StatsPolicy(BanditPolicy):
    """A policy whose state is per-arm sums of per-observation contributions, aged by an optional forgetting rule.

    Subclasses register statistics with :meth:`_register_stat`, return each observation's contribution from
    :meth:`_contributions` and a pre-update prediction from :meth:`_predict_chosen`.
    Priors are added when deriving estimates, so a reset is simply zeroing an arm's sums. Policies whose prediction
    is the arm's mean reward set ``_ph_running_mean``: Page–Hinkley then tests each row against the running mean of
    the arm's earlier rewards (``counts`` / ``reward_sums``), row by row. Otherwise it tests ``r -``
    :meth:`_ph_prediction`, a prediction fixed for the batch (the linear policies: an unregularised least-squares
    fit on the arm's rows before the batch, since the ridge prediction is biased while an arm warms up).

    Args:
        n_arms: number of arms A.
        dim: context width d (``None`` if context-free).
        x_dim: width of the chosen-arm context stored per observation (0 for context-free policies).
        forgetting: ``None`` (stationary), :class:`SlidingWindow`, :class:`Discount` or :class:`PageHinkley`.
    """

    _ph_running_mean: ClassVar[bool] = False

    def __init__(self, n_arms: int, dim: int | None, x_dim: int, *, forgetting=None, device=None, dtype=None) -> None:
        super().__init__(n_arms, dim, device=device, dtype=dtype)
        self.forgetting = _ns._check_forgetting(forgetting)
        self._stat_names: list[str] = []
        self._x_dim = x_dim
        dt = self.dtype
        self._register_stat("counts", ())
        if isinstance(self.forgetting, _ns.SlidingWindow):
            w = self.forgetting.size
            self.register_buffer("_win_x", torch.zeros(w, x_dim, device=device, dtype=dt))
            self.register_buffer("_win_a", torch.zeros(w, dtype=torch.long, device=device))
            self.register_buffer("_win_r", torch.zeros(w, device=device, dtype=dt))
            self.register_buffer("_win_len", torch.zeros((), dtype=torch.long, device=device))
            self.register_buffer("_win_pos", torch.zeros((), dtype=torch.long, device=device))
        elif isinstance(self.forgetting, _ns.PageHinkley):
            for k in _ns._PH_FIELDS:
                self.register_buffer(f"_ph_{k}", torch.zeros(n_arms, device=device, dtype=dt))
            self.register_buffer("resets", torch.zeros(n_arms, dtype=torch.long, device=device))

    def _register_stat(self, name: str, shape: tuple[int, ...]) -> None:
        self.register_buffer(name, torch.zeros(self.n_arms, *shape, device=self.device, dtype=self.dtype))
        self._stat_names.append(name)

    # ------------------------------------------------------------------ hooks
    def _contributions(self, x: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        """Per-observation contributions ``{stat: (N, *shape)}``; ``counts`` is added by the base class."""
        raise NotImplementedError

    def _predict_chosen(self, x: Tensor, actions: Tensor) -> Tensor:
        """Pre-update reward prediction for each observed (x, action) pair, ``(N,)``."""
        raise NotImplementedError

    def _ph_prediction(self, x: Tensor, actions: Tensor) -> tuple[Tensor, Tensor | None]:
        """Page–Hinkley's prediction for each row from the statistics before the batch, ``(N,)``, and which rows it
        predicts at all (``(N,)`` bool, or ``None`` for every row); untested rows' predictions are ignored.
        Defaults to :meth:`_predict_chosen` for every row. Unused by ``_ph_running_mean`` policies."""
        return self._predict_chosen(x, actions), None

    def _after_add(self, x: Tensor, actions: Tensor, weights: Tensor | None) -> None:
        """Called after plain (stationary) accumulation; defaults to a full :meth:`_refresh`."""
        self._refresh()

    # ------------------------------------------------------------------ mechanics
    def _chosen(self, contexts: Tensor, actions: Tensor, per_arm: bool) -> Tensor:
        """Context of the chosen arm, ``(N, x_dim)``."""
        if self._x_dim == 0:
            return contexts.new_zeros(contexts.shape[0], 0)
        if per_arm:
            return contexts[torch.arange(contexts.shape[0], device=contexts.device), actions]
        return contexts

    def _accumulate(self, x: Tensor, actions: Tensor, rewards: Tensor, weights: Tensor | None) -> None:
        contrib = self._contributions(x, rewards)
        contrib["counts"] = torch.ones_like(rewards)
        for name in self._stat_names:
            c = contrib[name]
            if weights is not None:
                c = c * weights.view(-1, *([1] * (c.dim() - 1)))
            getattr(self, name).index_add_(0, actions, c)

    def _zero_stats(self, arms: Tensor | None = None) -> None:
        for name in self._stat_names:
            buf = getattr(self, name)
            if arms is None:
                buf.zero_()
            else:
                buf[arms] = 0

    def update(self, contexts: Tensor, actions: Tensor, rewards: Tensor) -> None:  # noqa: D102 (documented on base)
        contexts, per_arm = self._check_contexts(contexts)
        n = contexts.shape[0]
        actions = self._check_actions(actions, n)
        rewards = self._check_rewards(rewards, n)
        self._check_reward_domain(rewards)
        x = self._chosen(contexts, actions, per_arm)
        f = self.forgetting
        with torch.no_grad():
            if f is None:
                self._accumulate(x, actions, rewards, None)
                self.steps += n
                self._after_add(x, actions, None)
                return
            if isinstance(f, _ns.Discount):
                # Old sums age by gamma**n; row i of the batch by gamma**(n-1-i): identical to n sequential steps.
                decay = f.gamma**n
                for name in self._stat_names:
                    getattr(self, name).mul_(decay)
                self._accumulate(x, actions, rewards, _ns._discount_weights(n, f.gamma, self.dtype, self.device))
            elif isinstance(f, _ns.SlidingWindow):
                _ns._ring_append((self._win_x, self._win_a, self._win_r), (x, actions, rewards), self._win_pos,
                                 self._win_len)
                # Recompute from the window instead of subtracting expired rows: exact, no drift in float32.
                m = int(self._win_len)
                self._zero_stats()
                self._accumulate(self._win_x[:m], self._win_a[:m], self._win_r[:m], None)
            else:  # PageHinkley
                state = {k: getattr(self, f"_ph_{k}") for k in _ns._PH_FIELDS}
                if self._ph_running_mean:  # residuals against the arm's running mean, row by row
                    keep, alarmed, new_state = _ns._page_hinkley_scan(
                        state, rewards, actions, self.n_arms, f, running_mean=(self.counts, self.reward_sums))
                else:  # residuals against a prediction fixed before the batch; rows it cannot make are not tested
                    pred, tested = self._ph_prediction(x, actions)
                    keep, alarmed, new_state = _ns._page_hinkley_scan(state, rewards - pred, actions, self.n_arms, f,
                                                                      tested=tested)
                for k in _ns._PH_FIELDS:
                    getattr(self, f"_ph_{k}").copy_(new_state[k])
                if bool(alarmed.any()):
                    self._zero_stats(alarmed)
                    self.resets += alarmed.long()
                self._accumulate(x[keep], actions[keep], rewards[keep], None)
            self.steps += n
            self._refresh()

    def _check_reward_domain(self, rewards: Tensor) -> None:
        """Hook for policies that need rewards in a range (Beta Thompson sampling)."""

    def _config(self) -> dict[str, Any]:
        return {"forgetting": _ns._forgetting_to_dict(self.forgetting)}
