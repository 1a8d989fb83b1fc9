"""Euler and Euler ancestral sampling of the probability-flow ODE in sigma space (Karras et al. 2022, Algorithm 1
without churn; the ancestral step of k-diffusion), as diffusers' EulerDiscreteScheduler and
EulerAncestralDiscreteScheduler with an SD 1.x/2.x config ("linspace" spacing: fractional timesteps).

In x = z / sqrt(abar) = x_0 + sigma eps the ODE is dx/dsigma = (x - D(x)) / sigma = eps, so one Euler step is
x' = x + (sigma' - sigma) eps. The ancestral step goes down to sigma_down and adds fresh noise of std sigma_up, with
sigma_up^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2 and sigma_down^2 = sigma'^2 - sigma_up^2 (so that the marginal
std is sigma' again). The loop's latent stays z: a step maps z -> x -> x' -> z' = x' / sqrt(1 + sigma'^2).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ldm.models.diffusion.sampler_base import StepFn, StepOptions
from ldm.models.diffusion.sigma_sampler import SigmaSampler


def ancestral_sigmas(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step from ``sigma`` to ``sigma_next`` (eta 1)."""
    sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


class EulerSampler(SigmaSampler):
    name = "Euler"
    start_in_sigma_space = True

    def make_step(self, timesteps: list[float], options: StepOptions) -> StepFn:
        def step(z: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            e_t, pred_x0 = self.denoise(z, cond, ts, i, options)
            sigma, sigma_next = self.run.sigmas[i], self.run.sigmas[i + 1]
            x = z * math.sqrt(sigma**2 + 1.0)  # [B, C, h, w] in sigma space
            x_next = x + (sigma_next - sigma) * e_t  # d = (x - x0) / sigma = eps
            return x_next / math.sqrt(sigma_next**2 + 1.0), pred_x0

        return step


class EulerAncestralSampler(SigmaSampler):
    """Euler ancestral: the step noise comes from the run's generator, or one generator per sample (the engine's
    per-image generators: an image's noise does not depend on its batch)."""

    name = "Euler ancestral"
    start_in_sigma_space = True

    def make_step(self, timesteps: list[float], options: StepOptions) -> StepFn:
        def step(z: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            e_t, pred_x0 = self.denoise(z, cond, ts, i, options)
            sigma, sigma_next = self.run.sigmas[i], self.run.sigmas[i + 1]
            sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next)
            x = z * math.sqrt(sigma**2 + 1.0)
            x_next = x + (sigma_down - sigma) * e_t
            if sigma_up > 0:
                x_next = x_next + self.noise(x, sigma_up, options)
            return x_next / math.sqrt(sigma_next**2 + 1.0), pred_x0

        return step
