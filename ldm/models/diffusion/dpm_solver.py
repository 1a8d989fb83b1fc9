"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", Algorithm 2, multistep second order on the data prediction), as diffusers' DPMSolverMultistepScheduler
with an SD 1.x/2.x config (solver_order 2, "midpoint", lower_order_final, final sigma 0), with or without Karras
sigmas.

On z_t = alpha_t x_0 + sigma_t eps with lambda_t = log(alpha_t / sigma_t) and h = lambda_t - lambda_s, one step from s
to t with the data predictions D_i (current) and D_{i-1} (previous step, at lambda_{s'}):

    first order (the first step, and the last one, which goes to sigma 0):
        z_t = (sigma_t / sigma_s) z_s - alpha_t (e^-h - 1) D_i
    second order (eq. in Algorithm 2, "midpoint" form):
        r = (lambda_s - lambda_{s'}) / h,  D = D_i + (D_i - D_{i-1}) / (2 r)
        z_t = (sigma_t / sigma_s) z_s - alpha_t (e^-h - 1) D

The last step (to sigma 0) returns D_i, the denoised sample.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ldm.models.diffusion.sampler_base import StepFn, StepOptions
from ldm.models.diffusion.sigma_sampler import SigmaSampler


class DPMSolverPP2MSampler(SigmaSampler):
    name = "DPM++ 2M"
    rounded_timesteps = True

    def make_step(self, timesteps: list[float], options: StepOptions) -> StepFn:
        previous: list[torch.Tensor] = []  # D_{i-1}

        def step(z: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            _, d_i = self.denoise(z, cond, ts, i, options)
            run = self.run
            if run.sigmas[i + 1] == 0:  # lower order final: first order to sigma 0 gives D_i itself
                z_next = d_i
            else:
                (alpha_t, sigma_t), (_, sigma_s) = run.vp(i + 1), run.vp(i)
                h = run.log_snr(i + 1) - run.log_snr(i)
                d = d_i
                if previous:
                    r = (run.log_snr(i) - run.log_snr(i - 1)) / h
                    d = d_i + (0.5 / r) * (d_i - previous[0])
                z_next = (sigma_t / sigma_s) * z - (alpha_t * math.expm1(-h)) * d
            previous[:] = [d_i]
            return z_next, d_i

        return step
