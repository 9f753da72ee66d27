"""scripts/bench_projection.py, the issue-4 table in README.md: its baselines return the projection, its timers take
the median of per-call times, each figure lands in its own column, and bad flags are refused by name. The GPU-only
pieces (CUDA events and graphs) run here with fakes of ``torch.cuda``; the kernel columns with a fake extension."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from arr_coc.kernels import dispatch
from arr_coc.kernels.reference import projection_forward


@pytest.fixture
def bp(monkeypatch):
    import scripts.bench_projection as bp

    monkeypatch.setattr(dispatch, "_override_impl", dispatch._override_impl)  # the GPU path forces "cuda"
    return bp


def _problem(r, k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(r, k, generator=g, dtype=torch.float64) * 100 + 66).to(dtype)


@pytest.mark.parametrize("name", ["sort_tau", "bisect_fixed"])
def test_baselines_return_the_projection(bp, name):
    # Per-row budgets from sum(lo) (every entry at lo) through a few inside to sum(hi) (every entry at hi), ties in y,
    # a row with no bound active and K = 1: the same x as the reference, in float64 to its precision.
    fn = getattr(bp, name)
    k, lo, hi = 12, 64.0, 400.0
    y = _problem(6, k, torch.float64, 0)
    y[1, 3:7] = y[1, 2]  # ties: repeated breakpoints
    y[5] = torch.linspace(100.0, 300.0, k, dtype=torch.float64)  # all free at its budget
    b = torch.tensor([k * lo, k * hi, 1000.0, 2000.0, 4500.0, float(y[5].sum())], dtype=torch.float64)
    lo_t, hi_t = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    want = projection_forward(y, b, lo_t, hi_t)
    bounds = (lo, hi) if name == "sort_tau" else (lo_t, hi_t)
    got = fn(y, b, *bounds)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    torch.testing.assert_close(got.sum(-1), b, rtol=0, atol=1e-9)
    torch.testing.assert_close(got[5], y[5], rtol=0, atol=1e-9)
    # K = 1: x is the budget.
    y1 = torch.tensor([[7.0], [500.0]], dtype=torch.float64)
    b1 = torch.tensor([100.0, 300.0], dtype=torch.float64)
    torch.testing.assert_close(fn(y1, b1, *bounds), b1.unsqueeze(-1), rtol=0, atol=1e-9)
    # The benchmark's own data in float32 (R=3, K=200, B=13,200): within float32 resolution of the reference.
    y = _problem(3, 200, torch.float32, 1)
    b = torch.full((3,), 13_200.0)
    want = projection_forward(y, b, torch.tensor(64.0), torch.tensor(400.0))
    bounds = (64.0, 400.0) if name == "sort_tau" else (torch.tensor(64.0), torch.tensor(400.0))
    assert float((fn(y, b, *bounds) - want).abs().max()) < 1e-3


def test_fmt_units():
    from scripts.bench_projection import _fmt

    assert _fmt(None) == "n/a"
    assert _fmt(1.25e-6) == "1.2 µs" and _fmt(999.94e-6) == "999.9 µs"
    assert _fmt(1e-3) == "1.00 ms" and _fmt(0.0123) == "12.30 ms"


def test_time_cpu_is_the_median_of_the_timed_calls(bp, monkeypatch):
    # Two untimed warm-up calls, then three timed ones of 1, 5 and 2 s: the median (2), not the mean, min or max.
    clock = iter([0.0, 1.0, 1.0, 6.0, 6.0, 8.0])
    monkeypatch.setattr(bp.time, "perf_counter", lambda: next(clock))
    n = []
    assert bp.time_cpu(lambda: n.append(1), 3) == 2.0
    assert len(n) == 5


class _Event:
    """A CUDA event on a fake timeline: ``elapsed_time`` gives the next scripted milliseconds."""

    log: list = []
    ms: list = []

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.at = None

    def record(self):
        self.at = len(self.log)

    def synchronize(self):
        self.log.append("sync")

    def elapsed_time(self, end):
        assert self.at is not None and end.at is not None and self.log[-1] == "sync"
        return self.ms.pop(0), end.at - self.at


def test_time_cuda_is_the_median_per_call_time(bp, monkeypatch):
    monkeypatch.setattr(_Event, "log", [])
    monkeypatch.setattr(_Event, "ms", [8.0, 20.0, 12.0])  # 3 repetitions of inner=4 calls: 2, 5 and 3 ms per call
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: _Event.log.append("device sync"))
    spans = []

    class Elapsed(_Event):
        def elapsed_time(self, end):
            ms, span = super().elapsed_time(end)
            spans.append(span)
            return ms

    monkeypatch.setattr(torch.cuda, "Event", Elapsed)
    t = bp.time_cuda(lambda: _Event.log.append("call"), reps=3, inner=4)
    assert t == pytest.approx(3e-3)
    log = _Event.log
    assert log[:4] == ["call"] * 3 + ["device sync"]  # three warm-up calls, synchronised before timing
    assert log[4:] == (["call"] * 4 + ["sync"]) * 3
    assert spans == [4, 4, 4]  # each event pair brackets the inner calls


def test_time_cuda_graph_divides_one_replay_by_the_captured_calls(bp, monkeypatch):
    events = []

    class Stream:
        def wait_stream(self, other):
            events.append("wait")

    class Graph:
        def replay(self):
            events.append("replay")

    class Ctx:
        def __init__(self, what):
            self.what = what

        def __enter__(self):
            events.append(self.what)

        def __exit__(self, *exc):
            events.append("/" + self.what)

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: Ctx("side"))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: Ctx("capture"))
    timed = []

    def fake_time_cuda(fn, reps, inner):
        timed.append((reps, inner))
        fn()
        return 0.05

    monkeypatch.setattr(bp, "time_cuda", fake_time_cuda)
    t = bp.time_cuda_graph(lambda: events.append("call"), reps=7, inner=10)
    assert t == pytest.approx(0.005)  # one replay of 10 captured calls took 0.05 s
    assert timed == [(7, 1)]
    assert events == (["wait", "side"] + ["call"] * 3 + ["/side", "wait", "capture"] + ["call"] * 10
                      + ["/capture", "replay"])


class _FakeExt:
    """The extension's forward/backward on CPU: the reference's x, off by 0.5 in one entry (a visible error)."""

    def __init__(self):
        self.calls = []

    def forward(self, y, b, bi, lo, hi, mode, path):
        assert y.shape == lo.shape == hi.shape and b.shape == y.shape[:1] and path == 0
        assert (bi is None) == (mode == 0) and mode in (0, 1)
        if bi is not None:
            assert bi.dtype == torch.int64 and torch.equal(bi, b.long())
        self.calls.append(f"kern_fwd_{mode}")
        x = projection_forward(y, b, lo, hi)
        x[0, 0] += 0.5
        return [x, None if mode == 0 else x.round().long()]

    def backward(self, x, lo, hi, grad, path):
        self.calls.append("kern_bwd")
        return [grad, grad.sum(-1)]


def _spied(bp, monkeypatch, ext=None):
    """Spy on every timed function; the fake timer calls its argument once and returns that function's own figure."""
    seen = []
    labels = {"capped_simplex_projection": "op_fwd", "projection_forward": "ref_eager", "sort_tau": "sort_tau",
              "projection_backward": "ref_bwd"}
    for fn_name, label in labels.items():
        real = getattr(bp, fn_name)

        def spy(*a, _real=real, _label=label):
            seen.append((_label, a))
            return _real(*a)

        monkeypatch.setattr(bp, fn_name, spy)

    def fake_compile(fn, dynamic):
        assert fn is bp.bisect_fixed and dynamic is False
        seen.append(("compile", ()))

        def compiled(*a):
            seen.append(("compile_ref", a))
            return fn(*a)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    figures = {"floor": 2e-6, "kern_fwd": 5e-6, "kern_fwd_round": 7e-6, "op_fwd": 3e-3, "ref_eager": 4e-3,
               "compile_ref": 1.5e-4, "sort_tau": 8e-4, "ref_bwd": 2.5e-4, "kern_bwd": 3e-6}
    timed = []

    def fake_time_cpu(fn, reps):
        n_seen, n_ext = len(seen), len(ext.calls) if ext else 0
        res = fn()
        new = [lab for lab, _ in seen[n_seen:]] + (ext.calls[n_ext:] if ext else [])
        if not new:
            label = "floor"
            assert isinstance(res, torch.Tensor)
            timed.append(("floor", reps, res.clone()))
        else:
            (label,) = new
            label = {"kern_fwd_0": "kern_fwd", "kern_fwd_1": "kern_fwd_round"}.get(label, label)
            timed.append((label, reps, None))
        return figures[label]

    monkeypatch.setattr(bp, "time_cpu", fake_time_cpu)
    return seen, timed, figures


