"""How many evaluations of s(tau) the CUDA kernel's safeguarded Newton iteration needs per row (CPU, numpy).

    python scripts/newton_iterations.py                 # bench_projection's data: K=200, B=13,200, 64..400
    python scripts/newton_iterations.py --rows 5000 --k 1000 --budget 66000

The kernel (``arr_coc/kernels/csrc/projection.cuh``) is issue-bound, so its time per row is about proportional to the
evaluations it runs. This script replays the same iteration in float32 on the same random rows as
``scripts/bench_projection.py`` (``y = 100·N(0,1) + 66``): start from the all-free root clamped into the bracket
``[min(y - hi), max(y - lo)]``, Newton steps ``tau += (s - B) / |F|`` that fall back to bisection outside the bracket,
and stop when ``|s - B| <= 8·eps·(|B| + 2·sum|lo|)`` or the bracket is at float resolution. With ``lo < 0`` an
acceptance is re-checked against ``8·eps·(|B| + 2·|sum min(x, 0)|)`` of that evaluation, which then becomes the
tolerance where it fails (the kernel's ``newton_tighten``). It prints the distribution of evaluations per row and, for
the warp path (K <= 1024), the 32-entry slots the evaluations visit: all ``ceil(K/32)`` each time (the kernel), or
only those the still-open entries would fill (an entry is closed once the bracket fixes its clamp), a measure of what
compacting the open entries could save.

``--compare-starts`` asks whether another first tau would save evaluations: besides the kernel's all-free root it
tries the chord of the bracket (s is known at both ends without an evaluation: ``s(min(y - hi)) = K·hi`` and
``s(max(y - lo)) = K·lo``), and the midpoint of the two, on eight row distributions (the benchmark's among them).
"""

from __future__ import annotations

import argparse

import numpy as np

__all__ = ["STARTS", "compare_starts", "evaluations"]

STARTS = ("free", "chord", "mid")


