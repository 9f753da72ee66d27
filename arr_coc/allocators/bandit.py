"""``bandit``: token levels chosen by a combinatorial contextual bandit under the shared token budget.

Each patch k of a sample picks one level ``c_l`` (default 64/128/256/400 tokens). Its context
``[query embedding; patch mean feature; the three knowing scores]`` (``(B, K, C)``, built by the pipeline) is mapped to
``x_k ∈ ℝ^{d+1}`` by a fixed, seeded Gaussian random projection plus a constant feature. The bandit models the
sample's reward (answer correctness, or -loss) as **additive over patches**:

    r ≈ Σ_k θ_{l_k}ᵀ x_k        (one weight vector θ_l per level)

This is the credit assignment: a sample's single reward is shared additively across its patches, and the weights are
fitted jointly by ridge regression on the per-sample feature ``Φ = Σ_k e_{l_k} ⊗ x_k`` (dimension ``L·(d+1)``), so
patches are credited in proportion to how their features explain the reward across many samples, not split equally.
The per-level statistics are the diagonal blocks of this joint Gram matrix; the statistics, updates (Cholesky, with
optional forgetting) and posterior come from :class:`arr_coc.bandits.LinUCB` / :class:`arr_coc.bandits.LinTS` with a
single arm of width ``L·(d+1)``.

Selection (a combinatorial contextual bandit; Qin, Chen & Zhu 2014 for C²UCB, Wang & Chen 2018 for combinatorial TS):

* ``policy="ucb"``: ``v[k, l] = θ_lᵀx_k + alpha · sqrt(x_kᵀ (A⁻¹)_{ll} x_k)``;
* ``policy="ts"``: one joint draw ``θ̃ ~ N(θ, v² A⁻¹)`` per sample, ``v[k, l] = θ̃_lᵀx_k``;

In eval mode (``module.eval()``) the selection is deterministic by default (``eval_policy="auto"``): UCB keeps its
bonus (a fixed function of the statistics), TS uses the posterior mean ``θ_lᵀx_k`` instead of a random draw.
``"greedy"`` (the posterior mean for both) and ``"same"`` (as in training, a TS draw included) are the alternatives.
Measured on the `small` benchmark (README, "The bandit on a model that already reads"): dropping UCB's bonus at
evaluation lost 8-18 points on most runs (LinUCB ``proj_dim`` 64: 56.8 → 38.8 overall), so the bonus is part of
what a UCB-trained bandit selects by; the TS posterior mean scored 2.3 points above a single draw (46.3 vs 44.0).

plus ``utility_weight ×`` the balancing stage's utility turned into level values (``mckp.level_values``), a prior that
lets the knowing/balancing stages steer allocation before the bandit has data. The levels are then chosen by the
multiple-choice knapsack of :mod:`arr_coc.allocators.mckp` (exact DP, or the Lagrangian solver for the GPU path).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from arr_coc.allocators.mckp import MCKPAllocator, level_values, solve_mckp
from arr_coc.allocators.registry import AllocInfo, register_allocator
from arr_coc.bandits import LinTS, LinUCB

__all__ = ["BanditAllocator"]

_POLICIES = ("ucb", "ts")
_EVAL_POLICIES = ("auto", "greedy", "same")


@register_allocator("bandit")
class BanditAllocator(MCKPAllocator):
    """Per-patch token levels from LinUCB / LinTS values and a multiple-choice knapsack.

    Args:
        budget: Total tokens per sample.
        min_tokens: Least tokens any patch gets.
        max_tokens: Most tokens any patch gets.
        levels: Allowed token counts (the arms), strictly increasing, within ``[min_tokens, max_tokens]``.
        mode: ``"exact"`` (sum = budget) or ``"at_most"`` (sum <= budget, slack in ``last_info``).
        method: knapsack solver, ``"dp"`` (exact) or ``"lagrangian"`` (parallel heuristic, ``at_most`` only).
        context_dim: width C of the raw context; ``None`` builds the projection at the first call.
        proj_dim: projected width d (the model adds a constant feature).
        policy: ``"ucb"`` or ``"ts"``.
        alpha: UCB width scale, or the TS posterior scale v.
        lam: ridge regulariser.
        utility_weight: weight of the balancing utility's level values in ``v[k, l]`` (0: pure bandit).
        eval_policy: selection in eval mode: ``"auto"`` (UCB as in training, TS by its posterior mean: both
            deterministic), ``"greedy"`` (the posterior mean, no bonus) or ``"same"`` (as in training).
        forgetting: optional :mod:`arr_coc.bandits.nonstationary` rule for the statistics.
        seed: seed of the random projection.
        device: Device of the statistics.
        dtype: Floating dtype of the statistics (contexts are cast to it). Default float64: the ridge statistics
            sum one row per sample over the whole of training, and in float32 their round-off outgrew ``lam`` (a
            `small` training run failed its Cholesky factorisation after 4,231 steps of 32 rows, README); the
            matrices are (L·(d+1))² (85² by default), so float64 costs nothing measurable. A cast of the model
            that holds the allocator (``model.to(torch.bfloat16)``, ``.half()``, ``.float()``) moves the statistics
            to its device but keeps this dtype and their values: it is chosen here, not by the activations' dtype.

    Shapes:
        forward: utility ``(B, K)`` or ``(B, K, L)``, context ``(B, K, C)`` -> ``(B, K)`` int64.
        update: rewards ``(B,)``.
        uncertainty: context ``(B, K, C)`` -> ``(B, K)``.
    """

    uses_context = True

    def __init__(self, budget: int = 13200, min_tokens: int = 64, max_tokens: int = 400, *,
                 levels: Sequence[int] = (64, 128, 256, 400), mode: str = "exact", method: str = "dp",
                 context_dim: int | None = None, proj_dim: int = 16, policy: str = "ucb", alpha: float = 1.0,
                 lam: float = 1.0, utility_weight: float = 1.0, forgetting=None, seed: int = 0,
                 eval_policy: str = "auto", device=None, dtype=None):
        super().__init__(budget, min_tokens, max_tokens, levels=levels, mode=mode, method=method)
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {_POLICIES}, got {policy!r}")
        if eval_policy not in _EVAL_POLICIES:
            raise ValueError(f"eval_policy must be one of {_EVAL_POLICIES}, got {eval_policy!r}")
        self.eval_policy = eval_policy
        for nm, v in (("proj_dim", proj_dim),) + ((("context_dim", context_dim),) if context_dim is not None else ()):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{nm} must be a positive int, got {v!r}")
        if not (isinstance(utility_weight, (int, float)) and utility_weight == utility_weight
                and abs(utility_weight) != float("inf")):
            raise ValueError(f"utility_weight must be a finite number, got {utility_weight!r}")
        self.policy_name, self.proj_dim, self.context_dim = policy, proj_dim, context_dim
        self.utility_weight, self.seed = float(utility_weight), int(seed)
        n_lv, width = len(self.levels), proj_dim + 1
        joint = n_lv * width
        dtype = torch.float64 if dtype is None else dtype
        if policy == "ucb":
            self.policy = LinUCB(1, joint, alpha=alpha, lam=lam, forgetting=forgetting, device=device, dtype=dtype)
        else:
            self.policy = LinTS(1, joint, v=alpha, lam=lam, forgetting=forgetting, device=device, dtype=dtype)
        self.alpha = float(alpha)
        if context_dim is not None:
            self.register_buffer("proj", self._make_proj(context_dim, self.policy.device))
        else:
            self.register_buffer("proj", None)  # materialised at the first call (or by load_state_dict)
        self._pending: tuple[Tensor, Tensor] | None = None  # (Φ (B, L·(d+1)), choice (B, K)) of the last allocation

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, policy={self.policy_name!r}, proj_dim={self.proj_dim}, "
                f"context_dim={self.context_dim}, utility_weight={self.utility_weight}, "
                f"eval_policy={self.eval_policy!r}")

    def _apply(self, fn, recurse=True):
        # nn.Module casts and moves every floating buffer with one fn: let a cast of the whole model move the
        # statistics and the projection to its device, but never change their dtype (in bf16 the ridge statistics
        # keep 8 significant bits). The tensor fn cast is dropped and the original moved instead: no value is lost.
        def move_only(t: Tensor) -> Tensor:
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(device=out.device)

        return super()._apply(move_only, recurse)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "proj"
        if self.proj is None and key in state_dict:  # a lazy allocator adopts the saved projection's shape
            self.proj = torch.empty_like(state_dict[key], device=self.policy.device, dtype=self.policy.dtype)
            self.context_dim = int(state_dict[key].shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ features
    def _make_proj(self, c: int, device) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        # Gaussian entries of variance 1/C keep the projected features on the scale of the raw ones.
        p = torch.randn(c, self.proj_dim, generator=g, dtype=torch.float64, device="cpu") / c**0.5  # same on any device
        return p.to(device=device, dtype=self.policy.dtype)

    def _features(self, context: object, shape: tuple[int, int] | None = None, against: str = "utility") -> Tensor:
        """Validate a raw context (its ``(B, K)`` against ``shape``, that of ``against``) and project it:
        ``(B, K, C) -> (B, K, d+1)``."""
        if not isinstance(context, Tensor):
            raise ValueError(f"the bandit allocator needs context (B, K, C) as a tensor, got {type(context).__name__}")
        if context.dim() != 3:
            raise ValueError(f"context must have shape (B, K, C), got {tuple(context.shape)}")
        if shape is not None and tuple(context.shape[:2]) != shape:
            raise ValueError(f"context has (B, K) = {tuple(context.shape[:2])} but {against} has {shape}")
        if not context.is_floating_point():
            raise ValueError(f"context must be floating point, got dtype {context.dtype}")
        if context.device != self.policy.device:
            raise ValueError(f"context is on {context.device} but the bandit statistics are on {self.policy.device}")
        if not bool(torch.isfinite(context).all()):
            i = tuple(int(v) for v in (~torch.isfinite(context)).nonzero()[0].tolist())
            raise ValueError(f"context contains non-finite values; first at {i}: {context[i].item()}")
        c = context.shape[-1]
        if self.proj is None:  # first call fixes C
            self.context_dim = c
            self.proj = self._make_proj(c, self.policy.device)
        if c != self.proj.shape[0]:
            raise ValueError(f"context width {c} does not match context_dim={self.proj.shape[0]}")
        z = context.to(self.policy.dtype) @ self.proj  # (B, K, d)
        return torch.cat([z, torch.ones_like(z[..., :1])], -1)  # (B, K, d+1)

    def _blocks(self) -> tuple[Tensor, Tensor]:
        """θ per level ``(L, d+1)`` and the diagonal blocks of A⁻¹ ``(L, d+1, d+1)``."""
        n_lv, w = len(self.levels), self.proj_dim + 1
        theta = self.policy.theta[0].view(n_lv, w)
        a_inv = self.policy.A_inv[0].view(n_lv, w, n_lv, w)
        return theta, torch.diagonal(a_inv, dim1=0, dim2=2).permute(2, 0, 1)  # (L, w, w)

    def _width(self, x: Tensor) -> Tensor:
        """``sqrt(x_kᵀ (A⁻¹)_{ll} x_k)`` for every patch and level: ``(B, K, w) -> (B, K, L)``."""
        _, blocks = self._blocks()
        return torch.einsum("bkw,lwv,bkv->bkl", x, blocks, x).clamp_min(0.0).sqrt()

    # ------------------------------------------------------------------ public API
    def bandit_values(self, context: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The bandit's value of every (patch, level): UCB score or one posterior draw per sample.

        Shapes:
            context: ``(B, K, C)`` -> ``(B, K, L)``.
        """
        return self._values(self._features(context), generator)

    def _values(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """:meth:`bandit_values` from projected features ``x`` ``(B, K, d+1)``."""
        with torch.no_grad():
            theta, _ = self._blocks()
            greedy = self.eval_policy == "greedy" or (self.eval_policy == "auto" and self.policy_name == "ts")
            if not self.training and greedy:  # evaluation by the posterior mean: deterministic, no exploration
                return torch.einsum("bkw,lw->bkl", x, theta)
            if self.policy_name == "ucb":
                return torch.einsum("bkw,lw->bkl", x, theta) + self.alpha * self._width(x)
            # One joint parameter draw per sample: θ̃ = θ + v·Lε with LLᵀ = A⁻¹.
            a_inv = self.policy.A_inv[0]
            chol = torch.linalg.cholesky(0.5 * (a_inv + a_inv.T))
            eps = torch.randn(x.shape[0], a_inv.shape[0], generator=generator, device=x.device, dtype=x.dtype)
            draw = self.policy.theta[0] + self.alpha * eps @ chol.T  # (B, L·w)
            return torch.einsum("bkw,blw->bkl", x, draw.view(x.shape[0], len(self.levels), -1))

    def uncertainty(self, context: Tensor) -> Tensor:
        """Posterior width per patch, averaged over levels (what balancing's explore term consumes).

        Shapes:
            context: ``(B, K, C)`` -> ``(B, K)``.
        """
        x = self._features(context)
        with torch.no_grad():
            return self._width(x).mean(-1).to(context.dtype)

    def allocate(self, utility: Tensor, *, context: Tensor | None = None, generator: torch.Generator | None = None
                 ) -> Tensor:
        if context is None:
            raise ValueError("the bandit allocator needs context=(B, K, C); the pipeline builds it when "
                             "allocator.uses_context is True")
        x = self._features(context, tuple(utility.shape[:2]))
        values = self._values(x, generator)  # (B, K, L)
        if self.utility_weight != 0.0:
            # In the statistics' dtype, as mckp does: a half utility's level values would be rounded to 8 bits.
            prior = utility if utility.dim() == 3 else level_values(utility.to(values.dtype), self.levels)
            if prior.shape != values.shape:
                raise ValueError(f"per-level utility has shape {tuple(prior.shape)}, expected {tuple(values.shape)}")
            values = values + self.utility_weight * prior.to(values.dtype)
        sol = solve_mckp(values, self.levels, self.budget, mode=self.mode, method=self.method)
        self._pending = (self._aggregate(x, sol.choice), sol.choice)
        self.last_info = AllocInfo(slack=sol.slack, extra={"value": sol.value, "choice": sol.choice,
                                                           "bandit_values": values})
        return sol.tokens

    def _aggregate(self, x: Tensor, choice: Tensor) -> Tensor:
        """Per-sample additive feature ``Φ_b = Σ_k e_{l_k} ⊗ x_k``: ``(B, K, w), (B, K) -> (B, L·w)``."""
        onehot = torch.nn.functional.one_hot(choice, len(self.levels)).to(x.dtype)  # (B, K, L)
        return torch.einsum("bkl,bkw->blw", onehot, x).reshape(x.shape[0], len(self.levels) * x.shape[-1])  # B=0 too

    def update(self, rewards: Tensor, *, context: Tensor | None = None, budgets: Tensor | None = None) -> None:
        """Learn from one reward per sample, credited additively across the sample's patches (module docstring).

        By default the context and levels of the last :meth:`forward` call are used; pass both ``context`` and
        ``budgets`` to learn from another (e.g. logged) allocation.

        Shapes:
            rewards: ``(B,)``; context: ``(B, K, C)``; budgets: ``(B, K)`` int64 with entries in ``levels``.
        """
        if (context is None) != (budgets is None):
            raise ValueError("pass both context and budgets, or neither (then the last forward() is used)")
        if context is not None:
            if not isinstance(budgets, Tensor) or budgets.dim() != 2:
                raise ValueError(f"budgets must be a (B, K) tensor, got {getattr(budgets, 'shape', budgets)}")
            x = self._features(context, tuple(budgets.shape), "budgets")  # not "utility": update() takes none
            lv = torch.tensor(self.levels, device=budgets.device)
            match = budgets[..., None] == lv  # (B, K, L)
            if not bool(match.any(-1).all()):
                bad = budgets[~match.any(-1)][0]  # as given: int() named a budget of 2.5 as "2", a level
                raise ValueError(f"budget {bad.item()} is not one of the levels {self.levels}")
            phi = self._aggregate(x, match.long().argmax(-1).to(x.device))
        else:
            if self._pending is None:
                raise ValueError("update() before any forward(): no allocation to credit the rewards to")
            phi = self._pending[0]
        if not isinstance(rewards, Tensor) or rewards.dim() != 1 or rewards.shape[0] != phi.shape[0]:
            raise ValueError(f"rewards must have shape ({phi.shape[0]},), got {getattr(rewards, 'shape', rewards)}")
        if phi.shape[0] == 0:  # an empty batch allocates (B = 0) and has nothing to learn; the policy refuses no rows
            if context is None:
                self._pending = None
            return
        actions = torch.zeros(phi.shape[0], dtype=torch.long, device=phi.device)
        self.policy.update(phi, actions, rewards.to(device=phi.device))  # validates finiteness / device
        if context is None:
            self._pending = None
