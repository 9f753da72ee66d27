"""``scripts/bench_bandits.py`` without its peers: the flags, the data streams, the adapters (MABWiser's and OBP's over
small stand-ins for the libraries, which are an optional extra), the reward simulation, the timing and the tables, so
that each number the benchmark prints is the right one."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "bench_bandits.py")


@pytest.fixture
def bb():
    with warnings.catch_warnings():  # the script silences warnings for its own run: keep that out of the tests
        import scripts.bench_bandits as mod
    return mod


# ---------------------------------------------------------------------------------------------------- stand-ins
class FakeMAB:
    """MABWiser's ``MAB``: records its calls; ``predict`` answers arm ``3 i mod n`` for row ``i`` (a scalar for one
    row, as MABWiser does)."""

    def __init__(self, arms, learning_policy, seed=None):
        self.arms, self.lp, self.seed, self.calls = arms, learning_policy, seed, []

    def fit(self, decisions, rewards, contexts=None):
        self.calls.append(("fit", np.array(decisions), np.array(rewards), contexts))

    def partial_fit(self, decisions, rewards, contexts=None):
        self.calls.append(("partial_fit", np.array(decisions), np.array(rewards), contexts))

    def predict(self, contexts=None):
        self.calls.append(("predict", contexts))
        out = [(3 * i) % len(self.arms) for i in range(len(contexts))]
        return out[0] if len(out) == 1 else out


class FakeLearningPolicy:
    LinUCB = staticmethod(lambda **kw: ("LinUCB", kw))
    LinTS = staticmethod(lambda **kw: ("LinTS", kw))
    EpsilonGreedy = staticmethod(lambda **kw: ("EpsilonGreedy", kw))
    ThompsonSampling = staticmethod(lambda **kw: ("ThompsonSampling", kw))


class _FakeObpPolicy:
    """OBP's policies: record their settings and calls; ``select_action`` answers arm ``call index mod n_actions``."""

    def __init__(self, **kw):
        self.kw, self.selects, self.updates = kw, [], []

    def select_action(self, *context):
        self.selects.append(context)
        return np.array([(len(self.selects) - 1) % self.kw["n_actions"]])

    def update_params(self, *args):
        self.updates.append(args)


FAKE_OBP = {n: type(n, (_FakeObpPolicy,), {}) for n in ("BernoulliTS", "EpsilonGreedy", "LinTS", "LinUCB")}


class FakeSynthetic:
    made: list = []

    def __init__(self, **kw):
        self.kw = kw
        FakeSynthetic.made.append(self)

    def obtain_batch_bandit_feedback(self, n_rounds):
        self.n_rounds = n_rounds
        rng = np.random.default_rng(7)
        return {"context": rng.standard_normal((n_rounds, 10)).astype(np.float32),
                "expected_reward": rng.random((n_rounds, 10)).astype(np.float32)}


def _logistic():  # stands for obp.dataset.logistic_reward_function
    pass


@pytest.fixture
def peers(monkeypatch):
    """Installs the stand-ins as ``mabwiser.mab``, ``obp.policy`` and ``obp.dataset``."""
    mab = types.ModuleType("mabwiser.mab")
    mab.MAB, mab.LearningPolicy = FakeMAB, FakeLearningPolicy
    policy = types.ModuleType("obp.policy")
    for n, cls in FAKE_OBP.items():
        setattr(policy, n, cls)
    dataset = types.ModuleType("obp.dataset")
    dataset.SyntheticBanditDataset, dataset.logistic_reward_function = FakeSynthetic, _logistic
    FakeSynthetic.made = []
    for name, mod in (("mabwiser", types.ModuleType("mabwiser")), ("mabwiser.mab", mab),
                      ("obp", types.ModuleType("obp")), ("obp.policy", policy), ("obp.dataset", dataset)):
        monkeypatch.setitem(sys.modules, name, mod)


