"""Seeded bootstrap intervals for the metrics of a report."""

from __future__ import annotations

import numpy as np


def centered_interval(point: float, draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """The spread of the bootstrap draws (their quantiles minus their median), placed at ``point``.

    Resampling with replacement duplicates songs, and a set with fewer distinct songs has a larger
    FAD: the draws of FAD sit above the point estimate, and a plain percentile interval can miss
    it altogether. Keeping the spread of the draws but not their shift gives an interval around
    the estimate we report. For an unbiased statistic (a mean) the median is the point: no shift.
    """
    draws = np.asarray(draws, dtype=np.float64)
    if draws.size == 0:
        return point, point
    tail = (1.0 - confidence) / 2
    low, median, high = np.quantile(draws, [tail, 0.5, 1.0 - tail])
    return float(point + (low - median)), float(point + (high - median))


def bootstrap_mean(
    values, *, samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """The mean of ``values`` and a seeded bootstrap interval for it."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot average an empty list of scores")
    point = float(values.mean())
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(samples, values.size))
    return point, centered_interval(point, values[picks].mean(axis=1), confidence)