def evaluations(y: np.ndarray, budget: float, lo: float, hi: float, max_iters: int = 200, *,
                return_open: bool = False, start: str = "free") -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Evaluations of s(tau) per row of ``y`` (R, K) float32, as the kernel's warp path counts them. ``max_iters`` is
    the kernel's ``kMaxIters``: it stops after the evaluation with ``it >= kMaxIters``, at most ``max_iters + 1``.

    With ``return_open``, also an (R, E) int array (E: the most evaluations of any row): the entries each evaluation
    of each row would still have to visit, 0 once the row has stopped. An entry is closed once the bracket fixes its
    clamp: ``y - tl <= lo`` (at lo for every tau in the bracket) or ``y - th >= hi`` (at hi); its contribution to
    s(tau) is then a constant. The kernel visits all K every time; this measures what skipping closed entries (by
    compacting the open ones into fewer slots) could save.

    ``start`` picks the first tau: ``"free"`` (the kernel's: the root if no bound bound, clamped into the bracket),
    ``"chord"`` (where the line through the bracket's ends, at which s is ``K·hi`` and ``K·lo``, meets B) or
    ``"mid"`` (the mean of the two); the other starts are experiments, not what the kernel runs."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if y.ndim != 2 or y.dtype != np.float32 or y.shape[1] < 1:
        raise ValueError(f"y must be a 2-D float32 array with K >= 1, got shape {y.shape} dtype {y.dtype}")
    if not (np.isfinite([budget, lo, hi]).all() and np.isfinite(y).all()):  # the op rejects NaN/inf too
        raise ValueError(f"budget, lo, hi and y must be finite, got budget={budget}, lo={lo}, hi={hi}")
    if not lo <= hi or not y.shape[1] * lo <= budget <= y.shape[1] * hi:
        raise ValueError(f"infeasible: K={y.shape[1]}, budget={budget}, lo={lo}, hi={hi}")
    r, k = y.shape
    b, lo32, hi32 = np.float32(budget), np.float32(lo), np.float32(hi)
    eps = np.float32(np.finfo(np.float32).eps)
    tl, th = (y - hi32).min(1), (y - lo32).max(1)
    # Per row: newton_tighten replaces a row's tolerance.
    tol = np.full(r, 8 * eps * (abs(b) + 2 * np.float32(k) * abs(lo32)), np.float32)
    tau = np.clip((y.sum(1) - b) / np.float32(k), tl, th).astype(np.float32)
    if start != "free":
        # s(tl) = K·hi, s(th) = K·lo; the bracket is a point (every y equal) when they coincide: take it.
        span = np.float32(k) * (hi32 - lo32)
        frac = np.float32(1) if span == 0 else (np.float32(k) * hi32 - b) / span
        chord = (tl + frac * (th - tl)).astype(np.float32)
        tau = chord if start == "chord" else (np.float32(0.5) * (tau + chord)).astype(np.float32)
    done = np.zeros(r, bool)
    count = np.zeros(r, int)
    opened = []
    for _ in range(max_iters + 1):
        if return_open:
            closed = (y - tl[:, None] <= lo32) | (y - th[:, None] >= hi32)
            opened.append(np.where(done, 0, k - closed.sum(1)))
        z = y - tau[:, None]
        x = np.clip(z, lo32, hi32)
        s = x.sum(1, dtype=np.float32)
        nf = (x == z).sum(1)  # the kernel's |F|: entries inside [lo, hi], a tie with a bound counted as free
        count[~done] += 1
        res = s - b
        hit = ~done & (np.abs(res) <= tol)
        if lo32 < 0:  # newton_tighten: an acceptance must also hold at the scale of this evaluation's sum
            t = 8 * eps * (abs(b) + 2 * np.abs(np.minimum(x, 0).sum(1, dtype=np.float32)))
            fail = hit & (np.abs(res) > t)
            tol = np.where(fail, t, tol)
            hit &= ~fail
        done |= hit
        act = ~done
        tl = np.where(act & (res > 0), tau, tl)
        th = np.where(act & (res <= 0), tau, th)
        done |= act & (th - tl <= 2 * eps * np.maximum(abs(tl), abs(th)))
        act = ~done
        if not act.any():
            break
        tn = tau + res / np.maximum(nf, 1).astype(np.float32)  # float32, as the kernel compares it with the bracket
        ok = (nf > 0) & (tn > tl) & (tn < th)
        tau = np.where(act, np.where(ok, tn, 0.5 * (tl + th)), tau).astype(np.float32)
    return (count, np.stack(opened, 1)) if return_open else count


def _start_cases(rows: int, k: int, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, float, float, float]]:
    """Row distributions for ``--compare-starts``: name -> (y, budget, lo, hi)."""
    n = rng.standard_normal
    return {
        "benchmark: 100·N(0,1)+66, B=66K, 64..400": (n((rows, k)) * 100 + 66, 66.0 * k, 64.0, 400.0),
        "10·N(0,1)+66, B=66K, 64..400": (n((rows, k)) * 10 + 66, 66.0 * k, 64.0, 400.0),
        "1000·N(0,1)+66, B=66K, 64..400": (n((rows, k)) * 1000 + 66, 66.0 * k, 64.0, 400.0),
        "U(0,1), B=66K, 64..400": (rng.random((rows, k)), 66.0 * k, 64.0, 400.0),
        "Exp(200), B=150K, 64..400": (rng.exponential(200.0, (rows, k)), 150.0 * k, 64.0, 400.0),
        "100·N(0,1), B=200K, 64..400": (n((rows, k)) * 100, 200.0 * k, 64.0, 400.0),
        "100·N(0,1), B=395K, 64..400": (n((rows, k)) * 100, 395.0 * k, 64.0, 400.0),
        "Dirichlet(1), B=1, 0..1": (rng.dirichlet(np.ones(k), rows), 1.0, 0.0, 1.0),
    }


def compare_starts(rows: int = 20000, k: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean evaluations per row for each start (:data:`STARTS`) on each of :func:`_start_cases`' distributions."""
    out = {}
    for name, (y, budget, lo, hi) in _start_cases(rows, k, np.random.default_rng(seed)).items():
        y = y.astype(np.float32)
        out[name] = {st: float(evaluations(y, budget, lo, hi, start=st).mean()) for st in STARTS}
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python scripts/newton_iterations.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--budget", type=float, default=13200.0)
    p.add_argument("--lo", type=float, default=64.0)
    p.add_argument("--hi", type=float, default=400.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare-starts", action="store_true",
                   help="mean evaluations per row of each first tau on eight row distributions (--rows, --k, --seed)")
    a = p.parse_args(argv)
    if a.rows < 1 or a.k < 1:
        raise ValueError(f"--rows and --k must be >= 1, got {a.rows}, {a.k}")
    if a.compare_starts:
        table = compare_starts(a.rows, a.k, a.seed)
        print(f"mean evaluations of s(tau) per row, {a.rows} rows of K={a.k} (start: {', '.join(STARTS)})")
        for name, row in table.items():
            print(f"{name:<44}" + "".join(f"{row[st]:>8.2f}" for st in STARTS))
        return {f"{name} | {st}": v for name, row in table.items() for st, v in row.items()}
    rng = np.random.default_rng(a.seed)
    y = (rng.standard_normal((a.rows, a.k)) * 100 + 66).astype(np.float32)
    warp = a.k <= 1024  # the warp path: ceil(K / 32) slots of 32 entries per evaluation
    n, opened = (evaluations(y, a.budget, a.lo, a.hi, return_open=True) if warp
                 else (evaluations(y, a.budget, a.lo, a.hi), None))
    out = {"mean": float(n.mean()), **{f"p{q}": float(np.percentile(n, q)) for q in (50, 90, 99, 100)}}
    print(f"evaluations of s(tau) per row over {a.rows} rows (K={a.k}, B={a.budget:g}, {a.lo:g}..{a.hi:g}): "
          + ", ".join(f"{k} {v:g}" for k, v in out.items()))
    if warp:
        slots = {"slots_all": float((n * -(-a.k // 32)).mean()), "slots_open": float((-(-opened // 32)).sum(1).mean())}
        print(f"32-entry slots visited per row: {slots['slots_all']:g} visiting all K entries each evaluation (the "
              f"kernel), {slots['slots_open']:g} visiting only the open ones (compacted after every evaluation); "
              f"mean open entries per evaluation: " + ", ".join(
                  f"{opened[:, e][n > e].mean():.1f}" for e in range(min(opened.shape[1], 8))))
        out.update(slots)
    return out


if __name__ == "__main__":
    main()
