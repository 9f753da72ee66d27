"""Independent float64 solvers used as ground truth by the tests (NumPy, no code shared with the library)."""

from __future__ import annotations

import numpy as np


def project_f64(y, budget, lo, hi) -> np.ndarray:
    """Exact capped-simplex projection in float64 by breakpoint search (sort-based, per row).

    s(tau) = sum clip(y - tau, lo, hi) is piecewise linear with breakpoints y - hi and y - lo. Sorting the breakpoints
    and evaluating s at each finds the linear piece holding the root, which is then solved in closed form.
    """
    y = np.asarray(y, dtype=np.float64)
    shape = y.shape
    k = shape[-1]
    y2 = y.reshape(-1, k)
    lo2 = np.broadcast_to(np.asarray(lo, dtype=np.float64), shape).reshape(-1, k)
    hi2 = np.broadcast_to(np.asarray(hi, dtype=np.float64), shape).reshape(-1, k)
    b2 = np.broadcast_to(np.asarray(budget, dtype=np.float64), shape[:-1]).reshape(-1)
    out = np.empty_like(y2)
    for r in range(y2.shape[0]):
        yr, lr, hr, br = y2[r], lo2[r], hi2[r], b2[r]
        bps = np.sort(np.concatenate([yr - hr, yr - lr]))
        s = np.array([np.clip(yr - t, lr, hr).sum() for t in bps])  # non-increasing in t
        # Find consecutive breakpoints with s(t_a) >= B >= s(t_b); s is linear between them.
        idx = np.nonzero(s <= br)[0]
        j = idx[0] if idx.size else len(bps) - 1  # budget below sum(lo) by rounding: everything at lo
        if j == 0 or s[j] == br or s[j - 1] == s[j]:
            tau = bps[j]
        else:
            ta, tb, sa, sb = bps[j - 1], bps[j], s[j - 1], s[j]
            tau = ta + (sa - br) * (tb - ta) / (sa - sb)
        x = np.clip(yr - tau, lr, hr)
        # One closed-form polish on the free set removes the interpolation rounding.
        free = (yr - tau > lr) & (yr - tau < hr)
        if free.any():
            tau = (yr[free].sum() - (br - x[~free].sum())) / free.sum()
            x = np.clip(yr - tau, lr, hr)
        out[r] = x
    return out.reshape(shape)


def waterfill_log_f64(w, budget, lo, hi) -> np.ndarray:
    """argmax sum w log t on the capped simplex: t = clip(w / nu, lo, hi) with nu found by bisection (float64)."""
    w = np.asarray(w, dtype=np.float64)
    out = np.empty_like(w)
    for r in range(w.shape[0]):
        a, b = 1e-300, 1e300
        for _ in range(3000):
            nu = np.sqrt(a * b)
            s = np.clip(w[r] / nu, lo, hi).sum()
            if s > budget:
                a = nu
            else:
                b = nu
            if b / a < 1 + 1e-15:
                break
        out[r] = np.clip(w[r] / np.sqrt(a * b), lo, hi)
    return out


def mckp_brute(values, levels, budget, mode) -> tuple[float, np.ndarray]:
    """Best total value over all level choices (exhaustive), or (-inf, None) if none is feasible."""
    import itertools

    values = np.asarray(values, dtype=np.float64)
    k, n_lv = values.shape
    best, arg = -np.inf, None
    for combo in itertools.product(range(n_lv), repeat=k):
        cost = sum(levels[c] for c in combo)
        if (mode == "exact" and cost != budget) or cost > budget:
            continue
        v = sum(values[i, c] for i, c in enumerate(combo))
        if v > best + 1e-12:
            best, arg = v, np.array(combo)
    return best, arg
