"""Small CLI scripts in ``scripts/``: they run on tiny inputs and refuse bad flags by name."""

from __future__ import annotations

import pytest


def test_bench_data_generates_the_presets_own_benchmark(keep_threads):
    # The tiny preset's 64 px images need its recipe's smaller shapes: the docstring's command used to fail with
    # "image_size=64: too small for shapes up to 64 px" (and the generated folder clashed with its own temp dir).
    from scripts.bench_data import main

    res = main(["--preset", "tiny", "--rows", "16", "--batch", "8", "--reps", "1"])
    assert res["rows"] == 16 and res["image_size"] == [64, 64]
    assert all(res[k] > 0 for k in ("float_worker_ms", "uint8_worker_ms", "uint8_plus_cpu_normalise_ms"))


def test_bench_data_times_each_path_over_the_rows_it_has(keep_threads, tmp_path, monkeypatch):
    # A benchmark of 8 rows read with --rows 16: 8 rows are timed. The timings are faked (float, uint8, uint8 + CPU
    # normalisation in that order) to check which goes where; the uint8 path's collator hands over uint8 pixels; the
    # script runs on one thread and leaves no temporary folder behind.
    import tempfile
    import warnings

    import torch

    import scripts.bench_data as bd
    import training.collate as collate
    from training.benchmark import TINY_GENERATOR, BenchmarkCfg, make_benchmark

    clock = iter([0.0, 3.0, 3.0, 4.0, 4.0, 6.0])  # three runs of 3 s, 1 s and 2 s: the fastest is reported
    monkeypatch.setattr(bd.time, "perf_counter", lambda: next(clock))
    assert bd._time(lambda: None, 3) == 1.0
    monkeypatch.undo()

    make_benchmark(tmp_path / "b", seed=0, sizes={"train": 8}, cfg=BenchmarkCfg.from_dict(TINY_GENERATOR))
    made = []

    class Recording(collate.VqaCollator):
        def __init__(self, *a, **kw):
            made.append(kw)
            super().__init__(*a, **kw)

    monkeypatch.setattr(collate, "VqaCollator", Recording)
    times = iter([0.8, 0.4, 1.6])
    monkeypatch.setattr(bd, "_time", lambda fn, reps: (fn(), next(times))[1])
    torch.set_num_threads(2)
    res = bd.main(["--preset", "small", "--data", str(tmp_path / "b"), "--rows", "16", "--batch", "4", "--reps", "1"])
    assert torch.get_num_threads() == 1
    assert res == {"rows": 8, "image_size": [96, 96], "float_worker_ms": pytest.approx(100.0),
                   "uint8_worker_ms": pytest.approx(50.0), "uint8_plus_cpu_normalise_ms": pytest.approx(200.0)}
    assert [kw.get("uint8_pixels", False) for kw in made] == [False, True]
    # Generating into a temporary folder removes it afterwards.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(bd, "_time", lambda fn, reps: 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bd.main(["--preset", "tiny", "--rows", "4", "--batch", "4", "--reps", "1"])
    assert not list((tmp_path / "tmp").iterdir())
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]  # removed by the script, not by GC


@pytest.mark.parametrize("flags, match", [(["--threads", "0"], "--threads must be >= 1, got 0"),
                                          (["--repeats", "0"], "--repeats must be >= 1, got 0")])
def test_bench_allocators_refuses_bad_counts(flags, match):
    from scripts.bench_allocators import main

    with pytest.raises(ValueError, match=match):
        main(flags)
