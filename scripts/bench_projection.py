"""Benchmark the capped-simplex projection: CUDA kernel vs the HBM floor and the torch baselines, in one table.

    python scripts/bench_projection.py                      # GPU: R in {1, 1024, 16384, 131072, 524288}, K=200, fp32
    python scripts/bench_projection.py --rows 1 1024 16384  # CPU: kernel columns print n/a
    python scripts/bench_projection.py --json $OUT/bench.json

Columns (times per call, medians over repetitions, after warm-up):
- floor:      ``out.copy_(y)``: one read and one write of the same R*K*4 bytes, the bandwidth floor of the forward.
- kern fwd:   the CUDA kernel, projection only, GPU time from CUDA-graph replay (no Python launch overhead).
- kern fwd+rnd: the fused projection + largest-remainder rounding (also writes int64: twice the floor's bytes).
- kern eager: the kernel called from Python (extension call, no value checks): what a caller pays at small R.
- op fwd:     the public ``capped_simplex_projection`` (value checks with host syncs, then the kernel).
- ref eager:  ``reference.projection_forward`` (safeguarded Newton with periodic convergence syncs).
- compile ref: ``torch.compile`` of a sync-free 40-step bisection + exact Newton finish of the same math (the eager
               reference breaks graphs at its convergence checks, so it is not what a compiled caller would run).
- sort tau:   the classic sort-based root (Held, Wolfe & Crowder 1974): sort, prefix sums, searchsorted.
- ratio:      kern fwd / floor.
- kern bwd, ref bwd: the backward from the saved output, kernel (graph replay) and reference eager.

GPU timings use CUDA events around ``inner`` back-to-back calls (or one graph replay of ``inner`` captured calls);
CPU timings use ``time.perf_counter``. Each cell is the median over ``--reps`` repetitions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arr_coc.kernels import capped_simplex_projection, dispatch  # noqa: E402
from arr_coc.kernels.reference import projection_backward, projection_forward  # noqa: E402

GPU_ROWS = (1, 1024, 16384, 131072, 524288)
CPU_ROWS = (1, 1024, 16384)


# ----------------------------------------------------------------------------------------------------------------------
# Baselines.


def bisect_fixed(y, budget, lo, hi, iters: int = 40):
    """Sync-free bisection on tau (fixed step count) and one exact Newton step: compile-friendly."""
    t_lo = (y - hi).amin(-1, keepdim=True)
    t_hi = (y - lo).amax(-1, keepdim=True)
    b = budget.unsqueeze(-1)
    for _ in range(iters):
        mid = 0.5 * (t_lo + t_hi)
        s = (y - mid).clamp(lo, hi).sum(-1, keepdim=True)
        t_lo = torch.where(s > b, mid, t_lo)
        t_hi = torch.where(s > b, t_hi, mid)
    tau = 0.5 * (t_lo + t_hi)
    z = y - tau
    free = ((z > lo) & (z < hi)).sum(-1, keepdim=True)
    resid = z.clamp(lo, hi).sum(-1, keepdim=True) - b
    tau = torch.where(free > 0, tau + resid / free.clamp_min(1), tau)
    return (y - tau).clamp(lo, hi)


def sort_tau(y, budget, lo: float, hi: float):
    """Sort-based exact root for scalar bounds: s at every breakpoint from prefix sums, then linear interpolation."""
    r, k = y.shape
    ys = torch.sort(y, dim=-1).values  # ascending
    pre = torch.nn.functional.pad(ys.cumsum(-1), (1, 0))  # (R, K+1): sum of the i smallest
    bp = torch.sort(torch.cat([ys - hi, ys - lo], -1), dim=-1).values  # (R, 2K) breakpoints, ascending

    def s_at(t):  # s(t) for t of shape (R, M)
        n_le_hi = torch.searchsorted(ys, t + hi, right=True)  # y <= t + hi: not capped at hi
        n_le_lo = torch.searchsorted(ys, t + lo, right=True)  # y <= t + lo: clipped at lo
        n_free = n_le_hi - n_le_lo
        free_sum = pre.gather(-1, n_le_hi) - pre.gather(-1, n_le_lo)
        return (k - n_le_hi) * hi + n_le_lo * lo + free_sum - n_free * t

    s = s_at(bp)  # non-increasing along the breakpoints
    b = budget.unsqueeze(-1)
    j = torch.searchsorted(-s.contiguous(), -b, right=False).clamp(1, 2 * k - 1)  # first breakpoint with s <= B
    t0, t1 = bp.gather(-1, j - 1), bp.gather(-1, j)
    s0, s1 = s.gather(-1, j - 1), s.gather(-1, j)
    w = torch.where(s0 != s1, (s0 - b) / (s0 - s1), torch.zeros_like(b))
    tau = t0 + w * (t1 - t0)
    return (y - tau).clamp(lo, hi)


# ----------------------------------------------------------------------------------------------------------------------
# Timers.


def time_cpu(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def time_cuda(fn, reps: int, inner: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3 / inner)
    return statistics.median(ts)


def time_cuda_graph(fn, reps: int, inner: int) -> float:
    """GPU time of ``fn`` without Python launch overhead: replay a graph of ``inner`` captured calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(inner):
            fn()
    return time_cuda(g.replay, reps, 1) / inner


