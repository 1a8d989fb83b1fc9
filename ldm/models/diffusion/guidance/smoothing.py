"""Moved to :mod:`ldm.guidance.smoothing` (the guidance package); this path keeps old imports working."""

from __future__ import annotations

from ldm.guidance.smoothing import (  # noqa: F401
    gaussian_kernel1d,
    reference_sigma_to_std,
    smooth_maps,
)
