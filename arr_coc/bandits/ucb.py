"""UCB1 (Auer, Cesa-Bianchi & Fischer 2002), batched, with optional sliding-window or discounted statistics
(SW-UCB / D-UCB, Garivier & Moulines 2011).

The index is ``mean_a + c * sqrt(2 ln n / n_a)`` where ``n`` is the (windowed or discounted) total count; arms without
data come first. The rule is deterministic, so the propensity of the chosen arm is 1 / (number of tied arms).

Shapes: N rows, A arms. Contexts are accepted in either layout and only N is used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._validate import _check_positive
from .greedy import _MeanPolicy

__all__ = ["UCB1"]


class UCB1(_MeanPolicy):
    """Upper-confidence-bound index policy.

    Args:
        n_arms: number of arms A.
        c: scale of the confidence width (1 gives classic UCB1, which assumes rewards in [0, 1]).
        forgetting: optional forgetting rule (:class:`SlidingWindow` gives SW-UCB, :class:`Discount` D-UCB).
        device: state device.
        dtype: state dtype.

    Shapes:
        select: contexts ``(N, ...)`` -> actions ``(N,)``, propensities ``(N,)``.
    """

    def __init__(self, n_arms: int, c: float = 1.0, *, forgetting=None, device=None, dtype=None) -> None:
        super().__init__(n_arms, initial_value=0.0, forgetting=forgetting, device=device, dtype=dtype)
        self.c = _check_positive("c", c, allow_zero=True)

    def indices(self) -> Tensor:
        """UCB index per arm, ``(A,)``; ``+inf`` for arms without data."""
        total = self.counts.sum().clamp_min(1.0)
        # With discounting, counts fall below 1 but stay positive: treat them as data, never as "unplayed".
        seen = self.counts > 0
        width = self.c * torch.sqrt(2.0 * torch.log(total) / torch.where(seen, self.counts, 1.0))
        return torch.where(seen, self.means + width, torch.full_like(self.counts, float("inf")))

    def _arm_probs(self) -> Tensor:
        return self._argmax_probs(self.indices()[None, :])[0]

    def _config(self) -> dict[str, Any]:
        cfg = super()._config()
        cfg.pop("initial_value")
        return {**cfg, "c": self.c}