def _table(out: str) -> dict[int, dict[str, str]]:
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert lines[1] == "|" + "---:|" * len(head)
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == len(head)
        rows[int(cells[0].replace(",", ""))] = dict(zip(head, cells))
    return rows


def test_cpu_run_puts_each_figure_in_its_column(bp, monkeypatch, capsys, tmp_path):
    sort_tau = bp.sort_tau
    seen, timed, fig = _spied(bp, monkeypatch)
    out_json = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--rows", "1", "3", "--k", "20", "--budget", "1400", "--lo", "10", "--hi", "300",
            "--reps", "2", "--max-ref-rows", "1", "--json", str(out_json)]
    res = bp.main(argv)
    assert [r["R"] for r in res] == [1, 3] and all(r["K"] == 20 for r in res)
    # Every timer ran at --reps; the floor copies the benchmark's y (100·N(0,1) + 66, seeded by R) and nothing else.
    assert {reps for _, reps, _ in timed} == {2}
    floors = [t for lab, _, t in timed if lab == "floor"]
    assert len(floors) == 2
    for row, t in zip(res, floors):
        y = torch.randn(row["R"], 20, generator=torch.Generator().manual_seed(row["R"])) * 100 + 66
        assert torch.equal(t, y)
        # The sanity column: the real sort-based x against the reference (R=3 has a visible float32 error).
        b = torch.full((row["R"],), 1400.0)
        want = float((sort_tau(y, b, 10.0, 300.0) - projection_forward(y, b, torch.tensor(10.0),
                                                                       torch.tensor(300.0))).abs().max())
        assert row["sort_tau_err"] == want < 1e-3
    assert res[1]["sort_tau_err"] > 0
    for label, args in seen:
        if label in ("op_fwd", "sort_tau"):  # Python-number bounds
            assert torch.equal(args[1], torch.full_like(args[1], 1400.0)) and args[2:] == (10.0, 300.0)
        if label in ("ref_eager", "compile_ref"):
            assert torch.equal(args[1], torch.full_like(args[1], 1400.0))
            assert (float(args[2]), float(args[3])) == (10.0, 300.0)
    # R=1 is not above --max-ref-rows: every torch baseline timed; R=3 is: the slow ones skipped, op and bwd kept.
    r1, r3 = res
    for key in ("floor", "op_fwd", "ref_eager", "compile_ref", "sort_tau", "ref_bwd"):
        assert r1[key] == fig[key], key
    for key in ("floor", "op_fwd", "ref_bwd"):
        assert r3[key] == fig[key], key
    assert r3["ref_eager"] is None and r3["compile_ref"] is None and r3["sort_tau"] is None
    for r in res:
        assert r["kern_fwd"] is r["kern_fwd_round"] is r["kern_eager"] is r["kern_bwd"] is r["ratio"] is None
        assert "max_err_vs_ref" not in r
    assert [lab for lab, _ in seen].count("compile") == 1
    assert [lab for lab, _ in seen].count("compile_ref") == 2  # compiled once outside the timing, then timed
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "K=20 fp32 B=1400 lo=10 hi=300" in header
    assert header.endswith("cmd: python scripts/bench_projection.py " + " ".join(argv))
    table = _table(out)
    assert table[1] == {"R": "1", "floor": "2.0 µs", "kern fwd": "n/a", "kern fwd+rnd": "n/a", "kern eager": "n/a",
                        "op fwd": "3.00 ms", "ref eager": "4.00 ms", "compile ref": "150.0 µs", "sort tau": "800.0 µs",
                        "ratio": "n/a", "kern bwd": "n/a", "ref bwd": "250.0 µs"}
    assert [table[3][c] for c in ("ref eager", "compile ref", "sort tau", "op fwd")] == ["n/a"] * 3 + ["3.00 ms"]
    assert "kernel: n/a on this device" in out
    errs = out.split("max |sort tau - reference|: ")[1].splitlines()[0]
    assert errs == ", ".join(f"{r['sort_tau_err']:.2e}" for r in res)
    saved = json.loads(out_json.read_text())
    assert saved["rows"] == res
    assert saved["meta"]["argv"] == argv and saved["meta"]["torch"] == torch.__version__


