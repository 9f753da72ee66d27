"""The allocator base class and the name → class registry (open_clip / timm style).

An allocator turns a per-patch utility into integer token budgets: ``allocator(utility) -> LongTensor (B, K)`` whose
rows sum to ``budget`` exactly and keep ``min_tokens <= t <= max_tokens``. Level-based allocators also take a
per-level utility ``(B, K, L)``. Each allocator also offers :meth:`Allocator.relaxed`, a continuous allocation with
gradients, which the pipeline's straight-through gate uses to train the stages upstream.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import torch
from torch import Tensor, nn

from arr_coc._utils import Registry, _check_tensor
from arr_coc.kernels import capped_simplex_projection, round_to_budget

__all__ = ["Allocator", "AllocInfo", "register_allocator", "create_allocator", "list_allocators", "capped_softmax"]

_REGISTRY: Registry[type["Allocator"]] = Registry("allocator", attr="registry_name")
_A = TypeVar("_A", bound=type)


@dataclass(frozen=True)
class AllocInfo:
    """Diagnostics from the last call (not part of the output contract).

    Attributes:
        slack: (B,) int64 unspent tokens (non-zero only for ``mckp`` in ``at_most`` mode).
        shadow_price: (B,) the budget's Lagrange multiplier, where the allocator computes one.
        kkt_residual: (B,) worst relative KKT violation, where the allocator checks one.
        extra: anything allocator-specific (e.g. iteration counts).
    """

    slack: Tensor | None = None
    shadow_price: Tensor | None = None
    kkt_residual: Tensor | None = None
    extra: dict = field(default_factory=dict)


def capped_softmax(utility: Tensor, budget: Tensor | float, lo: float, hi: float) -> Tensor:
    """Softmax shares of the free tokens, water-filled under the cap: ``x = lo + min(hi - lo, c · exp(u))``.

    ``c`` is set per row so that ``sum(x) = budget``. This is the KL (I-)projection of the softmax distribution onto
    the capped simplex: a patch that would exceed ``hi`` is capped and its excess is shared among the others *in
    proportion to their shares*, so ordering and concentration are preserved. (Spreading the excess equally instead,
    as a Euclidean projection of uncapped softmax targets does, lifts every low patch off ``lo`` and makes a sharper
    utility give a *flatter* allocation once patches saturate.)

    The capped set is found without gradients (it only grows, so at most K rounds, usually 2-3); ``c`` is then
    recomputed in closed form on the uncapped set, ``log c = log(B - K·lo - n_cap·(hi - lo)) - logsumexp_free(u)``, with
    autograd, which gives the exact gradient of the piecewise-smooth map.

    Shapes:
        utility: (B, K)
        budget: () or (B,)
        returns: (B, K)
    """
    k = utility.shape[-1]
    b = torch.as_tensor(budget, dtype=utility.dtype, device=utility.device).expand(utility.shape[:-1]).unsqueeze(-1)
    span = hi - lo
    free_total = b - k * lo  # (B, 1) tokens above the floor

    def log_c(u: Tensor, capped: Tensor) -> Tensor:
        rest = free_total - capped.sum(-1, keepdim=True) * span
        lse = torch.logsumexp(torch.where(capped, torch.full_like(u, float("-inf")), u), dim=-1, keepdim=True)
        return torch.log(rest.clamp_min(torch.finfo(u.dtype).tiny)) - lse

    with torch.no_grad():
        capped = torch.zeros_like(utility, dtype=torch.bool)
        for _ in range(k):
            over = utility + log_c(utility, capped) > math.log(span) if span > 0 else torch.ones_like(capped)
            grow = over & ~capped
            if not bool(grow.any()):
                break
            # Capping an offender can only raise c (its share exceeded the cap), so every current offender stays
            # one: capping them all at once is safe and needs few rounds.
            capped = capped | grow
    lc = log_c(utility, capped)
    # Capped patches take hi; their exponent is masked *before* exp (so is every exponent of a row with every patch
    # capped, whose c is undefined): a capped utility more than the dtype's exp range (~88 in float32) above the free
    # ones overflowed exp to inf, and where's zero gradient times inf made the whole row's gradient NaN.
    x = lo + torch.exp(torch.where(capped, torch.zeros_like(utility), utility + lc))
    x = torch.where(capped, torch.full_like(x, float(hi)), x)
    # Budget exactly K·lo: nothing is free, every patch sits at lo.
    return torch.where(free_total <= 0, torch.full_like(x, float(lo)), x)


def register_allocator(name: str) -> Callable[[_A], _A]:
    """Class decorator that registers an :class:`Allocator` subclass under ``name``."""
    return _REGISTRY.register(name)


def list_allocators() -> list[str]:
    """Names of the registered allocators, sorted."""
    return _REGISTRY.names()


def create_allocator(name: str, budget: int = 13200, min_tokens: int = 64, max_tokens: int = 400,
                     **kwargs) -> "Allocator":
    """Build a registered allocator by name.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones), an argument the allocator does not take
            (the message lists those it does) or invalid values.
    """
    cls = _REGISTRY.get(name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:  # a typo ("eval_polcy") raised a bare TypeError from __init__
            raise ValueError(f"allocator {name!r} takes no argument(s) {unknown}; its arguments: {known}")
    return cls(budget=budget, min_tokens=min_tokens, max_tokens=max_tokens, **kwargs)


class Allocator(nn.Module):
    """Base class: integer budgets that sum to ``budget`` exactly within ``[min_tokens, max_tokens]``.

    Subclasses implement :meth:`allocate` (integer budgets) and may override :meth:`relaxed` (the continuous allocation
    used for straight-through gradients; by default the capped-simplex projection of :meth:`softmax_targets`).

    Args:
        budget: Total tokens per sample.
        min_tokens: Least tokens any patch gets.
        max_tokens: Most tokens any patch gets.
    """

    registry_name: str = ""
    #: Whether ``forward`` also accepts a per-level utility ``(B, K, L)``.
    accepts_levels: bool = False

    def __init__(self, budget: int = 13200, min_tokens: int = 64, max_tokens: int = 400, *, device=None, dtype=None):
        super().__init__()
        for nm, v in (("budget", budget), ("min_tokens", min_tokens), ("max_tokens", max_tokens)):
            if isinstance(v, bool) or not isinstance(v, int) and not (isinstance(v, float) and v.is_integer()):
                raise ValueError(f"{nm} must be an integer, got {v!r}")
        self.budget, self.min_tokens, self.max_tokens = int(budget), int(min_tokens), int(max_tokens)
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"lo > hi: min_tokens={self.min_tokens} > max_tokens={self.max_tokens}")
        self.last_info = AllocInfo()

    def extra_repr(self) -> str:
        return f"budget={self.budget}, min_tokens={self.min_tokens}, max_tokens={self.max_tokens}"

    # -- validation --------------------------------------------------------------------------------------------------
    def check_feasible(self, num_patches: int) -> None:
        """Raise ``ValueError`` unless ``K·min_tokens <= budget <= K·max_tokens``."""
        k, b, lo, hi = num_patches, self.budget, self.min_tokens, self.max_tokens
        if k * lo > b:
            raise ValueError(f"infeasible budget: K·lo = {k}·{lo} = {k * lo} > budget={b}")
        if k * hi < b:
            raise ValueError(f"infeasible budget: K·hi = {k}·{hi} = {k * hi} < budget={b}")

    def _check_utility(self, utility: Tensor) -> None:
        _check_tensor("utility", utility)
        ok_dims = (2, 3) if self.accepts_levels else (2,)
        if utility.dim() not in ok_dims:
            want = "(B, K) or (B, K, L)" if self.accepts_levels else "(B, K)"
            raise ValueError(f"{type(self).__name__} expects utility of shape {want}, got {tuple(utility.shape)}")
        if not utility.is_floating_point():
            raise ValueError(f"utility must be floating point, got dtype {utility.dtype}")
        bad = ~torch.isfinite(utility)
        if bool(bad.any()):
            i = tuple(int(v) for v in bad.nonzero()[0].tolist())
            raise ValueError(f"utility contains {int(bad.sum())} non-finite value(s); first at {i}: "
                             f"{utility[i].item()}")
        self.check_feasible(utility.shape[1])

    # -- the contract --------------------------------------------------------------------------------------------------
    def forward(self, utility: Tensor, *, context: Tensor | None = None) -> Tensor:
        """Integer budgets for each patch.

        Args:
            utility: Per-patch (or per-patch-and-level) utility; higher means "wants more tokens".
            context: Optional per-patch context, used by learning allocators (``bandit``); others ignore it.

        Shapes:
            utility: (B, K) or, for level allocators, (B, K, L)
            context: (B, K, C)
            returns: (B, K) int64
        """
        self._check_utility(utility)
        with torch.no_grad():
            return self.allocate(utility.detach(), context=context)

    def allocate(self, utility: Tensor, *, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def relaxed(self, utility: Tensor) -> Tensor:
        """Continuous allocation on the capped simplex, differentiable in ``utility``.

        Shapes:
            utility: (B, K)
            returns: (B, K) float
        """
        # Checked as forward checks: a NaN utility came back as NaN budgets, an inf one as "y contains ... nan".
        self._check_utility(utility)
        return self._project(self.softmax_targets(utility))

    def softmax_targets(self, utility: Tensor) -> Tensor:
        """Capped softmax shares of the budget: ``t_k = lo + min(hi - lo, c · exp(u_k))``, ``c`` fixed by ``sum = B``.

        See :func:`capped_softmax`. Shape (B, K) → (B, K).
        """
        return capped_softmax(utility, self.budget, self.min_tokens, self.max_tokens)

    # -- shared helpers ------------------------------------------------------------------------------------------------
    def _project(self, targets: Tensor, budget: Tensor | float | None = None) -> Tensor:
        b = float(self.budget) if budget is None else budget
        return capped_simplex_projection(targets, b, float(self.min_tokens), float(self.max_tokens))

    def _round(self, x: Tensor, budget: Tensor | int | None = None) -> Tensor:
        b = self.budget if budget is None else budget
        return round_to_budget(x, b, self.min_tokens, self.max_tokens)

    def _project_round(self, targets: Tensor) -> Tensor:
        # Solve in float64: targets hit 1e4 scale and the rounding stage needs the sum within float drift.
        return self._round(self._project(targets.double()))
