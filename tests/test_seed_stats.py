"""Seed statistics: t-intervals and paired differences against hand-computed values."""
import math

import numpy as np
import pytest

from diffpo_jax.seed_stats import fmt_ci, mean_ci, paired_diff, verdict


def test_mean_ci_matches_the_t_formula():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    m, h = mean_ci(x)
    # t_{0.975, 4} = 2.776445, s = sqrt(2.5)
    assert m == 3.0 and h == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-5)
    assert math.isnan(mean_ci([2.0])[1])


def test_paired_diff_removes_the_shared_seed_effect():
    a = np.array([70.0, 75.0, 80.0, 72.0, 78.0])
    b = a - 1.0 + np.array([0.1, -0.1, 0.0, 0.05, -0.05])
    m, h = paired_diff(a, b)
    assert m == pytest.approx(1.0) and h < 0.2  # unpaired, the seed spread (±4) would swamp it
    assert verdict(m, h) == "higher" and verdict(-m, h) == "lower" and verdict(0.1, 0.5) == "within noise"
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_diff([1.0], [1.0, 2.0])
    assert fmt_ci(74.54, 1.21) == "74.5 ± 1.2" and fmt_ci(3.0, math.nan) == "3.0"
