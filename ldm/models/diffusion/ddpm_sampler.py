"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), with the samplers' common `sample(...)` call.

`S` is the number of training steps to run from, 1..T (None: all T: t = T-1 ... 0); `eta` and `ddim_discretize` do
not apply.
"""

from __future__ import annotations

from typing import Any

import torch

from ldm.models.diffusion.sampler_base import DiffusionSampler, StepFn, StepOptions


class DDPMSampler(DiffusionSampler):
    name = "DDPM"

    def __init__(self, model: Any, schedule: str = "linear", clip_denoised: bool | None = None, **kwargs: Any) -> None:
        super().__init__(model, schedule, **kwargs)
        self.clip_denoised = model.clip_denoised if clip_denoised is None else clip_denoised

    def timesteps_for(self, S: int | None, ddim_discretize: str, eta: float) -> list[int]:
        num_steps = self.ddpm_num_timesteps if S is None else int(S)  # 0 or a negative count is an error, not "all"
        if not 1 <= num_steps <= self.ddpm_num_timesteps:
            raise ValueError(f"DDPM sampling runs 1..{self.ddpm_num_timesteps} steps, got {num_steps}")
        return list(reversed(range(num_steps)))

    def make_step(self, timesteps: list[int], options: StepOptions) -> StepFn:
        model = self.model

        def step(x: torch.Tensor, cond: Any, ts: torch.Tensor, index: int, i: int):
            e_t = self.eps(x, ts, cond, options)
            pred_x0 = model.predict_start_from_noise(x, ts, e_t)
            if self.clip_denoised:
                pred_x0 = pred_x0.clamp(-1.0, 1.0)
            mean, _, log_var = model.q_posterior(pred_x0, x, ts)  # DDPM eq. 7
            nonzero = (ts != 0).float().reshape(x.shape[0], *((1,) * (x.dim() - 1)))  # no noise at t == 0
            return mean + nonzero * self.noise(x, (0.5 * log_var).exp(), options), pred_x0

        return step
