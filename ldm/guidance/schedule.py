"""Step schedules of the guidance methods as fractions of the run (one rule for every method and sampler).

A schedule written for ``base`` steps (the official ones: 50) names steps i; in a run of N steps, step i is the
fraction i / base of the run and lands on step ``round(i * N / base)``, half up, in exact rational arithmetic
(:func:`step_at`). The official A&E schedule ``{0: .05, 10: .5, 20: .8}``, updates before step 25 of 50, becomes
``{0: .05, 2: .5, 4: .8}`` and 5 at 10 steps, ``{0: .05, 4: .5, 8: .8}`` and 10 at 20 steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

import numpy as np

__all__ = ["step_at", "rescale_step", "rescale_thresholds", "linspace_step_size"]


def step_at(fraction: Fraction, num_steps: int) -> int:
    """The step of a run of ``num_steps`` steps at ``fraction`` of it: floor(fraction * N + 1/2), exactly."""
    return math.floor(fraction * num_steps + Fraction(1, 2))


def rescale_step(step: int, base: int, num_steps: int) -> int:
    """Step ``step`` of a ``base``-step schedule in a run of ``num_steps`` steps."""
    return step_at(Fraction(step, base), num_steps)


def rescale_thresholds(thresholds: Mapping[int, float], base: int, num_steps: int) -> dict[int, float]:
    """``{step: threshold}`` of a ``base``-step schedule in a ``num_steps`` run; where two land on one step the higher
    threshold wins."""
    out: dict[int, float] = {}
    for step, thr in thresholds.items():
        new = rescale_step(step, base, num_steps)
        out[new] = max(thr, out.get(new, -math.inf))
    return out


def linspace_step_size(scale_factor: float, scale_range: tuple[float, float], step: int, num_steps: int) -> float:
    """alpha_i = scale_factor * sqrt(linspace(scale_range[0], scale_range[1], N)[i]) (A&E eq. 4; float64 as numpy)."""
    return float(scale_factor * np.sqrt(np.linspace(scale_range[0], scale_range[1], num_steps)[step]))
