"""scripts/newton_iterations.py replays the kernel's iteration: it converges, and agrees with the reference's tau."""

from __future__ import annotations

import numpy as np
import pytest


def test_evaluations_are_few_and_bounded():
    from scripts.newton_iterations import evaluations, main

    rng = np.random.default_rng(1)
    y = (rng.standard_normal((500, 200)) * 100 + 66).astype(np.float32)
    n = evaluations(y, 13200.0, 64.0, 400.0)
    assert n.min() >= 1 and n.max() < 30  # converged (the cap is 200), in a handful of evaluations
    out = main(["--rows", "200"])
    assert 1 <= out["p50"] <= out["p100"] < 30
    with pytest.raises(ValueError, match="infeasible"):
        evaluations(y, 200 * 401.0, 64.0, 400.0)
    with pytest.raises(ValueError, match="float32"):
        evaluations(y.astype(np.float64), 13200.0, 64.0, 400.0)


def _kernel_count(row, budget, lo, hi, max_iters=200):
    # One row through projection.cuh's newton_start / newton_step / newton_tighten, transcribed statement by statement
    # in float32 scalars (the kernel's it is the evaluations so far, less one).
    f32 = np.float32
    eps, b, lo, hi, k = f32(np.finfo(f32).eps), f32(budget), f32(lo), f32(hi), row.size
    tl, th = (row - hi).min(), (row - lo).max()
    tol = f32(8) * eps * (abs(b) + f32(2) * (f32(k) * abs(lo)))
    tau = min(max((row.sum(dtype=f32) - b) / f32(k), tl), th)
    it = 0
    while True:
        z = row - tau
        x = np.clip(z, lo, hi)
        s, nf = x.sum(dtype=f32), int((x == z).sum())
        r = s - b
        if abs(r) <= tol or it >= max_iters:
            if not (lo < 0 and abs(r) <= tol):
                return it + 1
            t = f32(8) * eps * (abs(b) + f32(2) * abs(np.minimum(x, f32(0)).sum(dtype=f32)))
            if abs(r) <= t or it >= max_iters:
                return it + 1
            tol = t
        if r > 0:
            tl = tau
        else:
            th = tau
        if th - tl <= f32(2) * eps * max(abs(tl), abs(th)):
            return it + 1
        tn = tau + r / f32(max(nf, 1))
        tau = tn if nf > 0 and tl < tn < th else f32(0.5) * (tl + th)
        it += 1


def test_evaluations_count_each_stopping_rule_by_hand():
    from scripts.newton_iterations import evaluations

    f = np.float32
    # The all-free start overshoots one clamped entry: one Newton step (nf = 1) lands on the root.
    assert evaluations(np.array([[10, 0, 0, 0]], f), 4.0, 0.0, 100.0).tolist() == [2]
    # nf = 0 at the start: three bisections, then a Newton step inside the bracket; 5 evaluations.
    assert evaluations(np.array([[10, 0]], f), 1.5, 0.0, 1.0).tolist() == [5]
    # The tolerance 8·eps·(|B| + 2·K·|lo|) = 11.44 at B = 4e6 + 4, K = 4, lo = 1e6: a first residual of 9.5 is
    # accepted, one of 50 is not (one Newton step more).
    big = 1e6
    y = np.array([[big + 3.5] * 3 + [big - 10.5], [big + 17] * 3 + [big - 51]], f)
    assert evaluations(y, 4 * big + 4, big, 2 * big).tolist() == [1, 2]
    # README's negative-lo row: tolerance 15 accepts the first residual (-4.875), newton_tighten does not; 3 in all.
    assert evaluations(np.array([[4, 3, 2, 1, 0, -1, -2, -3]], f), 1.0, -1e6, 1.0).tolist() == [3]
    # newton_tighten's bound 8·eps·(|B| + 2·|sum min(x, 0)|) is exactly 0.125 at B = 2^17 with no negative x: hi
    # clipping y1 by 0.125 leaves a residual of -0.125, which passes it; by 0.25, it does not (one Newton step more).
    y = np.array([[100000.125, 31071.875], [100000.25, 31071.75]], f)
    assert evaluations(y, 131072.0, -1e6, 1e5).tolist() == [1, 2]
    # The same rows with lo = 0: the first tolerance is that same 0.125, and a residual equal to it is accepted.
    assert evaluations(y, 131072.0, 0.0, 1e5).tolist() == [1, 2]
    # The kernel stops on the evaluation with it >= kMaxIters: max_iters + 1 at most.
    assert evaluations(np.array([[10, 0]], f), 1.5, 0.0, 1.0, max_iters=0).tolist() == [1]
    assert evaluations(np.array([[10, 0]], f), 1.5, 0.0, 1.0, max_iters=2).tolist() == [3]


