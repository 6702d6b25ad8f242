"""Metric helpers shared by tasks: means with standard errors, macro averages, pass@k."""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)); (nan, nan) when empty."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def macro_stderr(groups: Mapping[str, Sequence[float]]) -> tuple[float, float]:
    """Unweighted mean over groups of each group's mean, with the standard error of that mean.

    The groups are independent samples, so Var(macro) = sum(se_g^2) / G^2. A group of one value
    has no variance of its own to estimate (a `limit=1` run: one question a subject); it takes the
    sample variance of all values pooled, instead of claiming a standard error of 0.
    """
    nonempty = [list(v) for v in groups.values() if len(v)]
    if not nonempty:
        return math.nan, math.nan
    pooled_var = mean_stderr([x for v in nonempty for x in v])[1] ** 2 * sum(map(len, nonempty))
    g = len(nonempty)
    stats = [mean_stderr(v) for v in nonempty]
    mean = sum(m for m, _ in stats) / g
    var = sum(se * se if len(v) > 1 else pooled_var for (_, se), v in zip(stats, nonempty))
    return mean, math.sqrt(var) / g


def add_metric(metrics: dict[str, float], name: str, stat: tuple[float, float]) -> None:
    """Store a (value, stderr) pair as `name` and `name_stderr`."""
    metrics[name], metrics[f"{name}_stderr"] = stat


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def group_by(items: Iterable, key) -> dict:
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups
