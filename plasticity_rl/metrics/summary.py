"""Summaries across seeds: mean with a 95% confidence interval (Student's t or bootstrap)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, half_width)``: half_width = t_{0.975, n-1} * s / sqrt(n), s the sample std.

    A single value has half-width NaN; above 30 degrees of freedom the normal 1.96 is used.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * std / math.sqrt(n)


def bootstrap_ci(
    values_per_seed: Any,
    confidence: float = 0.95,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean across seeds and its percentile bootstrap confidence interval (Efron 1979).

    ``values_per_seed`` has shape ``(n_seeds,)`` or ``(n_seeds, n_points)`` (one curve per seed
    on common points; each point is treated on its own). Draw ``num_resamples`` sets of n seeds
    with replacement, take each set's mean; the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of those means (NumPy's linear interpolation). A resample
    is drawn as the counts of each seed (multinomial), so its mean is ``counts @ values / n``
    and memory stays ``num_resamples x n_points``; the same draws serve every point.

    Returns:
        ``(mean, low, high)``, each of shape ``values_per_seed.shape[1:]``. With one seed the
        interval is NaN.
    """
    values = np.asarray(values_per_seed, dtype=np.float64)
    if values.ndim == 0 or len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one value per seed")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: got {confidence!r}; allowed: a number in (0, 1)")
    mean = values.mean(axis=0)
    if len(values) == 1:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan.copy()
    n = len(values)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=num_resamples)
    means = np.tensordot(counts, values, axes=1) / n
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)
    return mean, low, high


def difference_ci95(
    a: Sequence[float], b: Sequence[float], num_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its 95% percentile-bootstrap interval (Efron 1979).

    The seeds of each side are resampled with replacement on their own (``num_resamples``
    draws); the interval is the 2.5% and 97.5% quantiles of the resampled differences of means.
    For two independent groups of runs, e.g. a reference implementation's seeds and ours.
    """
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    draws = xa[rng.integers(len(xa), size=(num_resamples, len(xa)))].mean(1) - xb[
        rng.integers(len(xb), size=(num_resamples, len(xb)))
    ].mean(1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(xa.mean() - xb.mean()), float(low), float(high)
