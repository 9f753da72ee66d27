"""Training curves from a run's ``log.csv``: window means and the step where a metric first crosses a level.

    python -m training.curves RUN [RUN ...] [--metric accuracy] [--window 500] [--threshold 0.35]

A run trained with :mod:`training.train` logs one row every ``train.log_every`` steps; each row's ``accuracy`` is the
answer accuracy of that one step's batch, so single rows are noisy (a batch of 32 has a standard error of about 8
points). Averaging the rows in consecutive windows of ``--window`` steps gives a readable curve, and the *onset* is
the first window whose mean reaches ``--threshold``: for the small benchmark's frozen-tower models, whose training
accuracy sits at 0.23-0.29 before the LLM learns to read digits and climbs past 0.4 after, 0.35 separates the two
(README, "The seed that does not read at 5,000 steps reads at 10,000"). Prints one line per run: its last step,
the window means, and the onset window as ``start-end`` (``none`` if no window reaches the level).
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["Curve", "read_curve", "window_means", "onset", "format_onset", "main"]


@dataclass(frozen=True)
class Curve:
    """One metric of one run: the logged steps (increasing) and their values."""

    steps: tuple[int, ...]
    values: tuple[float, ...]


def read_curve(run: str | Path, metric: str = "accuracy") -> Curve:
    """``metric`` against ``step`` from ``run/log.csv`` (or from ``run`` itself when it names a CSV file).

    Raises ``ValueError`` for a missing file, a CSV without a ``step`` or ``metric`` column, an empty log, steps that
    do not increase, or a value that is not a finite number; nothing is skipped silently.
    """
    path = Path(run)
    if path.is_dir():
        path = path / "log.csv"
    if not path.is_file():
        raise ValueError(f"no training log at {str(path)!r} (expected a run folder with log.csv, or a CSV file)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        for col in ("step", metric):
            if col not in fields:
                raise ValueError(f"{str(path)!r} has no column {col!r}; its columns are {fields}")
        steps, values = [], []
        for i, row in enumerate(reader, start=2):
            try:
                step, value = int(row["step"]), float(row[metric])
            except (TypeError, ValueError):
                raise ValueError(f"{str(path)!r} line {i}: step={row['step']!r}, {metric}={row[metric]!r} "
                                 "is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{str(path)!r} line {i}: {metric}={value} at step {step} is not finite")
            if steps and step <= steps[-1]:
                raise ValueError(f"{str(path)!r} line {i}: step {step} does not follow step {steps[-1]}")
            steps.append(step)
            values.append(value)
    if not steps:
        raise ValueError(f"{str(path)!r} has no logged rows")
    return Curve(tuple(steps), tuple(values))


def window_means(curve: Curve, window: int) -> list[tuple[int, int, float]]:
    """Mean of the logged values in each window ``(start, start + window]`` of steps: ``[(start, end, mean), ...]``
    for ``start = 0, window, 2·window, ...`` up to the last logged step. A window with no logged row is left out; the
    last window may be partial (its ``end`` is still ``start + window``)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive integer number of steps, got {window!r}")
    out: list[tuple[int, int, float]] = []
    buckets: dict[int, list[float]] = {}
    for s, v in zip(curve.steps, curve.values):
        buckets.setdefault((s - 1) // window, []).append(v)
    for b in sorted(buckets):
        vals = buckets[b]
        out.append((b * window, (b + 1) * window, sum(vals) / len(vals)))
    return out


def onset(curve: Curve, threshold: float, window: int = 500) -> tuple[int, int] | None:
    """The first window ``(start, end]`` whose mean reaches ``threshold``, or ``None`` if none does."""
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    for start, end, mean in window_means(curve, window):
        if mean >= threshold:
            return start, end
    return None


def format_onset(o: Sequence[int] | None) -> str:
    """An :func:`onset` result as ``"start-end"`` steps, or ``"none"``."""
    return "none" if o is None else f"{o[0]:,}-{o[1]:,}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (with log.csv) or CSV files")
    p.add_argument("--metric", default="accuracy", help="the logged column (default: accuracy)")
    p.add_argument("--window", type=int, default=500, help="steps per window (default 500)")
    p.add_argument("--threshold", type=float, default=None,
                   help="report the first window whose mean reaches this level (default: no onset column)")
    a = p.parse_args(argv)
    for run in a.runs:
        curve = read_curve(run, a.metric)
        means = " ".join(f"{m:.3f}" for _, _, m in window_means(curve, a.window))
        line = f"{run}: last step {curve.steps[-1]:,}; {a.metric} per {a.window} steps: {means}"
        if a.threshold is not None:
            line += f"; onset (>= {a.threshold:g}): {format_onset(onset(curve, a.threshold, a.window))}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
