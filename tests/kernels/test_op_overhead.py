"""scripts/op_overhead.py, the per-call counts in README.md (issue 4): what it counts as a launch, a view, a host sync
and a host-to-device copy, its fake extension's argument contract, and its timings per call. The script patches
torch and the dispatch module at import; the fixture imports it afresh and puts everything back."""

from __future__ import annotations

import ast
import importlib
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from arr_coc.kernels import dispatch, ops, project_and_round
from arr_coc.kernels.reference import projection_forward, round_largest_remainder

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "op_overhead.py"
_OPS = (ops._projection_op, ops._round_op, ops._project_and_round_op)
LINE = re.compile(r"^([abc]) (\w+) +aten= *(\d+) launch~= *(\d+) views= *(\d+) syncs\(D2H\)=(\d+) h2d=(\d+) "
                  r"kernel=(\d+)$")


@pytest.fixture
def oo(monkeypatch):
    """The script freshly imported (its module-level patches applied), undone afterwards."""
    threads = torch.get_num_threads()
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(ops, "_get_current_dispatch_mode", ops._get_current_dispatch_mode)
    for name in ("HAS_CUDA_KERNEL", "_ext", "_override_impl"):
        monkeypatch.setattr(dispatch, name, getattr(dispatch, name))
    for op in _OPS:
        monkeypatch.setitem(op._backend_fns, None, op._backend_fns[None])
    sys.modules.pop("scripts.op_overhead", None)
    mod = importlib.import_module("scripts.op_overhead")
    assert torch.get_num_threads() == 1 and torch.Tensor.tolist is mod._tolist
    yield mod
    monkeypatch.undo()
    torch.set_num_threads(threads)
    sys.modules.pop("scripts.op_overhead", None)
    assert torch.Tensor.tolist is tolist and "scripts.op_overhead" not in sys.modules


def _lines(out: str):
    return [LINE.match(ln).groups() for ln in out.splitlines() if not ln.startswith("    ")]


def test_count_gives_the_readme_figures(oo, capsys, monkeypatch):
    # README, issue 4: per call at R=1, K=200, syncs + blocking copies / aten ops besides the kernel: projection
    # 1 + 0 / 6, rounding 1 + 0 / 56, fused 2 + 0 / 19; a per-row budget 1 / 7 for the projection; per-element
    # bounds 1 / 33 (the script's aten column counts the custom op's own entry, one more). One kernel call each.
    monkeypatch.setattr(sys, "argv", ["op_overhead.py", "count", "-v"])
    oo.count(r=1)
    out = capsys.readouterr().out
    rows = _lines(out)
    names = ["capped_simplex_projection", "round_to_budget", "project_and_round"]
    assert [(c, n) for c, n, *_ in rows] == [(c, n) for c in "abc" for n in names]
    got = {(c, n): tuple(map(int, v)) for c, n, *v in rows}
    for (case, name), (aten, launch, views, syncs, h2d, kernel) in got.items():
        assert (syncs, h2d, kernel) == (2 if name == "project_and_round" else 1, 0, 1), (case, name)
        assert launch + views < aten  # the custom op's own entry is neither
    assert got["a", "capped_simplex_projection"] == (7, 2, 4, 1, 0, 1)
    assert [got[k][0] for k in (("a", "round_to_budget"), ("a", "project_and_round"),
                                ("b", "capped_simplex_projection"), ("c", "capped_simplex_projection"))] == [
        57, 20, 8, 34]
    # -v: the ops by name after each line (the custom op's entry included), summing to the aten column.
    detail = [ln for ln in out.splitlines() if ln.startswith("    ")]
    assert len(detail) == 9
    first = ast.literal_eval(detail[0].strip())  # op names and counts
    assert first["capped_simplex_projection.default"] == 1 and sum(first.values()) == 7
    assert oo.COUNTER is None and dispatch._override_impl == "auto" and dispatch.HAS_CUDA_KERNEL is True


