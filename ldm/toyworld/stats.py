"""Statistics of the ToyWorld benchmarks: per-sample hits, Wilson intervals and paired bootstrap differences."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def bootstrap_diff(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired samples and its 95% percentile bootstrap interval (pairs resampled)."""
    d = b.astype(float) - a.astype(float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(len(d), size=(n_boot, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def bootstrap_diff_of_means(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], n_boot: int = 10000, seed: int = 0
) -> tuple[float, float, float]:
    """Paired groups (e.g. GenEval's tasks): the mean over groups of each group's mean ``b - a``, and its 95% percentile
    bootstrap interval (pairs resampled within each group)."""
    rng = np.random.default_rng(seed)
    means, boots = [], np.zeros(n_boot)
    for ga, gb in zip(a, b, strict=True):
        d = gb.astype(float) - ga.astype(float)
        means.append(d.mean())
        boots += d[rng.integers(len(d), size=(n_boot, len(d)))].mean(axis=1)
    boots /= len(means)
    return float(np.mean(means)), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n."""
    if n == 0:
        return 0.0, 0.0
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


@dataclass
class Row:
    """One line of the results table: which samples of ``benchmark`` run with ``method`` meet ``metric``."""

    benchmark: str
    method: str
    metric: str
    hits: np.ndarray  # [N] bool

    @property
    def rate(self) -> float:
        return float(self.hits.mean())


# (benchmark, "{method} - {baseline}, {metric}", (mean, 95% low, 95% high)) of a paired bootstrap
Diff = tuple[str, str, tuple[float, float, float]]