# ----------------------------------------------------------------------------------------------------------------------


def _fmt(t: float | None) -> str:
    if t is None:
        return "n/a"
    if t < 1e-3:
        return f"{t * 1e6:.1f} µs"
    return f"{t * 1e3:.2f} ms"


def load_ext(gpu: bool):
    """The CUDA extension on a GPU (forced: a failed build must fail the benchmark, not silently time the reference),
    else None (the kernel columns print n/a)."""
    if not gpu:
        return None
    dispatch._override_impl = "cuda"
    t0 = time.perf_counter()
    ext = dispatch.load_kernel()
    print(f"kernel loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    return ext


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)  # recorded in the header and the JSON as given
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=None, help="row counts R (default: GPU or CPU set)")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--budget", type=float, default=13_200.0)
    p.add_argument("--lo", type=float, default=64.0)
    p.add_argument("--hi", type=float, default=400.0)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--reps", type=int, default=None, help="repetitions per cell (default 20 GPU, 5 CPU)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--max-ref-rows", type=int, default=None, help="skip the slow torch baselines above this R")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        raise ValueError(f"--reps must be >= 1, got {args.reps}")
    if args.k < 1 or (args.rows is not None and min(args.rows) < 1):
        raise ValueError(f"--rows and --k must be >= 1, got --rows {args.rows} --k {args.k}")
    if args.max_ref_rows is not None and args.max_ref_rows < 0:
        raise ValueError(f"--max-ref-rows must be >= 0, got {args.max_ref_rows}")
    if not all(math.isfinite(v) for v in (args.budget, args.lo, args.hi)) or args.lo > args.hi:
        raise ValueError(f"--budget, --lo and --hi must be finite with lo <= hi, got {args.budget}, {args.lo}, "
                         f"{args.hi}")
    if not args.k * args.lo <= args.budget <= args.k * args.hi:
        raise ValueError(f"infeasible --budget {args.budget:g}: need K*lo = {args.k * args.lo:g} <= budget <= "
                         f"K*hi = {args.k * args.hi:g} (K={args.k})")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch.cuda.is_available() is False")

    dev = "cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())) else "cpu"
    gpu = dev == "cuda"
    rows = args.rows or (GPU_ROWS if gpu else CPU_ROWS)
    reps = args.reps or (20 if gpu else 5)
    k, lo, hi = args.k, args.lo, args.hi
    ext = load_ext(gpu)
    name = torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()
    cmd = "python scripts/bench_projection.py " + " ".join(argv)
    print(f"# bench_projection  {datetime.date.today()}  device={name}  torch={torch.__version__}  K={k} fp32 "
          f"B={args.budget:g} lo={lo:g} hi={hi:g}  cmd: {cmd}")

    compiled = None if args.no_compile else torch.compile(bisect_fixed, dynamic=False)
    results = []
    for r in rows:
        g = torch.Generator(device="cpu").manual_seed(r)
        y = (torch.randn(r, k, generator=g) * 100 + 66).to(dev)
        b = torch.full((r,), args.budget, device=dev)
        lo_t, hi_t = torch.tensor(lo, device=dev), torch.tensor(hi, device=dev)
        bi = b.long()
        out = torch.empty_like(y)
        inner = max(1, min(100, 2_000_000 // (r * k)))
        big = args.max_ref_rows is not None and r > args.max_ref_rows

        def tm(fn, graph: bool = False):
            if gpu:
                return time_cuda_graph(fn, reps, inner) if graph else time_cuda(fn, reps, inner)
            return time_cpu(fn, reps)

        row: dict = {"R": r, "K": k}
        row["floor"] = tm(lambda: out.copy_(y), graph=gpu)
        x_ref = projection_forward(y, b, lo_t, hi_t)
        grad = torch.randn_like(y)
        if ext is not None:
            y2, b2, lo2, hi2 = dispatch._rows(y, b, lo_t, hi_t, torch.float32)
            bi2 = bi.reshape(-1)
            row["kern_fwd"] = tm(lambda: ext.forward(y2, b2, None, lo2, hi2, 0, 0), graph=True)
            row["kern_fwd_round"] = tm(lambda: ext.forward(y2, b2, bi2, lo2, hi2, 1, 0), graph=True)
            row["kern_eager"] = tm(lambda: ext.forward(y2, b2, None, lo2, hi2, 0, 0))
            xk = ext.forward(y2, b2, None, lo2, hi2, 0, 0)[0]
            row["kern_bwd"] = tm(lambda: ext.backward(xk, lo2, hi2, grad, 0), graph=True)
            row["max_err_vs_ref"] = float((xk - x_ref).abs().max())
        else:
            row.update(kern_fwd=None, kern_fwd_round=None, kern_eager=None, kern_bwd=None)
        row["op_fwd"] = tm(lambda: capped_simplex_projection(y, b, lo, hi))
        row["ref_eager"] = None if big else tm(lambda: projection_forward(y, b, lo_t, hi_t))
        row["compile_ref"] = None
        if compiled is not None and not big:
            compiled(y, b, lo_t, hi_t)  # compile outside the timing
            row["compile_ref"] = tm(lambda: compiled(y, b, lo_t, hi_t))
        row["sort_tau"] = None if big else tm(lambda: sort_tau(y, b, lo, hi))
        row["ref_bwd"] = tm(lambda: projection_backward(x_ref, lo_t, hi_t, grad))
        row["ratio"] = row["kern_fwd"] / row["floor"] if row["kern_fwd"] is not None else None
        # Sanity: the baselines solve the same problem.
        row["sort_tau_err"] = float((sort_tau(y, b, lo, hi) - x_ref).abs().max())
        results.append(row)
        print(f"  R={r}: done", file=sys.stderr, flush=True)

    cols = [("floor", "floor"), ("kern fwd", "kern_fwd"), ("kern fwd+rnd", "kern_fwd_round"),
            ("kern eager", "kern_eager"), ("op fwd", "op_fwd"), ("ref eager", "ref_eager"),
            ("compile ref", "compile_ref"), ("sort tau", "sort_tau"), ("ratio", "ratio"),
            ("kern bwd", "kern_bwd"), ("ref bwd", "ref_bwd")]
    print("| R | " + " | ".join(c for c, _ in cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    for row in results:
        cells = []
        for _, key in cols:
            v = row[key]
            cells.append(("n/a" if v is None else f"{v:.2f}×") if key == "ratio" else _fmt(v))
        print(f"| {row['R']:,} | " + " | ".join(cells) + " |")
    errs = ", ".join(f"R={row['R']}: {row.get('max_err_vs_ref', float('nan')):.2e}" for row in results)
    print(f"max |kernel - reference| (fp32): {errs}" if ext is not None else "kernel: n/a on this device")
    print("max |sort tau - reference|: " + ", ".join(f"{row['sort_tau_err']:.2e}" for row in results))
    if args.json is not None:
        meta = {"device": name, "torch": torch.__version__, "date": str(datetime.date.today()), "argv": argv}
        args.json.write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
