"""``scripts/bench_allocators.py``: the timing, the inputs each allocator gets, and the table of ratios to ``uniform``.

The flag checks for ``--threads`` and ``--repeats`` are in ``tests/test_scripts_cli.py``.
"""

from __future__ import annotations

import pytest
import torch

import scripts.bench_allocators as ba


def test_time_is_the_median_of_the_timed_calls_after_a_warm_up(monkeypatch):
    clock = iter([0.0, 5.0, 5.0, 6.0, 6.0, 10.0])  # three timed calls of 5, 1 and 4 s
    monkeypatch.setattr(ba.time, "perf_counter", lambda: next(clock))
    calls = []
    assert ba._time(lambda: calls.append(1), 3, torch.device("cpu")) == 4.0
    assert len(calls) == 4  # one warm-up call, untimed, then the three timed ones


class _Recorder:
    """Stands in for an allocator: records its inputs."""

    def __init__(self, name, seen, kw):
        self.name, self.seen, self.kw = name, seen, kw

    def __call__(self, u, **call_kw):
        self.seen.append((self.name, self.kw, u, call_kw))


@pytest.fixture
def fake(monkeypatch):
    """Allocators replaced by recorders, ``_time`` by a table of times (ms per name and batch); runs ``fn`` once."""
    seen, times, made = [], {}, []
    expect = {"repeats": 7}

    def create(name, **kw):
        made.append(name)
        return _Recorder(name, seen, kw)

    def fake_time(fn, repeats, device):
        assert repeats == expect["repeats"] and device.type == "cpu"
        n = len(seen)
        fn()
        name, _, u, _ = seen[n]
        return times[name][u.shape[0]] / 1e3

    monkeypatch.setattr(ba, "create_allocator", create)
    monkeypatch.setattr(ba, "_time", fake_time)
    monkeypatch.setattr(ba.torch.cuda, "is_available", lambda: False)
    return seen, times, made, expect


def test_table_of_times_and_ratios_to_uniform(fake, capsys, keep_threads):
    seen, times, made, _ = fake
    times.update({"uniform": {2: 0.5, 3: 2.0}, "bandit": {2: 1.0, 3: 30.0}, "mckp": {2: 10.0, 3: 5.0}})
    torch.set_num_threads(2)
    ba.main(["--batches", "2", "3", "--repeats", "7", "--threads", "1", "--allocators", "mckp", "bandit", "uniform"])
    assert torch.get_num_threads() == 1
    assert made == ["uniform", "mckp", "bandit"]  # uniform first (the baseline), each allocator once
    assert all(kw == {} for _, kw, _, _ in seen)  # the exact DP on CPU
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"torch {torch.__version__}, threads 1, K=200, budget=13200")
    i = lines.index("## cpu")
    assert lines[i + 1].split() == ["allocator", "B=2", "ms", "x", "uniform", "B=3", "ms", "x", "uniform"]
    assert lines[i + 2] == "-" * len(lines[i + 1])
    assert [line.split() for line in lines[i + 3:]] == [["uniform", "0.500", "1.0", "2.000", "1.0"],
                                                        ["mckp", "10.000", "20.0", "5.000", "2.5"],
                                                        ["bandit", "1.000", "2.0", "30.000", "15.0"]]
    # utilities ~ N(0, 2²) of shape (B, 200), the same draw for every allocator; the bandit also gets a
    # (B, 200, 67) context drawn after them, the others none
    for b in (2, 3):
        g = torch.Generator().manual_seed(0)
        u = torch.randn(b, 200, generator=g).mul(2)
        ctx = torch.randn(b, 200, 67, generator=g)
        got = [s for s in seen if s[2].shape[0] == b]
        assert [s[0] for s in got] == ["uniform", "mckp", "bandit"]
        assert all(torch.equal(s[2], u) for s in got)
        assert [s[3] for s in got[:2]] == [{}, {}] and torch.equal(got[2][3]["context"], ctx)


def test_defaults(fake, capsys, keep_threads):
    seen, times, made, expect = fake
    times.update({n: {1: 1.0, 64: 1.0, 1024: 1.0} for n in ba.list_allocators()})
    expect["repeats"] = 5
    torch.set_num_threads(2)
    ba.main([])  # every registered allocator, batches 1, 64 and 1024, 5 repeats, torch's threads left alone
    assert torch.get_num_threads() == 2
    assert made == ["uniform", *[n for n in ba.list_allocators() if n != "uniform"]]
    assert sorted({s[2].shape[0] for s in seen}) == [1, 64, 1024]


@pytest.mark.parametrize("batches", [["0"], ["4", "-1"]])
def test_refuses_bad_batch_sizes(batches):
    with pytest.raises(ValueError, match=r"--batches must be >= 1, got \[" + batches[-1]):
        ba.main(["--batches", *batches, "--repeats", "1"])


def test_tiny_real_run(capsys, keep_threads):
    ba.main(["--batches", "1", "--repeats", "1", "--threads", "1", "--allocators", "projection", "mckp", "bandit"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[-4:]]
    assert [r[0] for r in rows] == ["uniform", "projection", "mckp", "bandit"]
    assert rows[0][2] == "1.0" and all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
