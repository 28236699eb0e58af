"""Seed statistics for experiment tables: mean ± 95% confidence interval and paired differences.

With n seeds x_1..x_n the interval is mean ± t_{0.975, n−1} · s / √n (Student t, s the unbiased
std). Two methods run with the same seeds (same training prompts, same held-out items) are
compared by the paired differences d_i = a_i − b_i with the same interval on d; an interval
that contains 0 means the difference is within seed noise.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def mean_ci(x: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the `level` t-interval); half-width nan for fewer than 2 values."""
    a = np.asarray(x, np.float64)
    if a.size < 2:
        return float(a.mean()) if a.size else math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size)
    return float(a.mean()), float(half)


def paired_diff(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """mean_ci of a_i − b_i over matched seeds (a and b in the same seed order)."""
    if len(a) != len(b):
        raise ValueError(f"paired_diff: {len(a)} vs {len(b)} values; pair them by seed")
    return mean_ci(np.asarray(a, np.float64) - np.asarray(b, np.float64), level)


def fmt_ci(mean: float, half: float, digits: int = 1, signed: bool = False) -> str:
    """'74.5 ± 1.2' (or '74.5' when the interval is undefined); signed: '+74.5 ± 1.2'."""
    m = f"{mean:{'+' if signed else ''}.{digits}f}"
    return m if math.isnan(half) else f"{m} ± {half:.{digits}f}"


def verdict(mean: float, half: float) -> str:
    """'higher' / 'lower' when the interval excludes 0, else 'within noise'."""
    if math.isnan(half) or abs(mean) <= half:
        return "within noise"
    return "higher" if mean > 0 else "lower"
