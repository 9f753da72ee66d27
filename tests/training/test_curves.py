"""training/curves.py: window means and onset read from hand-written logs whose answers are derived by hand."""

from __future__ import annotations

import csv

import pytest

from training.curves import Curve, main, onset, read_curve, window_means


def _write_log(path, steps, values, metric="accuracy", extra=True):
    fields = ["step", "epoch", "loss", metric] if extra else ["step", metric]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for s, v in zip(steps, values):
            w.writerow({"step": s, metric: v, **({"epoch": 0, "loss": 1.0} if extra else {})})
    return path


def test_read_curve_from_run_folder_and_from_csv(tmp_path):
    _write_log(tmp_path / "log.csv", [50, 100, 150], [0.1, 0.2, 0.3])
    for where in (tmp_path, tmp_path / "log.csv"):
        c = read_curve(where)
        assert c.steps == (50, 100, 150) and c.values == (0.1, 0.2, 0.3)
    assert read_curve(tmp_path, "loss").values == (1.0, 1.0, 1.0)


def test_window_means_by_hand():
    # Rows every 50 steps; windows of 100: (0,100] holds steps 50,100; (100,200] holds 150,200; (200,300] holds 250.
    c = Curve((50, 100, 150, 200, 250), (0.1, 0.3, 0.5, 0.7, 0.2))
    got = window_means(c, 100)
    assert [(s, e) for s, e, _ in got] == [(0, 100), (100, 200), (200, 300)]
    assert [m for *_, m in got] == pytest.approx([0.2, 0.6, 0.2])


def test_window_with_no_rows_is_left_out_not_zero():
    c = Curve((10, 320), (0.4, 0.8))
    assert window_means(c, 100) == [(0, 100, 0.4), (300, 400, 0.8)]


def test_onset_is_first_window_reaching_the_level():
    # Means per 100 steps: 0.2, 0.3, 0.4, 0.35 -> the first >= 0.35 is (200, 300]; a later dip does not move it.
    c = Curve((50, 100, 150, 200, 250, 300, 350, 400), (0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.3, 0.4))
    assert onset(c, 0.35, 100) == (200, 300)
    assert onset(c, 0.2, 100) == (0, 100)  # reaching the level counts (>=)
    assert onset(c, 0.41, 100) is None


def test_onset_on_shipped_seed2_10k_log_matches_readme():
    """The README's onset for seed 2 at 10,000 steps (5,000-5,500) is what this module reads off its log."""
    from pathlib import Path

    log = Path(__file__).resolve().parents[2] / "results/pilot_small_frozen5k/interventions/seed2_10k/train_log.csv"
    c = read_curve(log)
    assert c.steps[-1] == 10000
    assert onset(c, 0.35, 500) == (5000, 5500)


@pytest.mark.parametrize("rows, match", [
    ([], "no logged rows"),
    ([(50, 0.1), (50, 0.2)], "does not follow step 50"),
    ([(50, 0.1), (100, float("nan"))], "not finite"),
    ([(50, "abc")], "not a number"),
])
def test_bad_logs_raise_value_error(tmp_path, rows, match):
    _write_log(tmp_path / "log.csv", [r[0] for r in rows], [r[1] for r in rows])
    with pytest.raises(ValueError, match=match):
        read_curve(tmp_path)


def test_missing_file_and_column_raise(tmp_path):
    with pytest.raises(ValueError, match="no training log"):
        read_curve(tmp_path / "nope")
    _write_log(tmp_path / "log.csv", [50], [0.1], extra=False)
    with pytest.raises(ValueError, match="no column 'grad_norm'"):
        read_curve(tmp_path, "grad_norm")


@pytest.mark.parametrize("window", [0, -5, 2.5, True])
def test_bad_window_raises(window):
    with pytest.raises(ValueError, match="window must be a positive integer"):
        window_means(Curve((1,), (0.0,)), window)


def test_nan_threshold_raises():
    with pytest.raises(ValueError, match="threshold must be finite"):
        onset(Curve((1,), (0.0,)), float("nan"))


def test_cli_prints_means_and_onset(tmp_path, capsys):
    _write_log(tmp_path / "log.csv", [50, 100, 150, 200], [0.2, 0.2, 0.5, 0.5])
    assert main([str(tmp_path), "--window", "100", "--threshold", "0.35"]) == 0
    out = capsys.readouterr().out
    assert "last step 200" in out and "0.200 0.500" in out and "onset (>= 0.35): 100-200" in out


def test_truncated_row_raises_value_error_naming_its_line(tmp_path):
    # A run killed mid-write leaves a short last row: csv gives None for its missing fields (float(None) is a
    # TypeError, not a ValueError); the message names the file's line (header = line 1).
    (tmp_path / "log.csv").write_text("step,accuracy\n50,0.1\n100,0.2\n150\n")
    with pytest.raises(ValueError, match=r"line 4: step='150', accuracy=None is not a number"):
        read_curve(tmp_path)
    _write_log(tmp_path / "log.csv", [50, 50], [0.1, 0.2])
    with pytest.raises(ValueError, match="line 3: step 50 does not follow"):
        read_curve(tmp_path)


def test_cli_threshold_zero_still_reports_an_onset(tmp_path, capsys):
    _write_log(tmp_path / "log.csv", [50, 100], [0.0, 0.0])
    assert main([str(tmp_path), "--window", "100", "--threshold", "0"]) == 0
    assert "onset (>= 0): 0-100" in capsys.readouterr().out


def test_cli_bad_window_raises(tmp_path):
    _write_log(tmp_path / "log.csv", [50, 100], [0.0, 0.0])
    with pytest.raises(ValueError, match="window must be a positive integer number of steps, got 0"):
        main([str(tmp_path), "--window", "0"])
