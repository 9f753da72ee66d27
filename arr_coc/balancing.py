"""Balancing: opponent processing that turns the three relevance scores into one utility per patch.

Vervaeke's relevance realisation balances opposed tensions rather than optimising one score. Each tension here is a
single learned scalar, signed so that 0 is neutral and the two signs are the two poles:

- **weights** ``w`` (3): how much propositional, perspectival and participatory relevance count.
- **focus ↔ diversify** ``log_focus``: the utility is multiplied by ``exp(log_focus)`` (an inverse temperature).
  With the softmax-target allocators, focus concentrates tokens on the top patches (a higher Gini coefficient of the
  budgets); diversify spreads them toward uniform.
- **exploit ↔ explore** ``explore``: adds ``explore · uncertainty`` (standardised per sample) when an uncertainty is
  given, e.g. a bandit's UCB width or posterior std. Positive explores (tokens go where the estimate is unsure),
  negative exploits (tokens avoid unsure patches).
- **compress ↔ particularize** ``compress``: subtracts ``compress · softplus(mean(u) - u)``, a penalty that grows
  for patches below the sample's mean utility. Positive compresses (those patches fall to the minimum allocation);
  negative particularizes (they are lifted, keeping graded detail everywhere). The negative side is applied as
  ``expm1(compress)``, which saturates at -1 (full flattening below the mean) and meets the positive side with slope
  1 at 0: a raw weight below -1 would lift a patch past the gap to the mean and reverse the order of the patches
  below it, so the utility would no longer rise with the scores. Positive weights (every shipped model's) are used
  as they are.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arr_coc._utils import _check_finite, _check_float, _check_int, _check_ndim, _check_same_device, _check_tensor
from arr_coc.knowing import standardize

__all__ = ["Balancing"]


class Balancing(nn.Module):
    """Learned opponent processing: scores (and optional uncertainty) → utility.

    Args:
        num_scores: Number of relevance scores per patch (3 for Knowing).
        init_weights: Initial score weights.
        init_focus: Initial inverse temperature (> 0); stored as its log.
        init_explore: Initial explore (+) / exploit (-) weight.
        init_compress: Initial compress (+) / particularize (-) weight.
        learnable: If False the tensions are buffers (fixed), not parameters.

    Shapes:
        scores: (B, K, S)
        uncertainty: (B, K)
        returns: (B, K)
    """

    def __init__(self, num_scores: int = 3, *, init_weights: Sequence[float] | None = None, init_focus: float = 1.0,
                 init_explore: float = 0.0, init_compress: float = 0.0, learnable: bool = True, device=None,
                 dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        num_scores = _check_int("num_scores", num_scores, minimum=1)
        if init_weights is None:
            init_weights = [1.0] * num_scores
        if isinstance(init_weights, (str, bytes)) or not hasattr(init_weights, "__len__"):
            raise ValueError(f"init_weights must be a sequence of numbers, got {init_weights!r}")
        if len(init_weights) != num_scores:
            raise ValueError(f"init_weights has {len(init_weights)} entries but num_scores={num_scores}")
        # A NaN or infinite initial tension made every utility NaN or inf, which only the allocator then reported.
        for nm, v in [(f"init_weights[{i}]", w) for i, w in enumerate(init_weights)] + [
                ("init_focus", init_focus), ("init_explore", init_explore), ("init_compress", init_compress)]:
            try:
                ok = not isinstance(v, (str, bytes, bool)) and math.isfinite(float(v))
            except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
                ok = False
            if not ok:
                raise ValueError(f"{nm} must be a finite number, got {v!r}")
        if init_focus <= 0:
            raise ValueError(f"init_focus must be > 0, got {init_focus}")
        self.num_scores = num_scores
        self._init = (list(init_weights), math.log(init_focus), init_explore, init_compress)
        # Scalars are stored with shape (1,), not (): FSDP2's fully_shard refuses 0-dim parameters.
        for name, shape in (("weights", (num_scores,)), ("log_focus", (1,)), ("explore", (1,)), ("compress", (1,))):
            t = torch.empty(shape, **fk)
            if learnable:
                self.register_parameter(name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        w, lf, ex, co = self._init
        with torch.no_grad():
            self.weights.copy_(torch.tensor(w))
            self.log_focus.fill_(lf)
            self.explore.fill_(ex)
            self.compress.fill_(co)

    def compress_weight(self) -> Tensor:
        """The compress (+) / particularize (-) weight as applied: ``compress`` if >= 0, else ``expm1(compress)``, in
        (-1, 0), so the utility stays increasing in the scores (see the module docstring)."""
        c = self.compress
        return torch.where(c >= 0, c, torch.expm1(c.clamp_max(0)))

    def extra_repr(self) -> str:
        return f"num_scores={self.num_scores}"

    def forward(self, scores: Tensor, *, uncertainty: Tensor | None = None) -> Tensor:
        _check_tensor("scores", scores)
        _check_ndim("scores", scores, 3, "(B, K, S)")
        _check_float("scores", scores)
        if scores.shape[-1] != self.num_scores:
            raise ValueError(f"scores have S={scores.shape[-1]} columns but Balancing(num_scores={self.num_scores})")
        _check_finite("scores", scores)
        u = scores @ self.weights.to(scores.dtype)  # (B, K)
        if uncertainty is not None:
            _check_tensor("uncertainty", uncertainty)
            if uncertainty.shape != u.shape:
                raise ValueError(f"uncertainty shape {tuple(uncertainty.shape)} != scores' (B, K) {tuple(u.shape)}")
            _check_same_device(scores=scores, uncertainty=uncertainty)
            if uncertainty.dtype != scores.dtype:
                # A cast would round float64 or widen a half/integer tensor silently: refuse, naming both dtypes.
                raise ValueError(f"uncertainty has dtype {uncertainty.dtype} but scores have dtype {scores.dtype}; "
                                 "pass uncertainty in the scores' dtype")
            _check_finite("uncertainty", uncertainty)
            u = u + self.explore.to(u.dtype) * standardize(uncertainty, dim=1)
        below = F.softplus(u.mean(-1, keepdim=True) - u)
        u = u - self.compress_weight().to(u.dtype) * below
        return u * self.log_focus.to(u.dtype).exp()