def test_open_entries_by_hand():
    from scripts.newton_iterations import evaluations

    f = np.float32
    # [10, 0, 0, 0], B = 4, 0..100: the first bracket (-100, 10) fixes no clamp; tau = 1.5 gives s = 8.5 > B, so
    # tl = 1.5 and every 0 is at lo for any tau >= 1.5: one entry is open at the second (last) evaluation.
    n, opened = evaluations(np.array([[10, 0, 0, 0], [10, 0, 0, 0]], f), 4.0, 0.0, 100.0, return_open=True)
    assert n.tolist() == [2, 2] and opened.tolist() == [[4, 1], [4, 1]]
    # th closes entries at hi: [1, 1, 9] at B = 5, 0..2: the start tau = 2 gives s = 2 < 5 with no free entry, so
    # th = 2 (9 - 2 >= 2 fixes 9 at hi) and a bisection to 0.5: s = 3, th = 0.5; Newton to -0.5 hits B. The 1s stay
    # open to the end. A row that stops first ([2, 2, 2]: the start is the root) has 0 open entries afterwards.
    n, opened = evaluations(np.array([[1, 1, 9], [2, 2, 2]], f), 5.0, 0.0, 2.0, return_open=True)
    assert n.tolist() == [3, 1] and opened.tolist() == [[3, 2, 2], [3, 0, 0]]
    assert evaluations(np.array([[1, 1, 9]], f), 5.0, 0.0, 2.0).tolist() == [3]  # the plain call is unchanged


def test_evaluations_match_the_kernels_iteration_row_by_row():
    from scripts.newton_iterations import evaluations

    rng = np.random.default_rng(7)
    cases = [  # (y, budget, lo, hi): random rows at several budgets, degenerate budgets, a negative lo
        ((rng.standard_normal((40, 12)) * 100 + 66).astype(np.float32), 12 * 150.0, 64.0, 400.0),
        ((rng.standard_normal((40, 12)) * 100 + 66).astype(np.float32), 12 * 64.0, 64.0, 400.0),
        ((rng.standard_normal((40, 12)) * 100 + 66).astype(np.float32), 12 * 400.0, 64.0, 400.0),
        ((rng.standard_normal((40, 12)) * 3).astype(np.float32), 2.0, -1e4, 1.0),
        ((rng.standard_normal((40, 12)) * 3).astype(np.float32), -5.0, -1.0, 1.0),
        # tau near 1e7 (ulp 1): s jumps by nf per ulp, so rows stop on the collapsed bracket
        (np.float32(1e7) + rng.integers(0, 9, (20, 4)).astype(np.float32), 1.5, 0.0, 10.0),
        # lo < 0: a tightened tolerance stays that row's own (found by a random search over small rows)
        (np.array([[10.435880661010742, -22.170053482055664]], np.float32), 0.274588894427807, -1.0, 1.128038749450815),
        # nf = 0 over a 1e9-wide bracket: ~30 bisections
        (np.array([[1e9, 0]], np.float32), 1.5, 0.0, 1.0),
    ]
    for y, budget, lo, hi in cases:
        want = [_kernel_count(row, budget, lo, hi) for row in y]
        assert evaluations(y, budget, lo, hi).tolist() == want, (budget, lo, hi)
    assert want[0] > 21  # the 1e9 row: past a cap of 20


