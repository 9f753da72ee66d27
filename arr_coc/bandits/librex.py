"""Librex.Alloc: constrained Thompson sampling for multi-resource budgets, with fairness modes, and its baselines.

n agents request resource vectors ``r_i ∈ ℝ^R`` each round and the allocator chooses who is served under a budget
``B ∈ ℝ^R``; a served agent later reports a reward. :class:`ConstrainedThompsonSampling` samples ``θ_i`` from each
agent's posterior (Beta–Bernoulli or Gaussian; Thompson 1933, Agrawal & Goyal 2012) and solves the multi-dimensional
0/1 knapsack ``max Σ θ_i x_i s.t. Σ r_i x_i ≤ B`` exactly with HiGHS via ``scipy.optimize.milp`` — the combinatorial
Thompson sampling scheme of Wang & Chen (2018) with a knapsack oracle.

Fairness modes (``fairness=``):

* ``"none"``: the knapsack above.
* ``"proportional"``: proportional fairness by reweighting with the past allocation share (Kelly 1997; the
  proportional-fair scheduler's gradient step): objective ``Σ θ_i x_i / (c_i + 1)^s`` where ``c_i`` counts past
  allocations of agent i and ``s = fairness_strength``.
* ``"maxmin"``: max-min fairness of cumulative utility, lexicographically: first maximise
  ``min_i (U_i + θ_i x_i)`` where ``U_i`` is the sampled utility delivered to agent i so far, then, among the
  allocations that attain it, maximise ``Σ θ_i x_i``. (The literal "maximise the minimum reward among the allocated"
  would favour serving a single agent, so the cumulative form is used.)

Divisible resources: ``allocate(requests, budget, divisible=True)`` (supported by
:class:`ConstrainedThompsonSampling`, :class:`ConstrainedUCB1` and :class:`OracleAlloc`) returns the fraction
``x_i ∈ [0, 1]`` of each request that is granted, from the LP relaxation of the same problem (continuous variables in
the same HiGHS model), with utility modelled as linear in the fraction (``θ_i x_i``). Every fairness mode carries over:
``"maxmin"`` solves the lexicographic problem as two LPs, which lets it split a resource evenly where the 0/1 version
must pick one agent. A basic LP optimum grants at most R agents a strict fraction; the rest get all or nothing. The
other baselines are sequential 0/1 heuristics and reject ``divisible=True``.

Baselines share the interface: :class:`ConstrainedUCB1` (UCB1 indices in the same knapsack), :class:`UnconstrainedTS`
(Thompson draws ranked without looking at the requests, filled greedily while they fit), :class:`EpsilonGreedyAlloc`,
:class:`RoundRobinAlloc`, :class:`ProportionalAlloc` (random order with probability ∝ posterior mean),
:class:`GreedyAlloc` (highest posterior mean first) and :class:`OracleAlloc` (knapsack on the true means).

These run on CPU (the MILP solver is CPU-only); randomness comes from a seeded ``numpy.random.Generator`` whose state
is not saved. Shapes: n agents, R resources.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor

from ._io import _load_tensors, _save_tensors
from ._validate import _check_int, _check_positive, _check_real, _check_seed
from .classic import _as_array, _budget_rows, _check_nonneg, _fits, _solve_milp

__all__ = [
    "ConstrainedThompsonSampling",
    "ConstrainedUCB1",
    "UnconstrainedTS",
    "EpsilonGreedyAlloc",
    "RoundRobinAlloc",
    "ProportionalAlloc",
    "GreedyAlloc",
    "OracleAlloc",
    "gini",
]

_PRIORS = ("beta", "gaussian")
_FAIRNESS = ("none", "proportional", "maxmin")
_ALLOC_CLASSES: dict[str, type["_AllocationPolicy"]] = {}
_STATE = ("pulls", "reward_sums", "alloc_counts", "cum_reward", "served", "rounds")


def gini(x) -> float:
    """Gini coefficient of non-negative values (0 = equal, → 1 = one holder); 0 for an all-zero vector.

    Shapes:
        x: ``(n,)``.
    """
    a = np.sort(_as_array("x", x, 1))
    _check_nonneg("x", a)
    n, total = a.shape[0], a.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(2.0 * (ranks * a).sum() / (n * total) - (n + 1) / n)


def _fill_in_order(order: np.ndarray, req: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Serve agents in ``order`` whenever their request still fits (skipping those that do not).

    The check adds the request to what is already used and compares with the budget, allowing only the float
    rounding of that sum (as :func:`~arr_coc.bandits.classic._fits` does), so it holds whatever the units.
    """
    take = np.zeros(req.shape[0], dtype=bool)
    used = np.zeros(req.shape[1])
    eps, k = np.finfo(np.float64).eps, 0
    for i in order:  # sequential by nature: each decision depends on what is left
        after = used + req[i]
        if np.all(after <= b + (k + 1) * eps * after):
            take[i] = True
            used, k = after, k + 1
    return take