def test_count_classifies_each_op(oo, capsys, monkeypatch):
    # A probe with known ops: a Python-number tensor (a host-to-device copy, no launch), a view, three computing ops,
    # three allocations (no launch), a scalar read and a nonzero (host syncs; nonzero computes too), a .tolist()
    # (a sync), and a call of the fake kernel (its own ops are not counted, nor anything while the counter is paused).
    base = torch.arange(6.0).reshape(2, 3) + 100
    args = (base, torch.full((2,), 400.0), None, torch.full((2, 3), 64.0), torch.full((2, 3), 300.0), 0)

    def probe():
        torch.tensor(2.0)
        base.view(-1)
        w = base + 1
        torch.empty(3), torch.empty_like(base), torch.empty_strided((2,), (1,))
        w.sum().item()
        base.tolist()
        if oo.COUNTER is not None:  # (the first call is not counted)
            oo.COUNTER.paused = True  # what the fake kernel does: not counted
            base.tolist(), base.sum().item()
            oo.COUNTER.paused = False
        torch.nonzero(w)
        dispatch._ext.forward(*args)

    monkeypatch.setattr(oo, "calls", lambda *a: {"probe": probe})
    monkeypatch.setattr(oo, "problem", lambda case, r: (case, r, None, None))
    oo.count(r=1)
    rows = _lines(capsys.readouterr().out)
    assert [(c, n) for c, n, *_ in rows] == [(c, "probe") for c in "abc"]
    for *_, aten, launch, views, syncs, h2d, kernel in rows:
        assert (int(aten), int(launch), int(views), int(syncs), int(h2d), int(kernel)) == (9, 3, 1, 3, 1, 1)


def test_fake_ext_checks_the_binding_contract(oo):
    ext = oo.FakeExt()
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 6, generator=g) * 10 + 20
    b, bi = torch.full((2,), 120.0), torch.full((2,), 120, dtype=torch.int64)
    lo, hi = torch.full((2, 6), 5.0), torch.full((2, 6), 40.0)
    x, t = ext.forward(y, b, None, lo, hi, 0)
    assert t is None and torch.equal(x, projection_forward(y, b, lo, hi))
    x1, t1 = ext.forward(y, b, bi, lo, hi, 1, 2)
    assert torch.equal(x1, x) and torch.equal(t1, round_largest_remainder(x, bi, lo.long(), hi.long()))
    xr = x + 0.3 * (x < 39)  # mode 2 rounds its own input
    x2, t2 = ext.forward(xr, b, bi, lo, hi, 2)
    assert x2 is None and torch.equal(t2, round_largest_remainder(xr, bi, lo.long(), hi.long()))
    assert ext.calls == [("forward", 0, 0), ("forward", 1, 2), ("forward", 2, 0)]
    # Rounding within the bounds: of the entries tied at remainder 0 the first below hi goes up (not the one at hi).
    t = ext.forward(torch.tensor([[3.0, 1.0, 1.0, 1.0]]), torch.tensor([7.0]), torch.tensor([7]),
                    torch.zeros(1, 4), torch.full((1, 4), 3.0), 2)[1]
    assert t.tolist() == [[3, 2, 1, 1]]
    # float64 rows take float64 budgets and bounds.
    yd = y.double()
    assert ext.forward(yd, b.double(), None, lo.double(), hi.double(), 0)[0].dtype == torch.float64
    oo.COUNTER = oo.Counter()
    try:
        bad = [(y.reshape(-1), b, None, lo, hi, 0), (y, b.double(), None, lo, hi, 0), (y, b[:1], None, lo, hi, 0),
               (y, b, None, lo[:, :1], hi, 0), (y, b, None, lo, hi[:, :1], 0), (y, b, None, lo.double(), hi, 0),
               (y, b, None, lo, hi.double(), 0), (yd, b, None, lo.double(), hi.double(), 0),
               (y, b, bi.int(), lo, hi, 1), (y, b, bi[:1], lo, hi, 2)]
        for a in bad:
            with pytest.raises(AssertionError):
                ext.forward(*a)
            assert oo.COUNTER.paused is False  # the counter resumes whatever the fake did
        with pytest.raises(AssertionError):
            ext.backward(x, lo, hi, y, 0)
    finally:
        oo.COUNTER = None
    canned = oo.FakeExt(canned={0: "p", 1: "pr", 2: "r"})
    assert [canned.forward(y, b, bi, lo, hi, m) for m in (0, 1, 2)] == ["p", "pr", "r"]


