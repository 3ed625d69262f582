"""Summaries across seeds: mean with a 95% confidence interval (Student's t)."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