# ---------------------------------------------------------------------------------------------------- flags
def test_flags_defaults(bb):
    a = bb._parse([])
    assert (a.quick, a.seeds, a.rows, a.batch, a.threads, a.device, a.out) == (False, 3, 6000, 32, 1, "cpu",
                                                                               "results/bandits")
    a = bb._parse(["--quick", "--seeds", "2", "--rows", "1", "--batch", "1", "--threads", "4", "--device", "cuda"])
    assert (a.quick, a.seeds, a.rows, a.batch, a.threads, a.device) == (True, 2, 1, 1, 4, "cuda")


@pytest.mark.parametrize("flag, value", [("--seeds", "0"), ("--rows", "0"), ("--batch", "0"), ("--batch", "-3"),
                                         ("--threads", "0"), ("--seeds", "-1")])
def test_flags_refuse_counts_below_one(bb, flag, value):
    with pytest.raises(ValueError, match=f"^{flag} must be >= 1, got {value}$"):
        bb._parse([flag, value])


def test_script_refuses_a_bad_flag_before_it_starts():
    # The check runs before the BLAS threads are pinned and before torch is imported.
    res = subprocess.run([sys.executable, SCRIPT, "--batch", "0"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "ValueError: --batch must be >= 1, got 0" in res.stderr


def test_pin_threads_sets_every_blas_variable(bb, monkeypatch):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "9")
    bb._pin_threads(3)
    assert [os.environ[v] for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")] == ["3"] * 3


# ---------------------------------------------------------------------------------------------------- data
def test_datasets_are_obps_synthetic_stream_and_sklearns_tables_as_bandits(bb, peers):
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    data = bb._datasets(40, 5)
    assert list(data) == ["obp_synthetic", "digits", "wine", "breast_cancer"]
    (ds,) = FakeSynthetic.made
    assert ds.kw == {"n_actions": 10, "dim_context": 10, "reward_type": "binary", "reward_function": _logistic,
                     "random_state": 5}
    assert ds.n_rounds == 40
    fb = FakeSynthetic(**ds.kw).obtain_batch_bandit_feedback(40)
    x, mu = data["obp_synthetic"]
    assert x.dtype == mu.dtype == np.float64
    np.testing.assert_array_equal(x, fb["context"].astype(np.float64))
    np.testing.assert_array_equal(mu, fb["expected_reward"].astype(np.float64))
    # Each table: standardised columns, a stream of 40 rows drawn with replacement (one generator seeded with the
    # seed, in this order), reward 1 for the arm that is the row's class.
    rng = np.random.default_rng(5)
    for name, loader, n_cls in (("digits", load_digits, 10), ("wine", load_wine, 3),
                                ("breast_cancer", load_breast_cancer, 2)):
        xs, y = loader(return_X_y=True)
        idx = rng.integers(0, xs.shape[0], 40)
        x, mu = data[name]
        assert x.shape == (40, xs.shape[1]) and mu.shape == (40, n_cls) and x.dtype == mu.dtype == np.float64
        np.testing.assert_allclose(x, ((xs - xs.mean(0)) / (xs.std(0) + 1e-8))[idx], rtol=1e-12)
        np.testing.assert_array_equal(mu.argmax(1), y[idx])
        np.testing.assert_array_equal(mu.sum(1), np.ones(40))
    other = bb._datasets(40, 6)
    assert not np.array_equal(other["digits"][1], data["digits"][1])
    assert FakeSynthetic.made[-1].kw["random_state"] == 6


# ---------------------------------------------------------------------------------------------------- adapters
@pytest.mark.parametrize("policy, cls, settings", [
    ("LinUCB", "LinUCB", {"alpha": 1.0, "lam": 1.0}), ("LinTS", "LinTS", {"v": 1.0, "lam": 1.0}),
    ("EpsilonGreedy", "EpsilonGreedy", {"epsilon": 0.1}), ("ThompsonSampling", "ThompsonSampling", {"prior": "beta"})])
def test_ours_builds_the_matched_policy_and_learns_from_update(bb, policy, cls, settings):
    ag = bb._Ours(policy, 4, 3, seed=0)
    assert type(ag.p).__name__ == cls and ag.p.n_arms == 4 and ag.p.dtype == torch.float64 and ag.device == "cpu"
    assert {k: getattr(ag.p, k) for k in settings} == settings
    if policy.startswith("Lin"):
        assert ag.p.dim == 3
    rng = np.random.default_rng(0)
    x = np.concatenate([np.ones((200, 1)), rng.standard_normal((200, 2))], 1)  # an intercept for the linear ones
    a = ag.select(x)
    assert isinstance(a, np.ndarray) and a.shape == (200,) and a.dtype == np.int64 and set(a) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(bb._Ours(policy, 4, 3, seed=0).select(x), a)  # seeded
    # Arm 2 always pays, the others never: after one update every policy mostly plays arm 2.
    for _ in range(3):
        arms = rng.integers(0, 4, 200)
        ag.update(x, arms, (arms == 2).astype(np.float64))
    assert int(ag.p.steps) == 600
    assert (ag.select(x) == 2).mean() > 0.85


def test_ours_seed_reaches_the_generator(bb):
    x = np.zeros((64, 3))
    picks = [bb._Ours("ThompsonSampling", 10, 3, seed=s).select(x) for s in (0, 1)]
    assert not np.array_equal(*picks)


@pytest.mark.parametrize("policy, lp", [("LinUCB", ("LinUCB", {"alpha": 1.0, "l2_lambda": 1.0})),
                                        ("LinTS", ("LinTS", {"alpha": 1.0, "l2_lambda": 1.0})),
                                        ("EpsilonGreedy", ("EpsilonGreedy", {"epsilon": 0.1})),
                                        ("ThompsonSampling", ("ThompsonSampling", {}))])
def test_mabwiser_adapter(bb, peers, policy, lp):
    contextual = policy.startswith("Lin")
    ag = bb._Mab(policy, 5, 3, seed=4)
    assert (ag.mab.arms, ag.mab.lp, ag.mab.seed) == ([0, 1, 2, 3, 4], lp, 4)
    x = np.random.default_rng(1).standard_normal((300, 3))
    # Before the first fit: uniform play from a generator seeded with the seed; the library is not asked.
    first = ag.select(x)
    assert first.shape == (300,) and set(first) == {0, 1, 2, 3, 4} and not ag.mab.calls
    np.testing.assert_array_equal(bb._Mab(policy, 5, 3, seed=4).select(x), first)
    r = np.array([0.0, 1.0, 1.0])
    ag.update(x[:3], np.array([1, 2, 3]), r)
    ag.update(x[3:5], np.array([4, 0]), r[:2])
    (k1, d1, r1, c1), (k2, d2, r2, c2) = ag.mab.calls
    assert (k1, k2) == ("fit", "partial_fit")
    np.testing.assert_array_equal(d1, [1, 2, 3])
    np.testing.assert_array_equal(d2, [4, 0])
    np.testing.assert_array_equal(r1, [0, 1, 1])
    np.testing.assert_array_equal(r2, [0, 1])
    assert r1.dtype.kind == ("f" if contextual else "i")  # Thompson sampling wants integer rewards
    if contextual:
        assert c1 is not None and c2 is not None
        np.testing.assert_array_equal(c1, x[:3])
        np.testing.assert_array_equal(c2, x[3:5])
    else:
        assert c1 is None and c2 is None
    a = ag.select(x[:4])
    np.testing.assert_array_equal(a, [0, 3, 1, 4])
    ctx = ag.mab.calls[-1][1]
    np.testing.assert_array_equal(ctx, x[:4] if contextual else np.zeros((4, 1)))
    one = ag.select(x[:1])  # a scalar from the library for one row
    assert one.shape == (1,) and one.dtype == np.int64 and one[0] == 0


@pytest.mark.parametrize("policy, cls, settings", [
    ("LinUCB", "LinUCB", {"dim": 3, "n_actions": 5, "epsilon": 1.0, "batch_size": 32, "random_state": 4}),
    ("LinTS", "LinTS", {"dim": 3, "n_actions": 5, "batch_size": 32, "random_state": 4}),
    ("EpsilonGreedy", "EpsilonGreedy", {"n_actions": 5, "epsilon": 0.1, "batch_size": 32, "random_state": 4}),
    ("ThompsonSampling", "BernoulliTS", {"n_actions": 5, "batch_size": 32, "random_state": 4})])
def test_obp_adapter_goes_row_by_row(bb, peers, policy, cls, settings):
    contextual = policy.startswith("Lin")
    ag = bb._Obp(policy, 5, 3, seed=4)
    assert type(ag.p).__name__ == cls and ag.p.kw == settings
    assert bb._Obp(policy, 5, 3, seed=4, batch=8).p.kw["batch_size"] == 8
    x = np.arange(21.0).reshape(7, 3)
    np.testing.assert_array_equal(ag.select(x), [0, 1, 2, 3, 4, 0, 1])
    assert len(ag.p.selects) == 7
    for i, ctx in enumerate(ag.p.selects):
        if contextual:
            np.testing.assert_array_equal(ctx[0], x[i:i + 1])
        else:
            assert ctx == ()
    ag.update(x[:3], np.array([4, 0, 2]), np.array([1.0, 0.0, 1.0]))
    assert [u[:2] for u in ag.p.updates] == [(4, 1.0), (0, 0.0), (2, 1.0)]
    assert all(type(u[0]) is int and type(u[1]) is float for u in ag.p.updates)
    for i, u in enumerate(ag.p.updates):
        if contextual:
            assert len(u) == 3
            np.testing.assert_array_equal(u[2], x[i:i + 1])
        else:
            assert len(u) == 2


# ---------------------------------------------------------------------------------------------------- reward
class Scripted:
    """Plays ``plan[t]`` at row t (as int32, which the policies' updates are not to see) and records what it is
    shown."""

    def __init__(self, plan):
        self.plan, self.t, self.selects, self.updates = np.asarray(plan, dtype=np.int32), 0, [], []

    def select(self, x):
        self.selects.append(x.copy())
        a = self.plan[self.t:self.t + x.shape[0]]
        self.t += x.shape[0]
        return a

    def update(self, x, a, r):
        self.updates.append((x.copy(), a, r))


def test_simulate_accounts_reward_and_expected_regret_batch_by_batch(bb):
    x = np.arange(7.0)[:, None] * np.ones((1, 2))
    mu = np.array([[0.2, 0.9, 0.5], [1.0, 0.0, 0.5], [0.5, 0.5, 0.1], [0.3, 0.6, 0.9], [0.0, 0.0, 1.0],
                   [0.4, 0.8, 0.1], [0.7, 0.2, 0.6]])
    u = np.full((7, 3), 0.5)
    u[0, 1] = 0.95  # arm 1 at row 0 has mean 0.9 but this draw misses
    plan = [1, 0, 1, 2, 0, 1, 2]
    agent = Scripted(plan)
    total, curve = bb._simulate(agent, x, mu, u, 3)
    # reward 1 where u < mu at the chosen arm: rows 1 (1.0), 3 (0.9), 5 (0.8), 6 (0.6); row 2 has u == mu: no reward
    assert total == 4.0 and isinstance(total, float)
    per_row = mu.max(1) - mu[np.arange(7), plan]  # 0, 0, 0, 0, 1, 0, 0.1
    np.testing.assert_allclose(curve, np.cumsum(per_row))
    np.testing.assert_allclose(curve[[3, 4, 6]], [0.0, 1.0, 1.1])
    assert [s.shape[0] for s in agent.selects] == [3, 3, 1]
    for s, start in zip(agent.selects, (0, 3, 6)):
        np.testing.assert_array_equal(s, x[start:start + s.shape[0]])
    for (xb, a, r), start in zip(agent.updates, (0, 3, 6)):
        np.testing.assert_array_equal(xb, x[start:start + xb.shape[0]])
        np.testing.assert_array_equal(a, plan[start:start + xb.shape[0]])
        assert a.dtype == np.int64 and r.dtype == np.float64
    np.testing.assert_array_equal(np.concatenate([r for _, _, r in agent.updates]), [0, 1, 0, 1, 0, 1, 1])


def test_simulate_with_batch_of_one_and_of_everything(bb):
    rng = np.random.default_rng(3)
    mu, u = rng.random((50, 4)), rng.random((50, 4))
    plan = rng.integers(0, 4, 50)
    expected = float((u[np.arange(50), plan] < mu[np.arange(50), plan]).sum())
    for batch in (1, 50, 64):
        agent = Scripted(plan)
        total, curve = bb._simulate(agent, np.zeros((50, 1)), mu, u, batch)
        assert total == expected and curve.shape == (50,) and len(agent.selects) == -(-50 // batch)
        np.testing.assert_allclose(curve[-1], (mu.max(1) - mu[np.arange(50), plan]).sum())


def _fake_data(rows, seed):
    rng = np.random.default_rng(seed)
    return {"toy": (rng.standard_normal((rows, 3)), rng.random((rows, 4))),
            "wide": (rng.standard_normal((rows, 6)), rng.random((rows, 2)))}


@pytest.mark.parametrize("quick", [False, True])
def test_reward_table_rows_and_curves(bb, peers, monkeypatch, capsys, quick):
    asked, seen = [], []
    monkeypatch.setattr(bb, "_datasets", lambda rows, seed: (asked.append((rows, seed)), _fake_data(rows, seed))[1])

    def fake_simulate(agent, x, mu, u, batch):
        seen.append((agent, x, mu, u, batch))
        k = len(seen)
        return float(1000 + k), np.arange(x.shape[0]) * 0.5 + k

    monkeypatch.setattr(bb, "_simulate", fake_simulate)
    rows, curves = bb.reward_table(argparse.Namespace(quick=quick, seeds=2, rows=20, batch=5))
    n_rows, seeds = (1500, 1) if quick else (20, 2)
    assert asked == [(n_rows, s) for s in range(seeds)]
    assert len(rows) == len(seen) == seeds * 2 * 4 * 3
    i = 0
    for seed in range(seeds):
        data = _fake_data(n_rows, seed)
        for dname in ("toy", "wide"):
            x, mu = data[dname]
            u = np.random.default_rng(1000 + seed).random(mu.shape)
            for pol in bb.POLICIES:
                for lib, cls in (("arr_coc", bb._Ours), ("MABWiser", bb._Mab), ("OBP", bb._Obp)):
                    agent, sx, smu, su, batch = seen[i]
                    assert type(agent) is cls and batch == 5
                    np.testing.assert_array_equal(sx, x)
                    np.testing.assert_array_equal(smu, mu)
                    np.testing.assert_array_equal(su, u)
                    r = rows[i]
                    assert (r["dataset"], r["policy"], r["lib"], r["seed"], r["n"]) == (dname, pol, lib, seed, n_rows)
                    assert r["reward"] == 1001 + i and r["regret"] == pytest.approx((n_rows - 1) * 0.5 + i + 1)
                    assert r["wall_s"] >= 0
                    i += 1
    # The agent is built for this stream's arms and context width.
    for agent, x, mu, _, _ in seen:
        if isinstance(agent, bb._Ours):
            assert agent.p.n_arms == mu.shape[1] and (agent.p.dim in (None, x.shape[1]))
        if isinstance(agent, bb._Mab):
            assert agent.n_arms == mu.shape[1]
    assert len(curves) == 2 * 4 * 3 and all(len(c) == seeds for c in curves.values())
    np.testing.assert_array_equal(curves[("wide", "LinTS", "OBP")][0], np.arange(n_rows) * 0.5 + 12 + 6)
    out = capsys.readouterr().out.splitlines()
    r = rows[0]
    assert out[0] == (f"  seed 0 toy            LinUCB           arr_coc  reward     1001 regret {r['regret']:8.1f} "
                      f"({r['wall_s']:5.1f}s)")


# ---------------------------------------------------------------------------------------------------- throughput
def test_best_rate_is_the_fastest_repeat_of_calls_timed_until_min_time(bb, monkeypatch):
    # Repeat 1: two calls reach 1.2 s (0.6 s each); repeat 2: one call of exactly min_time; repeat 3: three calls
    # reach 1.5 s (0.5 s each). Best per call 0.5 s: 8 decisions per call give 16 decisions/s.
    clock = iter([0.0, 0.6, 1.2, 10.0, 11.0, 20.0, 20.4, 20.8, 21.5])
    monkeypatch.setattr(bb.time, "perf_counter", lambda: next(clock))
    calls = []
    assert bb._best_rate(lambda: calls.append(1), 8, min_time=1.0, repeats=3) == pytest.approx(16.0)
    assert len(calls) == 1 + 2 + 1 + 3  # a warm-up call first
    clock = iter([0.0, 0.1, 0.2, 0.35])  # default min_time 0.3 s, one repeat: three calls of 0.35 s in all
    assert bb._best_rate(lambda: None, 7, repeats=1) == pytest.approx(60.0)
    clock = iter([0.0, 0.3] * 3 + [9.0])  # default repeats: three, each one call of 0.3 s
    assert bb._best_rate(lambda: None, 3) == pytest.approx(10.0)


@pytest.mark.parametrize("quick", [False, True])
def test_throughput_table(bb, peers, monkeypatch, capsys, quick):
    timed = []

    def fake_rate(fn, n_decisions, min_time=0.3, repeats=3):
        timed.append((fn, n_decisions, min_time))
        return 1000.0 * len(timed)

    monkeypatch.setattr(bb, "_best_rate", fake_rate)
    out = bb.throughput_table(argparse.Namespace(quick=quick, device="cpu"))
    labels = ["arr_coc[cpu]", "MABWiser", "OBP"]
    assert [(r["policy"], r["batch"], r["lib"]) for r in out] == [
        (p, b, lib) for p in bb.POLICIES for b in (1, 4096) for lib in labels]
    assert [r["decisions_per_s"] for r in out] == [1000.0 * (k + 1) for k in range(24)]
    assert {t[2] for t in timed} == {0.2 if quick else 0.4}
    assert [t[1] for t in timed] == [n for _ in bb.POLICIES for b in (1, 4096) for n in (b, b, min(b, 256))]
    lines = capsys.readouterr().out.splitlines()
    assert lines[3] == "  LinUCB           batch  4096 arr_coc[cpu]            4,000 decisions/s"
    # Each timed call decides for the whole batch (OBP: 256 rows of it, one select_action each).
    for k, (fn, n_dec, _) in enumerate(timed):
        lib, policy = out[k]["lib"], out[k]["policy"]
        if lib == "OBP":
            obp = fn.__defaults__[0].p
            before = len(obp.selects)
            fn()
            assert len(obp.selects) - before == n_dec
            assert len(obp.updates) == 512  # warmed with 512 rows first
        elif lib == "MABWiser":
            mab = fn.__defaults__[0].mab
            assert [c[0] for c in mab.calls] == ["fit"] and len(mab.calls[0][1]) == 512
            fn()
            assert len(mab.calls[-1][1]) == n_dec
            assert mab.calls[-1][1].shape[1] == (20 if policy.startswith("Lin") else 1)
        else:
            ours = fn.__defaults__[0]
            assert int(ours.p.steps) == 512 and ours.p.n_arms == 10
            if policy.startswith("Lin"):
                assert ours.p.dim == 20
            assert fn.__defaults__[1].shape == (n_dec, 20)
            fn()


def test_throughput_table_adds_the_extra_device_once(bb, peers, monkeypatch):
    monkeypatch.setattr(bb, "_best_rate", lambda fn, n, min_time=0.3, repeats=3: 1.0)
    made = []
    real = bb._Ours

    class Ours(real):
        def __init__(self, policy, n_arms, dim, seed, device="cpu"):
            made.append(device)
            super().__init__(policy, n_arms, dim, seed, "cpu")
            self.device = device  # only the label and the timed input go there

        def update(self, x, a, r):
            self.p.update(*(torch.from_numpy(v) for v in (x, a, r)))

    monkeypatch.setattr(bb, "_Ours", Ours)
    monkeypatch.setattr(bb.torch.cuda, "synchronize", lambda: None)
    out = bb.throughput_table(argparse.Namespace(quick=True, device="meta"))
    assert made == ["cpu", "meta"] * 8
    assert [r["lib"] for r in out[:4]] == ["arr_coc[cpu]", "arr_coc[meta]", "MABWiser", "OBP"]


# ---------------------------------------------------------------------------------------------------- report
def _reward_rows():
    rows = []
    vals = {"arr_coc": [(10, 1.0), (14, 3.0)], "MABWiser": [(8, 2.0), (12, 2.0)], "OBP": [(20, 0.5), (20, 1.5)]}
    for d in ("zeta", "alpha"):
        for p in ("ThompsonSampling", "LinUCB"):
            for lib, v in vals.items():
                for seed, (rew, reg) in enumerate(v):
                    scale = 2 if d == "alpha" else 1
                    rows.append({"dataset": d, "policy": p, "lib": lib, "seed": seed, "reward": rew * scale,
                                 "regret": reg * scale, "wall_s": 1.0, "n": 100})
    return rows


def test_fmt_reward(bb):
    lines = bb._fmt_reward(_reward_rows()).splitlines()
    assert lines[:2] == [
        "| dataset | policy | arr_coc reward | MABWiser reward | OBP reward | arr_coc regret | MABWiser regret "
        "| OBP regret | arr_coc/MABWiser reward | arr_coc/OBP reward |", "|---|---|---|---|---|---|---|---|---|---|"]
    # sorted by dataset, then in POLICIES order; mean ± population std over seeds; ratios of mean rewards
    assert lines[2:] == [
        "| alpha | LinUCB | 24 ± 4 | 20 ± 4 | 40 ± 0 | 4.0 ± 2.0 | 4.0 ± 0.0 | 2.0 ± 1.0 | 1.200 | 0.600 |",
        "| alpha | ThompsonSampling | 24 ± 4 | 20 ± 4 | 40 ± 0 | 4.0 ± 2.0 | 4.0 ± 0.0 | 2.0 ± 1.0 | 1.200 | 0.600 |",
        "| zeta | LinUCB | 12 ± 2 | 10 ± 2 | 20 ± 0 | 2.0 ± 1.0 | 2.0 ± 0.0 | 1.0 ± 0.5 | 1.200 | 0.600 |",
        "| zeta | ThompsonSampling | 12 ± 2 | 10 ± 2 | 20 ± 0 | 2.0 ± 1.0 | 2.0 ± 0.0 | 1.0 ± 0.5 | 1.200 | 0.600 |"]


def _speed_rows(libs=("arr_coc[cpu]", "MABWiser", "OBP", "arr_coc[cuda]")):
    rate = {"arr_coc[cpu]": 1000.0, "MABWiser": 400.0, "OBP": 250.0, "arr_coc[cuda]": 5000.0}
    return [{"policy": p, "batch": b, "lib": lib, "decisions_per_s": rate[lib] * (i + 1) * (3 if b > 1 else 1)}
            for i, p in enumerate(("LinUCB", "LinTS", "EpsilonGreedy", "ThompsonSampling")) for b in (1, 4096)
            for lib in libs]


def test_fmt_speed(bb):
    lines = bb._fmt_speed(_speed_rows()).splitlines()
    assert lines[0] == ("| policy | batch | arr_coc[cpu] | MABWiser | OBP | arr_coc[cuda] | arr_coc[cpu]/MABWiser "
                        "| arr_coc[cpu]/OBP | arr_coc[cuda]/MABWiser | arr_coc[cuda]/OBP |")
    assert lines[1] == "|" + "---|" * 10
    assert len(lines) == 2 + 8
    assert lines[2] == "| LinUCB | 1 | 1,000 | 400 | 250 | 5,000 | 2.50x | 4.00x | 12.50x | 20.00x |"
    assert lines[3] == "| LinUCB | 4096 | 3,000 | 1,200 | 750 | 15,000 | 2.50x | 4.00x | 12.50x | 20.00x |"
    assert lines[9] == "| ThompsonSampling | 4096 | 12,000 | 4,800 | 3,000 | 60,000 | 2.50x | 4.00x | 12.50x | 20.00x |"
    one = bb._fmt_speed(_speed_rows(("arr_coc[cpu]", "MABWiser", "OBP"))).splitlines()
    assert one[1] == "|" + "---|" * 7 and one[4] == "| LinTS | 1 | 2,000 | 800 | 500 | 2.50x | 4.00x |"


def test_plots_draw_the_mean_regret_curve_and_the_rates(bb, monkeypatch, tmp_path):
    figs, close = [], bb.plt.close
    monkeypatch.setattr(bb.plt, "close", figs.append)
    curves = {(d, p, lib): [np.arange(5.0) * (k + 1), np.arange(5.0) * (k + 3)]
              for d in ("wine", "digits") for p in bb.POLICIES for k, lib in enumerate(("arr_coc", "MABWiser", "OBP"))}
    speed = _speed_rows(("arr_coc[cpu]", "MABWiser", "OBP"))
    bb._plots(curves, speed, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["bench_bandits_regret.png", "bench_bandits_throughput.png"]
    regret, rates = figs
    axes = regret.axes
    assert len(axes) == 2 * 4 and axes[1].get_title() == "digits / LinTS" and axes[4].get_title() == "wine / LinUCB"
    for ax in axes:
        assert [ln.get_label() for ln in ax.lines] == ["arr_coc", "MABWiser", "OBP"]
        for k, ln in enumerate(ax.lines):
            np.testing.assert_allclose(ln.get_ydata(), np.arange(5.0) * (k + 2))  # mean over the two seeds
    ax1, ax4096 = rates.axes
    assert ax1.get_title() == "decisions/s, batch 1" and ax4096.get_yscale() == "log"
    heights = [b.get_height() for b in ax4096.patches]  # library by library, each over the four policies
    assert heights == [r["decisions_per_s"] for lib in ("arr_coc[cpu]", "MABWiser", "OBP") for r in speed
                       if r["lib"] == lib and r["batch"] == 4096]
    np.testing.assert_allclose(ax1.get_xticks(), np.arange(4) + 0.8 / 3)  # under the middle bar of each group
    np.testing.assert_allclose([b.get_x() + b.get_width() / 2 for b in ax1.patches[4:8]], np.arange(4) + 0.8 / 3)
    for f in figs:
        close(f)


@pytest.mark.parametrize("quick", [False, True])
def test_main_writes_the_tables_and_plots(bb, monkeypatch, tmp_path, capsys, keep_threads, quick):
    got = {}

    def fake_rewards(args):
        got["reward"] = args
        return _reward_rows(), {(d, p, lib): [np.arange(3.0)] for d in ("zeta", "alpha") for p in bb.POLICIES
                                for lib in ("arr_coc", "MABWiser", "OBP")}

    monkeypatch.setattr(bb, "reward_table", fake_rewards)
    monkeypatch.setattr(bb, "throughput_table", lambda args: got.setdefault("speed", _speed_rows()))
    out = tmp_path / "new" / "dir"
    args = argparse.Namespace(quick=quick, seeds=2, rows=50, batch=7, threads=2, device="cpu", out=str(out))
    bb.main(args)
    assert got["reward"] is args and torch.get_num_threads() == 2
    md = (out / "bench_bandits.md").read_text()
    counts = "1 seed(s), 1500 decisions per stream" if quick else "2 seed(s), 50 decisions per stream"
    assert f"2 CPU thread(s), {counts}, batch 7).\n\n### Cumulative reward" in md
    assert bb._fmt_reward(_reward_rows()) in md and bb._fmt_speed(_speed_rows()) in md
    assert "### Decisions per second (select only; best of 3)" in md
    printed = capsys.readouterr().out
    assert "## reward" in printed and "## throughput" in printed and bb._fmt_reward(_reward_rows()) in printed
    assert (out / "bench_bandits_regret.png").exists() and (out / "bench_bandits_throughput.png").exists()


@pytest.mark.parametrize("device", ["cdua", "cuda:-1", pytest.param("cuda", marks=pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is there"))])
def test_main_refuses_an_unusable_device_before_the_run(bb, monkeypatch, tmp_path, keep_threads, device):
    monkeypatch.setattr(bb, "reward_table", lambda args: pytest.fail("the reward part ran"))
    args = argparse.Namespace(quick=True, seeds=1, rows=10, batch=4, threads=1, device=device, out=str(tmp_path))
    with pytest.raises(ValueError, match=f"^--device '{device}' is not usable here"):
        bb.main(args)