def test_kernel_columns_with_a_fake_extension(bp, monkeypatch, capsys):
    # The kernel columns (GPU only) with a fake extension on CPU: fwd (mode 0), fused fwd+round (mode 1, int64
    # budgets), eager fwd and bwd in their columns, ratio = kern fwd / floor, and the kernel's error against the
    # reference (0.5 by construction).
    ext = _FakeExt()
    monkeypatch.setattr(bp, "load_ext", lambda gpu: None if gpu else ext)
    seen, timed, fig = _spied(bp, monkeypatch, ext)
    res = bp.main(["--device", "cpu", "--rows", "2", "--k", "8", "--budget", "800", "--lo", "10", "--hi", "300",
                   "--reps", "1", "--no-compile"])
    (row,) = res
    assert ("compile", ()) not in seen and row["compile_ref"] is None
    assert row["kern_fwd"] == fig["kern_fwd"] and row["kern_fwd_round"] == fig["kern_fwd_round"]
    assert row["kern_eager"] == fig["kern_fwd"] and row["kern_bwd"] == fig["kern_bwd"]
    assert row["ratio"] == pytest.approx(2.5)
    assert row["max_err_vs_ref"] == pytest.approx(0.5)
    out = capsys.readouterr().out
    cells = _table(out)[2]
    assert (cells["kern fwd"], cells["kern fwd+rnd"], cells["kern eager"], cells["kern bwd"], cells["ratio"]) == (
        "5.0 µs", "7.0 µs", "5.0 µs", "3.0 µs", "2.50×")
    assert "max |kernel - reference| (fp32): R=2: 5.00e-01" in out