def test_main_prints_the_readme_distribution_and_checks_its_flags(capsys):
    from scripts.newton_iterations import evaluations, main

    # README ("CUDA projection kernel"): a median of 6 evaluations, mean 6.13 on 20,000 rows.
    out = main([])
    assert {k: out[k] for k in ("mean", "p50", "p90", "p99", "p100")} == {"mean": 6.1287, "p50": 6.0, "p90": 7.0,
                                                                          "p99": 7.0, "p100": 8.0}
    assert out["slots_all"] == pytest.approx(6.1287 * 7)  # 7 slots of 32 for K=200, every evaluation
    assert out["slots_open"] == pytest.approx(16.01265)  # the README's compaction estimate (twenty-first session)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == ("evaluations of s(tau) per row over 20000 rows (K=200, B=13200, 64..400): "
                          "mean 6.1287, p50 6, p90 7, p99 7, p100 8")
    assert printed[1].startswith("32-entry slots visited per row: 42.9009 visiting all K entries each evaluation")
    assert "16.0127 visiting only the open ones" in printed[1] and printed[1].endswith(": 200.0, 101.6, 45.6, 21.7, "
                                                                                      "12.9, 10.4, 9.0, 6.6")
    out = main(["--rows", "300", "--k", "9", "--budget", "-20", "--lo", "-3.5", "--hi", "2", "--seed", "4"])
    y = (np.random.default_rng(4).standard_normal((300, 9)) * 100 + 66).astype(np.float32)
    n, opened = evaluations(y, -20.0, -3.5, 2.0, return_open=True)
    assert out == {"mean": n.mean(), **{f"p{q}": np.percentile(n, q) for q in (50, 90, 99, 100)},
                   "slots_all": n.mean(), "slots_open": (opened > 0).sum(1).mean()}  # K=9: one slot
    assert "slots" not in str(main(["--rows", "2", "--k", "1025", "--budget", "70000"]))  # the block path: no slots
    assert "(K=9, B=-20, -3.5..2)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="got 0, 200"):
        main(["--rows", "0"])
    with pytest.raises(ValueError, match="got 5, 0"):
        main(["--rows", "5", "--k", "0"])
    with pytest.raises(ValueError, match="lo=2.0, hi=1.0"):
        main(["--rows", "5", "--lo", "2", "--hi", "1"])


def test_evaluations_reject_bad_arrays_and_values_by_name():
    from scripts.newton_iterations import evaluations

    y = np.zeros((3, 4), np.float32)
    for bad in (y.astype(np.float16), y.astype(np.int32), y[0], np.zeros((3, 0), np.float32)):
        with pytest.raises(ValueError, match="2-D float32"):
            evaluations(bad, 0.0, -1.0, 1.0)
    for budget, lo, hi in ((float("nan"), 0.0, 1.0), (1.0, 0.0, float("inf")), (1.0, -float("inf"), 1.0)):
        with pytest.raises(ValueError, match=f"budget={budget}, lo={lo}, hi={hi}"):
            evaluations(y, budget, lo, hi)
    with pytest.raises(ValueError, match="finite"):
        evaluations(np.full((1, 4), np.nan, np.float32), 0.0, -1.0, 1.0)
    for budget in (-4.0 - 1e-3, 4.0 + 1e-3):
        with pytest.raises(ValueError, match=f"infeasible: K=4, budget={budget}"):
            evaluations(y, budget, -1.0, 1.0)
    assert evaluations(y, -4.0, -1.0, 1.0).tolist() == evaluations(y, 4.0, -1.0, 1.0).tolist() == [1, 1, 1]


def test_other_first_taus_are_measured_not_adopted():
    """--compare-starts: where every entry ends inside its bounds the all-free start is the root (one evaluation);
    the chord start is not, and needs a Newton step and the confirming evaluation. Unknown starts are refused."""
    from scripts.newton_iterations import compare_starts, evaluations, main

    rng = np.random.default_rng(3)
    y = rng.random((50, 200), dtype=np.float32)  # x = y - tau lands in 64..400 for every entry at B = 66K
    assert (evaluations(y, 13200.0, 64.0, 400.0, start="free") == 1).all()
    assert (evaluations(y, 13200.0, 64.0, 400.0, start="chord") == 2).all()
    # Every start converges on the benchmark's rows, within the usual handful of evaluations.
    yb = (rng.standard_normal((300, 200)) * 100 + 66).astype(np.float32)
    for st in ("free", "chord", "mid"):
        n = evaluations(yb, 13200.0, 64.0, 400.0, start=st)
        assert n.min() >= 1 and n.max() < 30, st
    table = compare_starts(rows=100, k=64, seed=0)
    assert len(table) == 8 and all(set(row) == {"free", "chord", "mid"} for row in table.values())
    assert table["U(0,1), B=66K, 64..400"] == {"free": 1.0, "chord": 2.0, "mid": 2.0}
    out = main(["--compare-starts", "--rows", "50", "--k", "32"])
    assert out["U(0,1), B=66K, 64..400 | free"] == 1.0
    with pytest.raises(ValueError, match="start must be one of"):
        evaluations(y, 13200.0, 64.0, 400.0, start="median")