def test_problem_calls_and_install(oo, monkeypatch):
    y, b, lo, hi = oo.problem("a", r=3)
    assert torch.equal(y, torch.randn(3, 200, generator=torch.Generator().manual_seed(0)) * 80 + 66)
    assert (b, lo, hi) == (13200, 64, 400)
    y, b, lo, hi = oo.problem("b", r=3)
    assert torch.equal(b, torch.full((3,), 13200)) and (lo, hi) == (64, 400)
    y, b, lo, hi = oo.problem("c", r=3, k=50, seed=2)
    assert y.shape == lo.shape == hi.shape == (3, 50) and b.shape == (3,)
    assert not lo.is_floating_point() and not b.is_floating_point()
    assert 40 <= lo.min() and lo.max() < 80 and 200 <= (hi - lo).min() and (hi - lo).max() < 400
    assert torch.equal(b, (lo.sum(-1) + hi.sum(-1)) // 2)
    assert oo.floatify(3) == 3.0 and type(oo.floatify(3)) is float
    assert oo.floatify(b).dtype == torch.float32 and torch.equal(oo.floatify(b), b.float())
    # calls: the projection with floats, the rounding ops with the integers, the rounding of the projected x.
    seen = []
    monkeypatch.setattr(oo, "capped_simplex_projection", lambda *a: seen.append(("p", a)) or "x")
    monkeypatch.setattr(oo, "round_to_budget", lambda *a: seen.append(("r", a)))
    monkeypatch.setattr(oo, "project_and_round", lambda *a: seen.append(("pr", a)))
    fns = oo.calls(y, b, lo, hi)
    assert list(fns) == ["capped_simplex_projection", "round_to_budget", "project_and_round"]
    for fn in fns.values():
        fn()
    (_, p0), (_, p1), (_, r), (_, pr) = seen
    assert [w for w, _ in seen] == ["p", "p", "r", "pr"]
    for p in (p0, p1):
        assert p[0] is y and all(t.dtype == torch.float32 for t in p[1:])
        assert all(torch.equal(t, u.float()) for t, u in zip(p[1:], (b, lo, hi)))
    assert r[0] == "x" and r[1:] == (b, lo, hi) and pr == (y, b, lo, hi)
    # install: the ops' "cuda" implementations serve every device, with the given extension.
    ext = oo.FakeExt()
    monkeypatch.setattr(dispatch, "HAS_CUDA_KERNEL", False)
    monkeypatch.setattr(dispatch, "_override_impl", "reference")
    oo.install(ext)
    assert dispatch.HAS_CUDA_KERNEL is True and dispatch._ext is ext and dispatch._override_impl == "auto"
    assert all(op._backend_fns[None] is op._backend_fns["cuda"] for op in _OPS)


def test_count_refuses_no_rows(oo):
    with pytest.raises(ValueError, match="R must be >= 1, got 0"):
        oo.count(r=0)


def test_timeit_reports_the_best_run_per_call(oo, capsys, monkeypatch):
    # Three runs of n=2 calls per op and case: the fastest run, divided by the calls, in microseconds.
    class Clock:
        def __init__(self, spans):
            self.spans, self.i, self.start = spans, 0, True

        def __call__(self):
            self.start = not self.start
            if not self.start:
                return 0.0
            self.i += 1
            return self.spans[(self.i - 1) % 3]

    fake = type("T", (), {"perf_counter": Clock([3e-3, 1e-3, 2e-3]), "thread_time": Clock([4e-3, 6e-3, 5e-3])})
    monkeypatch.setattr(oo, "time", fake)
    made = []

    class Recorded(oo.FakeExt):
        def __init__(self, canned=None):
            super().__init__(canned)
            made.append(self)

    monkeypatch.setattr(oo, "FakeExt", Recorded)
    oo.timeit(n=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9
    for ln in lines:
        assert re.fullmatch(r"[abc] \w+ +wall +500\.0 us/call  thread-cpu +2000\.0 us/call", ln), ln
    # The canned answers are the kernel's: the projection, and its rounding, of each case (the ops' reference path).
    canned = [e.canned for e in made if e.canned is not None]
    assert len(canned) == 3
    monkeypatch.setattr(dispatch, "_override_impl", "reference")
    for case, c in zip("abc", canned):
        y, b, lo, hi = oo.problem(case)
        x, t = project_and_round(y, b, lo, hi)
        torch.testing.assert_close(c[0][0], x, rtol=0, atol=1e-4)
        assert c[0][1] is None and c[1][0] is c[0][0] and c[2][0] is None
        assert torch.equal(c[1][1], t) and c[2][1] is c[1][1]


def test_cli_dispatches_and_refuses_other_commands(oo, monkeypatch, capsys):
    for argv in (["op_overhead.py"], ["op_overhead.py", "counts"]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(SCRIPT), run_name="__main__")
        assert e.value.code == oo.__doc__
    monkeypatch.setattr(sys, "argv", ["op_overhead.py", "count"])
    monkeypatch.setenv("R", "2")
    runpy.run_path(str(SCRIPT), run_name="__main__")
    rows = _lines(capsys.readouterr().out)
    assert len(rows) == 9 and rows[0][0] == "a"
