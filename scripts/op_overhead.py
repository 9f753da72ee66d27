"""Host syncs and aten ops per call on the CUDA path of the public projection/rounding ops, counted on a CPU.

    python scripts/op_overhead.py count          # per op and case: aten ops, ~launches, views, syncs, h2d copies
    R=8 python scripts/op_overhead.py count      # the same at 8 rows
    python scripts/op_overhead.py time           # CPU time per call at R=1 (fake kernel, best of 3 x 1,000 calls)

On a GPU every aten op that computes is a kernel launch and every ``.item()`` / ``.tolist()`` / ``bool(t)`` /
``torch.tensor(number, device=cuda)`` is a host sync, so these counts are a proxy for the Python path's cost around
the 4 µs kernel (README, issue 4). The ops' ``cuda`` implementations run on CPU tensors with the extension replaced
by a fake that checks the binding's argument contract and computes with the reference; a ``TorchDispatchMode``
records every aten op, including those inside the custom ops. Cases: (a) scalar budget/lo/hi, (b) a per-row budget
tensor with scalar bounds, (c) per-element lo/hi. A diagnostic: it patches the dispatch module's internals.
"""
from __future__ import annotations

import collections
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch._library.custom_ops import OPDEFS

from arr_coc.kernels import capped_simplex_projection, dispatch, ops, project_and_round, round_to_budget
from arr_coc.kernels.reference import projection_forward, round_largest_remainder

torch.set_num_threads(1)
if hasattr(ops, "_get_current_dispatch_mode"):  # the counting mode only observes: let the constant cache work
    ops._get_current_dispatch_mode = lambda: None

NO_LAUNCH = {"empty.memory_format", "empty_strided.default", "empty_like.default", "lift_fresh.default",
             "_local_scalar_dense.default"}
SYNC = {"_local_scalar_dense.default", "nonzero.default"}


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        if not self.paused:
            self.ops.append(func)
        if func.namespace == "arr_coc":  # run the implementation's own aten ops under this mode
            opdef = OPDEFS[f"arr_coc::{func._opname}"]
            with self:
                return opdef._backend_fns[None](*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


COUNTER: Counter | None = None
TOLIST = [0]
_orig_tolist = torch.Tensor.tolist


def _tolist(self):
    if COUNTER is not None and not COUNTER.paused:
        TOLIST[0] += 1
    return _orig_tolist(self)


torch.Tensor.tolist = _tolist


class FakeExt:
    """Mirrors the binding's argument checks; computes with the reference (or returns canned answers)."""

    def __init__(self, canned=None):
        self.calls = []
        self.canned = canned

    def forward(self, y, budget, budget_i, lo, hi, mode, path=0):
        if COUNTER is not None:
            COUNTER.paused = True
        try:
            self.calls.append(("forward", mode, path))
            assert y.dim() == 2
            r, k = y.shape
            acc = torch.float64 if y.dtype == torch.float64 else torch.float32
            assert budget.shape == (r,) and budget.dtype == acc, (budget.shape, budget.dtype)
            assert lo.shape == (r, k) and hi.shape == (r, k) and lo.dtype == acc and hi.dtype == acc
            if mode:
                assert budget_i.shape == (r,) and budget_i.dtype == torch.int64
            if self.canned is not None:
                return self.canned[mode]
            x = projection_forward(y, budget, lo, hi) if mode != 2 else None
            t = None
            if mode:
                src = x if mode == 1 else y
                t = round_largest_remainder(src, budget_i, lo.long(), hi.long())
            return [x, t]
        finally:
            if COUNTER is not None:
                COUNTER.paused = False

    def backward(self, *a):
        raise AssertionError


def install(ext):
    dispatch.HAS_CUDA_KERNEL = True
    dispatch._ext = ext
    dispatch._override_impl = "auto"
    for op in (ops._projection_op, ops._round_op, ops._project_and_round_op):
        op._backend_fns[None] = op._backend_fns["cuda"]


def problem(case, r=1, k=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(r, k, generator=g) * 80 + 66
    if case == "a":
        b, lo, hi = 13200, 64, 400
    elif case == "b":
        b = torch.full((r,), 13200)
        lo, hi = 64, 400
    else:
        lo = torch.randint(40, 80, (r, k), generator=g)
        hi = lo + torch.randint(200, 400, (r, k), generator=g)
        b = (lo.sum(-1) + hi.sum(-1)) // 2
        lo, hi = lo, hi
    return y, b, lo, hi


def floatify(v):
    return float(v) if not isinstance(v, torch.Tensor) else v.float()


def calls(y, b, lo, hi):
    bf, lof, hif = floatify(b), floatify(lo), floatify(hi)
    x = capped_simplex_projection(y, bf, lof, hif)
    return {
        "capped_simplex_projection": lambda: capped_simplex_projection(y, bf, lof, hif),
        "round_to_budget": lambda: round_to_budget(x, b, lo, hi),
        "project_and_round": lambda: project_and_round(y, b, lo, hi),
    }


def count(r=int(__import__("os").environ.get("R", "1"))):
    global COUNTER
    if r < 1:
        raise ValueError(f"R must be >= 1, got {r}")
    ext = FakeExt()
    install(ext)
    for case in "abc":
        y, b, lo, hi = problem(case, r=r)
        for name, fn in calls(y, b, lo, hi).items():
            fn()
            ext.calls.clear()
            COUNTER = Counter()
            TOLIST[0] = 0
            with COUNTER:
                fn()
            names = [f"{o._opname}.{o._overloadname}" for o in COUNTER.ops]
            syncs = sum(n in SYNC for n in names) + TOLIST[0]
            h2d = names.count("lift_fresh.default")
            views = sum(1 for o in COUNTER.ops if o.is_view and o._opname != "lift_fresh")
            launch = sum(1 for o, n in zip(COUNTER.ops, names)
                         if not o.is_view and n not in NO_LAUNCH and o.namespace != "arr_coc")
            print(f"{case} {name:26s} aten={len(names):3d} launch~={launch:3d} views={views:3d} "
                  f"syncs(D2H)={syncs} h2d={h2d} kernel={len(ext.calls)}")
            if "-v" in sys.argv:
                print("   ", dict(collections.Counter(names)))
            COUNTER = None


def timeit(n: int = 1000):
    y0, b0, lo0, hi0 = problem("a")
    install(FakeExt())
    out = {}
    for case in "abc":
        y, b, lo, hi = problem(case)
        install(FakeExt())
        fns = calls(y, b, lo, hi)
        # canned answers so the fake costs nothing
        x = projection_forward(y, torch.tensor(13200.0).expand(1) if case != "c" else b.float(),
                               torch.tensor(floatify(lo)) if case != "c" else lo.float(),
                               torch.tensor(floatify(hi)) if case != "c" else hi.float())
        bl = torch.as_tensor(b).expand(1)
        t = round_largest_remainder(x, bl, torch.as_tensor(lo), torch.as_tensor(hi))
        ext = FakeExt(canned={0: [x, None], 1: [x, t], 2: [None, t]})
        install(ext)
        for name, fn in fns.items():
            best = cpu = float("inf")
            for _ in range(3):
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(n):
                    fn()
                best = min(best, time.perf_counter() - t0)
                cpu = min(cpu, time.thread_time() - c0)
            print(f"{case} {name:26s} wall {best / n * 1e6:7.1f} us/call  thread-cpu {cpu / n * 1e6:7.1f} us/call")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("count", "time"):
        sys.exit(__doc__)
    {"count": count, "time": timeit}[sys.argv[1]]()
