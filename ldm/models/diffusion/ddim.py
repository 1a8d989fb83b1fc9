"""DDIM sampler (Song et al. 2021), with the original `sample(S, batch_size, shape, conditioning, ...)` call."""

from __future__ import annotations

from typing import Any

import torch

from ldm.models.diffusion.sampler_base import DiffusionSampler, StepFn, StepOptions
from ldm.models.diffusion.schedule import ddim_alphas, ddim_sigmas, make_ddim_timesteps


class DDIMSampler(DiffusionSampler):
    name = "DDIM"

    def make_schedule(
        self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0, verbose: bool = True
    ) -> None:
        """DDIM timesteps tau and the per-step abar_tau, abar_tau_prev, sigma (eq. 16)."""
        self.ddim_timesteps = make_ddim_timesteps(ddim_discretize, ddim_num_steps, self.ddpm_num_timesteps)
        alphas_cumprod = self.model.alphas_cumprod
        self.ddim_alphas, self.ddim_alphas_prev = ddim_alphas(alphas_cumprod, self.ddim_timesteps)
        self.ddim_sigmas = ddim_sigmas(self.ddim_alphas, self.ddim_alphas_prev, ddim_eta)
        self.ddim_sqrt_one_minus_alphas = torch.sqrt(1.0 - self.ddim_alphas)

    def timesteps_for(self, S: int | None, ddim_discretize: str, eta: float) -> list[int]:
        if S is None:
            raise ValueError("DDIM sampling needs the number of steps S")
        self.make_schedule(ddim_num_steps=S, ddim_discretize=ddim_discretize, ddim_eta=eta)
        return [int(t) for t in reversed(self.ddim_timesteps)]

    def make_step(self, timesteps: list[int], options: StepOptions) -> StepFn:
        def step(x: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            return self.step_from_eps(x, self.eps(x, ts, cond, options), index, options)

        return step

    def step_from_eps(
        self, x: torch.Tensor, e_t: torch.Tensor, index: int, options: StepOptions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM eq. 12: x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z."""
        a_t = self.ddim_alphas[index]
        a_prev = self.ddim_alphas_prev[index]
        sigma_t = self.ddim_sigmas[index]
        sqrt_one_minus_at = self.ddim_sqrt_one_minus_alphas[index]
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt
        if float(sigma_t) > 0:
            x_prev = x_prev + self.noise(x, sigma_t, options)
        return x_prev, pred_x0
