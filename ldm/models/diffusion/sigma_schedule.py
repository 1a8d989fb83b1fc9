"""The sigma view of a model's own discrete schedule, for the samplers of Karras et al. 2022 and DPM-Solver/UniPC.

A DDPM latent z_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps is, divided by sqrt(abar_t), the variance-exploding latent
x = x_0 + sigma_t eps with sigma_t = sqrt((1 - abar_t) / abar_t) (Karras et al. 2022, "Elucidating the Design Space",
Sec. 2 and Appendix C.2). Back in VP terms, alpha = 1 / sqrt(1 + sigma^2) = sqrt(abar), sigma_vp = sigma * alpha and
the half-log-SNR lambda = log(alpha / sigma_vp) = -log(sigma) (DPM-Solver, Lu et al. 2022).

:func:`sigma_run` picks a run's timesteps and noise levels from the T training ones, as diffusers' schedulers do
(numpy float64 arithmetic on the float32 schedule, like diffusers, so timesteps and sigmas agree with theirs):

- timestep spacing (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2):
  "linspace" (the default of diffusers' Euler, DPM-Solver and UniPC schedulers), "leading", "trailing"; and "sgm",
  the discretization of SDXL's reference code (Stability-AI/generative-models, ``LegacyDDPMDiscretization``):
  t_i = floor((T - 1) - i T / N), i = 0..N-1, integer timesteps whose sigmas are the training ones. It is "trailing"
  when N divides T; otherwise floor and diffusers' rounding part ways at some steps (N = 30, T = 1000: 7 differ);
- ``rounded``: DPM-Solver/UniPC round the timesteps to integers (N + 1 points, the last dropped); Euler keeps
  fractional ones (N points) and interpolates sigma linearly in t between training steps;
- ``karras``: N noise levels sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
  rho = 7 (Karras et al. eq. 5), each given the timestep whose log-sigma it interpolates (rounded for DPM-Solver);
- a final sigma of 0 (the denoised sample) is appended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SPACINGS = ("linspace", "leading", "trailing", "sgm")
KARRAS_RHO = 7.0


@dataclass(frozen=True)
class SigmaRun:
    """A run's schedule: ``timesteps`` [N] (what the model gets, descending) and ``sigmas`` [N + 1] (the last 0)."""

    timesteps: list[float]
    sigmas: list[float]  # float32 values, as Python floats

    def __len__(self) -> int:
        return len(self.timesteps)

    def alphas_cumprod(self, i: int) -> float:
        """abar at noise level ``sigmas[i]``: 1 / (1 + sigma^2)."""
        return 1.0 / (1.0 + self.sigmas[i] ** 2)

    def vp(self, i: int) -> tuple[float, float]:
        """(alpha, sigma_vp) of ``sigmas[i]``: 1 / sqrt(1 + sigma^2) and sigma * alpha."""
        alpha = 1.0 / math.sqrt(self.sigmas[i] ** 2 + 1.0)
        return alpha, self.sigmas[i] * alpha

    def log_snr(self, i: int) -> float:
        """lambda = log(alpha / sigma_vp) = -log(sigma); +inf at sigma 0."""
        return math.inf if self.sigmas[i] == 0 else -math.log(self.sigmas[i])


def training_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for every training step [T], float32 (computed as diffusers does)."""
    ac = alphas_cumprod.detach().to("cpu", torch.float32)
    return (((1 - ac) / ac) ** 0.5).numpy()


def spaced_timesteps(spacing: str, num_steps: int, num_train: int, rounded: bool, steps_offset: int = 1) -> np.ndarray:
    """Descending timesteps of an N-step run over T training steps (``steps_offset``: "leading" only, SD's 1)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use one of {SPACINGS}")
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"sampling steps must be in 1..{num_train}, got {num_steps}")
    n = num_steps + 1 if rounded else num_steps  # the rounded ones drop their last point (t = 0)
    if spacing == "linspace":
        if rounded:
            return np.linspace(0, num_train - 1, n).round()[::-1][:-1].copy()
        return np.linspace(0, num_train - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    if spacing == "leading":
        ratio = num_train // n
        steps = (np.arange(0, n) * ratio).round()[::-1].astype(np.float64) + steps_offset
        return steps[:-1].copy() if rounded else steps
    if spacing == "sgm":  # generate_roughly_equally_spaced_steps of sgm, descending
        return np.floor(np.linspace(num_train - 1, 0, num_steps, endpoint=False))
    ratio = num_train / num_steps  # trailing
    return np.arange(num_train, 0, -ratio).round().astype(np.float64) - 1


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al. 2022 eq. 5: N noise levels from sigma_max down to sigma_min, spaced evenly in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, num_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigmas: np.ndarray, log_train_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) timestep of each sigma: linear interpolation of log sigma between training steps."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_train_sigmas[:, None]  # [T, N]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_train_sigmas) - 2)
    lo, hi = log_train_sigmas[low], log_train_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


def sigma_run(
    alphas_cumprod: torch.Tensor, num_steps: int, spacing: str = "linspace", rounded: bool = False, karras: bool = False
) -> SigmaRun:
    """The timesteps and noise levels of an N-step run on the model's schedule ``alphas_cumprod`` [T] (see above)."""
    table = training_sigmas(alphas_cumprod)  # [T], ascending in t
    timesteps = spaced_timesteps(spacing, num_steps, len(table), rounded)
    if karras:
        sigmas = karras_sigmas(float(table[0]), float(table[-1]), num_steps)
        timesteps = sigma_to_t(sigmas, np.log(table))
        if rounded:
            timesteps = timesteps.round()
    else:
        sigmas = np.interp(timesteps, np.arange(len(table)), table)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    if not rounded:  # diffusers hands the model float32 timesteps
        timesteps = timesteps.astype(np.float32)
    return SigmaRun([float(t) for t in timesteps], [float(s) for s in sigmas])
