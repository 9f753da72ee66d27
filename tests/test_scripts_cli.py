"""Small CLI scripts in ``scripts/``: they run on tiny inputs and refuse bad flags by name."""

from __future__ import annotations

import pytest


@pytest.fixture
def keep_threads():
    """The scripts set torch's thread count for the process: put it back for the tests that follow."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_bench_data_generates_the_presets_own_benchmark(keep_threads):
    # The tiny preset's 64 px images need its recipe's smaller shapes: the docstring's command used to fail with
    # "image_size=64: too small for shapes up to 64 px" (and the generated folder clashed with its own temp dir).
    from scripts.bench_data import main

    res = main(["--preset", "tiny", "--rows", "16", "--batch", "8", "--reps", "1"])
    assert res["rows"] == 16 and res["image_size"] == [64, 64]
    assert all(res[k] > 0 for k in ("float_worker_ms", "uint8_worker_ms", "uint8_plus_cpu_normalise_ms"))


@pytest.mark.parametrize("flags, match", [(["--threads", "0"], "--threads must be >= 1, got 0"),
                                          (["--repeats", "0"], "--repeats must be >= 1, got 0")])
def test_bench_allocators_refuses_bad_counts(flags, match):
    from scripts.bench_allocators import main

    with pytest.raises(ValueError, match=match):
        main(flags)
