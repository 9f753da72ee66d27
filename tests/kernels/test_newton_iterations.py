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
