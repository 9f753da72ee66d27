"""The accuracy-vs-budget benchmark driver runs end to end in ``--smoke`` mode (tiny models, CPU)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_bench_accuracy_budget_smoke(tmp_path):
    from scripts.bench_accuracy_budget import TRAINING_FREE, main

    res = main(["--smoke", "--out", str(tmp_path / "results"), "--work", str(tmp_path / "runs")])
    md = res["md"].read_text()
    assert "SMOKE RUN" in md and "meaningless" in md  # never mistaken for real numbers
    assert res["png"].stat().st_size > 0 and res["heatmap"].stat().st_size > 0
    assert res["failures"] == []
    results = res["results"]
    for method in ("full", "arr_coc_projection", "arr_coc_bandit", "uniform_trained", *TRAINING_FREE):
        assert method in results and f"| {method} |" in md
    for method in ("arr_coc_projection", *TRAINING_FREE):
        assert set(results[method]) == {1.0, 0.5, 0.25, 0.125}
        for f, summaries in results[method].items():
            assert summaries[0]["mean_visual_tokens"] == round(64 * f)  # exactly the budget, every method
    saved = json.loads((tmp_path / "results" / "accuracy_budget.json").read_text())
    assert saved["meta"]["smoke"] is True