def test_defaults_follow_the_device(bp, monkeypatch, capsys, tmp_path):
    # The docstring's row sets are the defaults; on a machine without CUDA "auto" takes the CPU set and 5 reps.
    assert "R in {" + ", ".join(map(str, bp.GPU_ROWS)) + "}" in bp.__doc__
    assert "--rows " + " ".join(map(str, bp.CPU_ROWS)) + " " in bp.__doc__
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bp, "CPU_ROWS", (2, 3))
    _, timed, _ = _spied(bp, monkeypatch)
    flags = ["--k", "4", "--budget", "400", "--no-compile", "--json", str(tmp_path / "b.json")]
    monkeypatch.setattr(sys, "argv", ["scripts/bench_projection.py", *flags])
    res = bp.main()
    assert [r["R"] for r in res] == [2, 3]
    assert {reps for _, reps, _ in timed} == {5}
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("cmd: python scripts/bench_projection.py " + " ".join(flags))
    assert json.loads((tmp_path / "b.json").read_text())["meta"]["argv"] == flags  # the command line, not null
    # An empty argv is the defaults (K=200, B=13,200), not the process's command line.
    res = bp.main([])
    assert res[0]["K"] == 200
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("B=13200 lo=64 hi=400  cmd: python scripts/bench_projection.py ")


@pytest.mark.parametrize("lo, hi, budget", [(10, 10, 40), (10, 30, 40), (10, 30, 120)])
def test_budgets_at_the_bounds_run(bp, lo, hi, budget):
    # lo = hi, and budgets of K·lo and K·hi: feasible, timed, and every baseline gives the reference's x.
    (row,) = bp.main(["--device", "cpu", "--rows", "2", "--k", "4", "--lo", str(lo), "--hi", str(hi), "--budget",
                      str(budget), "--reps", "1", "--no-compile"])
    assert row["sort_tau_err"] == 0.0
    assert all(row[k] > 0 for k in ("floor", "op_fwd", "ref_eager", "sort_tau", "ref_bwd"))


@pytest.mark.parametrize("flags, match", [
    (["--reps", "0"], "--reps must be >= 1, got 0"),
    (["--rows", "4", "0"], r"--rows and --k must be >= 1, got --rows \[4, 0\] --k 200"),
    (["--k", "0"], "--k 0"),
    (["--max-ref-rows", "-1"], "--max-ref-rows must be >= 0, got -1"),
    (["--lo", "500"], "lo <= hi, got 13200.0, 500.0, 400.0"),
    (["--hi", "nan"], "must be finite"),
    (["--budget", "100"], "infeasible --budget 100: need K.lo = 12800 <= budget <= K.hi = 80000"),
    (["--budget", "80001"], "infeasible --budget 80001"),
])
def test_bad_flags_are_refused_by_name(bp, flags, match):
    with pytest.raises(ValueError, match=match):
        bp.main(["--device", "cpu", "--no-compile", *flags])


def test_max_ref_rows_zero_skips_every_slow_baseline(bp, monkeypatch):
    _spied(bp, monkeypatch)
    (row,) = bp.main(["--device", "cpu", "--rows", "1", "--k", "4", "--budget", "400", "--reps", "1", "--no-compile",
                      "--max-ref-rows", "0"])
    assert row["ref_eager"] is row["sort_tau"] is None and row["op_fwd"] is not None


def test_device_cuda_without_cuda_is_refused(bp, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda, but torch.cuda.is_available"):
        bp.main(["--device", "cuda", "--rows", "1"])
    assert dispatch._override_impl != "cuda"  # refused before the kernel is forced


def test_load_ext_forces_the_kernel_on_a_gpu_only(bp, monkeypatch):
    monkeypatch.setattr(dispatch, "_override_impl", None)
    monkeypatch.setattr(dispatch, "load_kernel", lambda: "ext")
    assert bp.load_ext(False) is None and dispatch._override_impl is None
    assert bp.load_ext(True) == "ext" and dispatch._override_impl == "cuda"
