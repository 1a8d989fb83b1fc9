"""Gaussian smoothing of attention maps, as Attend-and-Excite applies it before taking each token's maximum.

The reference kernel (A&E ``utils/gaussian_smoothing.py``) is ``exp(-((x - mu) / (2 sigma))^2)``, normalised: the
``2 sigma`` inside the square makes it a Gaussian of standard deviation ``sigma * sqrt(2)``. So the reference's
nominal ``sigma`` 0.5 is kornia's Gaussian at ``0.5 * sqrt(2)``; for ``kernel_size`` 3 the 1-D kernel is
``[0.2119, 0.5761, 0.2119]``. The maps are reflect-padded by ``kernel_size // 2`` (the reference pads by 1 whatever the
kernel size, which is the same for the default 3) so the output keeps the input size.
"""

from __future__ import annotations

import math

import kornia
import torch


def reference_sigma_to_std(sigma: float) -> float:
    """The standard deviation of the reference's kernel with nominal ``sigma`` (``sigma * sqrt(2)``)."""
    return sigma * math.sqrt(2.0)


def gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """The reference's normalised 1-D kernel ``[kernel_size]`` for its nominal ``sigma``."""
    return kornia.filters.get_gaussian_kernel1d(kernel_size, reference_sigma_to_std(sigma))[0]


def smooth_maps(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Smooth ``maps`` ``[P, H, W]`` with the reference Gaussian (nominal ``sigma``) and reflect padding."""
    if kernel_size % 2 != 1:
        raise ValueError(f"smoothing kernel_size must be odd, got {kernel_size}")
    std = reference_sigma_to_std(sigma)
    out = kornia.filters.gaussian_blur2d(
        maps[:, None], (kernel_size, kernel_size), (std, std), border_type="reflect"
    )  # [P, 1, H, W]
    return out[:, 0]
