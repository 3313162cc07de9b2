"""Uncertainty for per-query metric values: bootstrap confidence intervals and a paired test.

Retrieval test sets here are small (tens to a few hundred queries), so a difference of a few MAP
points can be noise. Both functions work on per-query values, seeded, so a report is reproducible.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

#: Up to this many non-zero differences the sign-flip test enumerates all 2^n sign patterns (exact).
EXACT_MAX_N = 16


def bootstrap_ci(
    values: Sequence[float], *, n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample queries with replacement ``n_resamples`` times.

    Returns ``(lo, hi)`` at level ``1 - alpha``; ``(nan, nan)`` for no values and ``(v, v)`` for one.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    if data.size == 1:
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=float)
    chunk = max(1, 2_000_000 // data.size)  # bound memory for large query sets
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, data.size, size=(stop - start, data.size))
        means[start:stop] = data[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def paired_test(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided paired randomization (sign-flip) test of mean(a - b) = 0; returns the p-value.

    Under the null each per-query difference is equally likely to have either sign. With at most
    :data:`EXACT_MAX_N` non-zero differences every sign pattern is enumerated (exact p); otherwise
    ``n_resamples`` random patterns give p = (1 + #{|mean*| >= |mean|}) / (1 + n_resamples), which
    is never 0. Identical inputs give 1.0.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired_test needs equally long inputs, got {x.size} and {y.size}")
    diffs = x - y
    diffs = diffs[np.abs(diffs) > 1e-12]  # zero differences are the same under every sign
    if diffs.size == 0:
        return 1.0
    n = diffs.size
    observed = abs(diffs.sum())
    tol = 1e-9 * max(1.0, observed)
    if n <= EXACT_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        sums = np.abs(signs @ diffs)
        return float(np.mean(sums >= observed - tol))
    rng = np.random.default_rng(seed)
    extreme = 0
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        signs = rng.choice((-1.0, 1.0), size=(size, n))
        extreme += int(np.sum(np.abs(signs @ diffs) >= observed - tol))
    return (1 + extreme) / (1 + n_resamples)