def _fill_by_score(score: np.ndarray, req: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Serve agents by decreasing ``score`` (ties in index order) whenever their request still fits."""
    return _fill_in_order(np.argsort(-score, kind="stable"), req, b)


class _AllocationPolicy:
    """Shared state and bookkeeping: posterior sums, allocation counts, cumulative rewards and persistence.

    Args:
        n_agents: number of agents n.
        n_resources: number of resource types R.
        prior: ``"beta"`` (rewards in [0, 1]) or ``"gaussian"`` (known noise variance).
        alpha0: Beta prior successes.
        beta0: Beta prior failures.
        prior_mean: Gaussian prior mean.
        prior_var: Gaussian prior variance.
        noise_var: Gaussian noise variance.
        seed: seed of the numpy generator used for sampling.
    """


    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _ALLOC_CLASSES[cls.__name__] = cls

    def __init__(self, n_agents: int, n_resources: int, prior: str = "beta", *, alpha0: float = 1.0,
                 beta0: float = 1.0, prior_mean: float = 0.0, prior_var: float = 1.0, noise_var: float = 1.0,
                 seed: int | None = None) -> None:
        n_agents, n_resources = _check_int("n_agents", n_agents), _check_int("n_resources", n_resources)
        if prior not in _PRIORS:
            raise ValueError(f"prior must be one of {_PRIORS}, got {prior!r}")
        self.n_agents, self.n_resources, self.prior = n_agents, n_resources, prior
        self.alpha0, self.beta0 = _check_positive("alpha0", alpha0), _check_positive("beta0", beta0)
        self.prior_mean = _check_real("prior_mean", prior_mean)
        self.prior_var, self.noise_var = _check_positive("prior_var", prior_var), _check_positive("noise_var", noise_var)
        self.seed = _check_seed("seed", seed)
        self.rng = np.random.default_rng(seed)
        z = np.zeros(n_agents)
        self.pulls, self.reward_sums = z.copy(), z.copy()  # reward observations per agent
        self.alloc_counts, self.cum_reward, self.served = z.copy(), z.copy(), z.copy()
        self.rounds = 0

    # ------------------------------------------------------------------ posterior
    def posterior_mean(self) -> np.ndarray:
        """Posterior mean reward per agent, ``(n,)``."""
        if self.prior == "beta":
            return (self.alpha0 + self.reward_sums) / (self.alpha0 + self.beta0 + self.pulls)
        prec = 1.0 / self.prior_var + self.pulls / self.noise_var
        return (self.prior_mean / self.prior_var + self.reward_sums / self.noise_var) / prec

    def _sample(self) -> np.ndarray:
        """One posterior draw per agent, ``(n,)``."""
        if self.prior == "beta":
            return self.rng.beta(self.alpha0 + self.reward_sums, self.beta0 + self.pulls - self.reward_sums)
        prec = 1.0 / self.prior_var + self.pulls / self.noise_var
        return self.posterior_mean() + self.rng.standard_normal(self.n_agents) / np.sqrt(prec)

    # ------------------------------------------------------------------ interface
    def _check_problem(self, requests, budget) -> tuple[np.ndarray, np.ndarray]:
        req = _as_array("requests", requests, 2)
        b = _as_array("budget", budget, 1)
        if req.shape != (self.n_agents, self.n_resources):
            raise ValueError(f"requests must have shape ({self.n_agents}, {self.n_resources}), got {req.shape}")
        if b.shape != (self.n_resources,):
            raise ValueError(f"budget must have shape ({self.n_resources},), got {b.shape}")
        _check_nonneg("requests", req)
        _check_nonneg("budget", b)
        return req, b

    # State-dict keys a subclass adds to ``_STATE`` (and restores itself).
    _extra_state: tuple[str, ...] = ()

    # Policies that solve the knapsack (and can therefore solve its LP relaxation) set this and take
    # ``_choose(req, b, divisible=True)``.
    _supports_divisible = False

    def _choose(self, req: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(take mask, per-agent utility believed delivered)``; with ``divisible=True`` (where supported)
        ``(fractions in [0, 1], utility at fraction 1)``."""
        raise NotImplementedError

    def allocate(self, requests, budget, *, divisible: bool = False) -> Tensor:
        """Choose the agents served this round, or (``divisible=True``) the fraction of each request granted.

        Args:
            requests: non-negative resource requests.
            budget: non-negative capacity per resource.
            divisible: grant fractions of requests (the LP relaxation; see the module docstring) instead of all or
                nothing. Only the knapsack-based policies support it; the others raise ``ValueError``.

        Returns:
            int64 0/1 allocation, or float64 fractions in [0, 1] when ``divisible``; ``allocation @ requests <= budget``
            holds elementwise (up to float rounding for fractions). Allocation counts and delivered utility accumulate
            the fractions.

        Shapes:
            requests: ``(n, R)``; budget: ``(R,)``; output: ``(n,)``.
        """
        if not isinstance(divisible, (bool, np.bool_)):
            raise ValueError(f"divisible must be a bool, got {divisible!r}")
        if divisible and not self._supports_divisible:
            raise ValueError(f"{type(self).__name__} allocates all-or-nothing only; divisible=True is supported by "
                             f"{sorted(k for k, c in _ALLOC_CLASSES.items() if c._supports_divisible)}")
        req, b = self._check_problem(requests, budget)
        take, utility = self._choose(req, b, divisible=True) if divisible else self._choose(req, b)
        self.alloc_counts += take
        self.served += take * utility
        self.rounds += 1
        return torch.from_numpy(take.astype(np.float64 if divisible else np.int64))

    def update(self, agent, reward) -> None:
        """Record rewards (or 0/1 successes) of served agents.

        Args:
            agent: agent index or indices.
            reward: reward(s), one per index; in [0, 1] for the Beta prior.

        Shapes:
            agent, reward: scalars or ``(m,)``.
        """
        a = np.atleast_1d(np.asarray(agent.cpu().numpy() if isinstance(agent, Tensor) else agent))
        r = np.atleast_1d(_as_array("reward", np.atleast_1d(reward.cpu().numpy() if isinstance(reward, Tensor)
                                                              else reward), 1))
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"agent must be integer index(es), got dtype {a.dtype}")
        if a.shape != r.shape:
            raise ValueError(f"agent shape {a.shape} does not match reward shape {r.shape}")
        if ((a < 0) | (a >= self.n_agents)).any():
            raise ValueError(f"agent index {a[(a < 0) | (a >= self.n_agents)][0]} out of range [0, {self.n_agents})")
        if self.prior == "beta" and ((r < 0) | (r > 1)).any():
            raise ValueError(f"Beta prior needs rewards in [0, 1]; got {r[(r < 0) | (r > 1)][0]}")
        np.add.at(self.pulls, a, 1.0)
        np.add.at(self.reward_sums, a, r)
        np.add.at(self.cum_reward, a, r)

    def fairness_metrics(self) -> dict[str, float]:
        """Fairness of the allocations so far.

        Returns:
            ``gini``, ``variance`` and ``min_max_ratio`` of the per-agent allocation counts (the ratio is NaN before any
            allocation), and ``reward_gini`` of the per-agent cumulative rewards (clipped at 0 for the Gini only).
        """
        c = self.alloc_counts
        ratio = float(c.min() / c.max()) if c.max() > 0 else float("nan")
        return {"gini": gini(c), "variance": float(c.var()), "min_max_ratio": ratio,
                "reward_gini": gini(np.maximum(self.cum_reward, 0.0))}

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        return {"n_agents": self.n_agents, "n_resources": self.n_resources, "prior": self.prior, "alpha0": self.alpha0,
                "beta0": self.beta0, "prior_mean": self.prior_mean, "prior_var": self.prior_var,
                "noise_var": self.noise_var, "seed": self.seed}

    def state_dict(self) -> dict[str, Tensor]:
        """Counters as float64 tensors (``rounds`` as a 0-d int64 tensor)."""
        out = {k: torch.from_numpy(getattr(self, k).copy()) for k in _STATE if k != "rounds"}
        out["rounds"] = torch.tensor(self.rounds, dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore counters written by :meth:`state_dict` (shapes must match; unknown keys are refused)."""
        missing = [k for k in _STATE if k not in state]
        if missing:
            raise ValueError(f"state dict is missing {missing}")
        unknown = sorted(map(str, set(state) - set(_STATE) - set(self._extra_state)))
        if unknown:
            raise ValueError(f"state dict has unknown key(s) {unknown} for {type(self).__name__}")
        for k in _STATE:
            if k == "rounds":
                self.rounds = int(state[k])
                continue
            v = state[k].detach().cpu().to(torch.float64).numpy().copy()
            if v.shape != (self.n_agents,):
                raise ValueError(f"state {k!r} has shape {v.shape}, expected ({self.n_agents},)")
            setattr(self, k, v)

    def save(self, path: str | os.PathLike) -> None:
        """Write counters and config to a safetensors file (the RNG state is not saved)."""
        _save_tensors(path, self.state_dict(), {"class": type(self).__name__, "config": self._config()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "_AllocationPolicy":
        """Rebuild an allocation policy written by :meth:`save`."""
        tensors, meta = _load_tensors(path)
        klass = _ALLOC_CLASSES.get(meta.get("class"))
        if klass is None or not issubclass(klass, cls):
            raise ValueError(f"{os.fspath(path)!r} holds {meta.get('class')!r}, not a {cls.__name__}")
        cfg = dict(meta["config"])
        if "true_means" in cfg:
            cfg["true_means"] = np.asarray(cfg["true_means"])
        obj = klass(**cfg)
        obj.load_state_dict(tensors)
        return obj


class ConstrainedThompsonSampling(_AllocationPolicy):
    """Thompson draws per agent, then the exact multi-dimensional knapsack (see the module docstring).

    Args:
        n_agents: number of agents n.
        n_resources: number of resource types R.
        fairness: ``"none"``, ``"proportional"`` or ``"maxmin"``.
        prior: ``"beta"`` or ``"gaussian"``.
        fairness_strength: exponent s of the proportional reweighting ``(c_i + 1)^-s``.
        **kwargs: prior parameters and ``seed`` (see ``_AllocationPolicy``).

    Shapes:
        allocate: requests ``(n, R)``, budget ``(R,)`` -> ``(n,)`` int64 0/1, or float64 fractions with
        ``divisible=True``.
    """

    _supports_divisible = True

    def __init__(self, n_agents: int, n_resources: int, fairness: str = "none", prior: str = "beta", *,
                 fairness_strength: float = 1.0, **kwargs: Any) -> None:
        super().__init__(n_agents, n_resources, prior, **kwargs)
        if fairness not in _FAIRNESS:
            raise ValueError(f"fairness must be one of {_FAIRNESS}, got {fairness!r}")
        self.fairness = fairness
        self.fairness_strength = _check_real("fairness_strength", fairness_strength, low=0.0)

    def _choose(self, req: np.ndarray, b: np.ndarray, divisible: bool = False) -> tuple[np.ndarray, np.ndarray]:
        theta = self._sample()
        if self.fairness == "none":
            return _solve_milp(theta, req, b, divisible=divisible), theta
        if self.fairness == "proportional":
            weight = (self.alloc_counts + 1.0) ** (-self.fairness_strength)
            return _solve_milp(theta * weight, req, b, divisible=divisible), theta
        return _maxmin_knapsack(theta, self.served, req, b, divisible=divisible), theta

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "fairness": self.fairness, "fairness_strength": self.fairness_strength}


def _maxmin_floor(theta: np.ndarray, past: np.ndarray, req: np.ndarray, b: np.ndarray,
                  servable: np.ndarray) -> float:
    """The highest floor ``min_{servable i}(past_i + θ_i x_i)`` a 0/1 allocation can attain, found exactly.

    A floor z is attainable iff every servable agent below it (``past_i < z``) is served, reaches it
    (``past_i + θ_i >= z``), and together they fit the budget; that only gets harder as z grows, and the optimum is one
    of the values ``past_i`` or ``past_i + θ_i``, so a binary search over those values finds it without a solver (and
    without a solver's tolerance, which cannot tell pasts a millionth apart).
    """
    cand = np.unique(np.concatenate([past[servable], (past + theta)[servable]]))

    def attainable(z: float) -> bool:
        below = servable & (past < z)
        return bool(np.all(past[below] + theta[below] >= z)) and _fits(below, req, b)

    lo, hi = 0, cand.shape[0] - 1  # cand[0], the lowest servable past, needs nobody served
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if attainable(cand[mid]):
            lo = mid
        else:
            hi = mid - 1
    return float(cand[lo])


def _maxmin_knapsack(theta: np.ndarray, past: np.ndarray, req: np.ndarray, b: np.ndarray, *,
                     divisible: bool = False) -> np.ndarray:
    """Lexicographic max-min: maximise ``min_i(past_i + θ_i x_i)``, then ``Σθx`` among the maximisers.

    The floor counts every servable agent: θ_i > 0 and a request that can be served (within the budget on its own for
    0/1 service; needing no resource whose budget is 0 when divisible). Otherwise one agent that never fits would pin
    the floor and the fairness mode would silently degrade to the plain knapsack.

    0/1: the optimal floor z* is found exactly (:func:`_maxmin_floor`), then the knapsack maximises ``Σθx`` with the
    servable agents below z* forced in. Divisible: stage 1 is an LP with variables ``[x ∈ [0, 1]ⁿ, z]`` and rows
    ``z - θ_i x_i <= past_i``; stage 2 bounds ``x_i`` from below by ``(z* - past_i) / θ_i``, capped by the stage-1
    solution so the bounds stay feasible.
    """
    n = theta.shape[0]
    servable = theta > 0
    if divisible:
        servable &= np.all((req == 0) | (b[None, :] > 0), axis=1)
    else:
        servable &= np.all(req <= b[None, :], axis=1)
    if not servable.any():
        return _solve_milp(theta, req, b, divisible=divisible)
    if not divisible:
        z_star = _maxmin_floor(theta, past, req, b, servable)
        return _solve_milp(theta, req, b, forced=servable & (past < z_star))
    rows, blocked = _budget_rows(req, b)
    c = np.zeros(n + 1)
    c[-1] = -1.0  # maximise z
    floor_rows = np.concatenate([-np.diag(theta), np.ones((n, 1))], axis=1)[servable]
    cons = [LinearConstraint(floor_rows, -np.inf, past[servable])]
    if rows.shape[0]:  # z does not use any resource
        cons.append(LinearConstraint(np.concatenate([rows, np.zeros((rows.shape[0], 1))], axis=1), -np.inf, 1.0))
    bounds = Bounds(np.r_[np.zeros(n), -np.inf], np.r_[np.where(blocked, 0.0, 1.0), np.inf])
    res = milp(c, constraints=cons, integrality=np.zeros(n + 1), bounds=bounds)
    if res.x is None:
        raise RuntimeError(f"HiGHS failed on the max-min stage (status {res.status}: {res.message})")
    need = np.where(servable, (res.x[-1] - past) / np.where(servable, theta, 1.0), 0.0)
    lower = np.minimum(np.clip(need, 0.0, 1.0), np.clip(res.x[:n], 0.0, 1.0))
    return _solve_milp(theta, req, b, forced=lower, divisible=True)


class ConstrainedUCB1(_AllocationPolicy):
    """UCB1 indices ``mean_i + c sqrt(2 ln t / n_i)`` in the exact knapsack; unobserved agents get a dominating index.

    Args:
        n_agents: number of agents n.
        n_resources: number of resource types R.
        c: exploration scale.
        **kwargs: prior parameters (used for the mean of unobserved agents) and ``seed``.
    """

    _supports_divisible = True

    def __init__(self, n_agents: int, n_resources: int, c: float = 1.0, **kwargs: Any) -> None:
        super().__init__(n_agents, n_resources, **kwargs)
        self.c = _check_real("c", c, low=0.0)

    def _choose(self, req: np.ndarray, b: np.ndarray, divisible: bool = False) -> tuple[np.ndarray, np.ndarray]:
        seen = self.pulls > 0
        mean = np.where(seen, self.reward_sums / np.maximum(self.pulls, 1), 0.0)
        t = max(self.pulls.sum(), 1.0)
        idx = mean + self.c * np.sqrt(2 * np.log(t) / np.maximum(self.pulls, 1))
        top = idx[seen].max() if seen.any() else 0.0
        idx = np.where(seen, idx, abs(top) + 1.0 + self.c)  # finite stand-in for +inf (HiGHS needs finite costs)
        return _solve_milp(idx, req, b, divisible=divisible), self.posterior_mean()

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "c": self.c}


class UnconstrainedTS(_AllocationPolicy):
    """Thompson sampling that ranks agents by their draw ignoring the requests, then serves them while they fit."""

    def _choose(self, req: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = self._sample()
        return _fill_by_score(theta, req, b), theta


class EpsilonGreedyAlloc(_AllocationPolicy):
    """With probability ε serve agents in a random order while they fit; otherwise the knapsack on posterior means.

    Args:
        n_agents: number of agents n.
        n_resources: number of resource types R.
        epsilon: exploration probability per round.
        **kwargs: prior parameters and ``seed``.
    """

    def __init__(self, n_agents: int, n_resources: int, epsilon: float = 0.1, **kwargs: Any) -> None:
        super().__init__(n_agents, n_resources, **kwargs)
        self.epsilon = _check_real("epsilon", epsilon, low=0.0, high=1.0)

    def _choose(self, req: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = self.posterior_mean()
        if self.rng.random() < self.epsilon:
            return _fill_in_order(self.rng.permutation(self.n_agents), req, b), mean
        return _solve_milp(mean, req, b), mean

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "epsilon": self.epsilon}


class RoundRobinAlloc(_AllocationPolicy):
    """Serve agents cyclically from a moving pointer, skipping those whose request does not fit."""

    _extra_state = ("pointer",)

    def __init__(self, n_agents: int, n_resources: int, **kwargs: Any) -> None:
        super().__init__(n_agents, n_resources, **kwargs)
        self._pointer = 0

    def _choose(self, req: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = (self._pointer + np.arange(self.n_agents)) % self.n_agents
        take = _fill_in_order(order, req, b)
        if take.any():  # next round starts just after the last agent served in cyclic order
            served_pos = np.nonzero(take[order])[0]
            self._pointer = int((order[served_pos[-1]] + 1) % self.n_agents)
        return take, self.posterior_mean()

    def state_dict(self) -> dict[str, Tensor]:
        """The shared counters plus ``pointer``, the agent the next round starts from (0-d int64)."""
        return {**super().state_dict(), "pointer": torch.tensor(self._pointer, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "pointer" not in state:
            raise ValueError("state dict is missing ['pointer'] (RoundRobinAlloc's position in the cycle)")
        pointer = int(state["pointer"])
        if not 0 <= pointer < self.n_agents:
            raise ValueError(f"state 'pointer' is {pointer}, outside [0, {self.n_agents})")
        super().load_state_dict(state)
        self._pointer = pointer


class ProportionalAlloc(_AllocationPolicy):
    """Random service order drawn with probability ∝ posterior mean (Efraimidis–Spirakis keys), filled while fitting."""

    def _choose(self, req: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = self.posterior_mean()
        w = np.maximum(mean - min(mean.min(), 0.0), 1e-12)  # shift so Gaussian means stay positive
        keys = self.rng.random(self.n_agents) ** (1.0 / w)
        return _fill_by_score(keys, req, b), mean


class GreedyAlloc(_AllocationPolicy):
    """Pure exploitation: serve agents by decreasing posterior mean while they fit."""

    def _choose(self, req: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = self.posterior_mean()
        return _fill_by_score(mean, req, b), mean


class OracleAlloc(_AllocationPolicy):
    """The exact knapsack on the true mean rewards (an upper reference, not a learner).

    Args:
        n_agents: number of agents n.
        n_resources: number of resource types R.
        true_means: the true expected reward of each agent, ``(n,)``.
        **kwargs: prior parameters and ``seed`` (kept for bookkeeping).
    """

    _supports_divisible = True

    def __init__(self, n_agents: int, n_resources: int, true_means, **kwargs: Any) -> None:
        super().__init__(n_agents, n_resources, **kwargs)
        mu = _as_array("true_means", true_means, 1)
        if mu.shape != (n_agents,):
            raise ValueError(f"true_means must have shape ({n_agents},), got {mu.shape}")
        self.true_means = mu

    def _choose(self, req: np.ndarray, b: np.ndarray, divisible: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return _solve_milp(self.true_means, req, b, divisible=divisible), self.true_means

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "true_means": self.true_means.tolist()}
